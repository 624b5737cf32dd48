package main

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"
)

// certSource serves the listener's certificate and loads it again when
// either file changes: a renewed certificate (cert-manager, certbot) is
// picked up within a second, without a restart and without dropping a
// connection. A pair that does not load keeps the old one in use.
type certSource struct {
	certFile, keyFile string
	log               *slog.Logger

	mu      sync.Mutex
	cert    *tls.Certificate
	stamp   string // sizes and times of both files when cert was loaded
	checked time.Time
}

func newCertSource(certFile, keyFile string) (*certSource, error) {
	s := &certSource{certFile: certFile, keyFile: keyFile, log: slog.Default()}
	stamp, err := s.stampNow()
	if err != nil {
		return nil, fmt.Errorf("tls: %w", err)
	}
	if err := s.load(stamp); err != nil {
		return nil, fmt.Errorf("tls: %w", err)
	}
	return s, nil
}

func (s *certSource) stampNow() (string, error) {
	var stamp string
	for _, f := range []string{s.certFile, s.keyFile} {
		fi, err := os.Stat(f)
		if err != nil {
			return "", err
		}
		stamp += fmt.Sprintf("%d.%d ", fi.Size(), fi.ModTime().UnixNano())
	}
	return stamp, nil
}

func (s *certSource) load(stamp string) error {
	cert, err := tls.LoadX509KeyPair(s.certFile, s.keyFile)
	if err != nil {
		return err
	}
	s.cert, s.stamp = &cert, stamp
	return nil
}

// getCertificate is tls.Config.GetCertificate.
func (s *certSource) getCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if now := time.Now(); now.Sub(s.checked) >= time.Second {
		s.checked = now
		if stamp, err := s.stampNow(); err == nil && stamp != s.stamp {
			if err := s.load(stamp); err != nil {
				s.log.Warn("tls: the changed certificate does not load; the old one stays in use", "error", err)
			} else {
				s.log.Info("tls: certificate reloaded", "cert_file", s.certFile)
			}
		}
	}
	return s.cert, nil
}

// serverTLS is the listener's TLS configuration: TLS 1.2 at least, the
// reloading certificate, and client certificates when a CA is given.
func (t tlsConfig) serverTLS(log *slog.Logger) (*tls.Config, error) {
	if t.CertFile == "" {
		return nil, nil
	}
	src, err := newCertSource(t.CertFile, t.KeyFile)
	if err != nil {
		return nil, err
	}
	src.log = log
	tc := &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: src.getCertificate}
	if t.ClientCAFile != "" {
		pem, err := os.ReadFile(t.ClientCAFile)
		if err != nil {
			return nil, fmt.Errorf("tls.client_ca_file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("tls.client_ca_file %s: no PEM certificate in it", t.ClientCAFile)
		}
		tc.ClientCAs, tc.ClientAuth = pool, tls.RequireAndVerifyClientCert
	}
	return tc, nil
}
