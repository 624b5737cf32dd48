package main

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"
)

// certSource serves the listener's TLS configuration and loads it again
// when one of its files changes: a renewed certificate (cert-manager,
// certbot) or a rotated client CA is picked up within a second, without a
// restart and without dropping a connection. Files that do not load keep
// the old configuration in use.
type certSource struct {
	certFile, keyFile, caFile string // caFile "" for no client certificates
	base                      *tls.Config
	log                       *slog.Logger

	mu      sync.Mutex
	conf    *tls.Config
	stamp   string // sizes and times of the files when conf was loaded
	checked time.Time
}

func newCertSource(certFile, keyFile, caFile string) (*certSource, error) {
	s := &certSource{certFile: certFile, keyFile: keyFile, caFile: caFile, log: slog.Default(),
		// HTTP/2 is offered as net/http would offer it with a static
		// certificate: a handshake's config replaces the server's whole.
		base: &tls.Config{MinVersion: tls.VersionTLS12, NextProtos: []string{"h2", "http/1.1"}}}
	stamp, err := s.stampNow()
	if err != nil {
		return nil, fmt.Errorf("tls: %w", err)
	}
	if err := s.load(stamp); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *certSource) files() []string {
	if s.caFile == "" {
		return []string{s.certFile, s.keyFile}
	}
	return []string{s.certFile, s.keyFile, s.caFile}
}

func (s *certSource) stampNow() (string, error) {
	var stamp string
	for _, f := range s.files() {
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
		return fmt.Errorf("tls: %w", err)
	}
	c := s.base.Clone()
	c.Certificates = []tls.Certificate{cert}
	if s.caFile != "" {
		pem, err := os.ReadFile(s.caFile)
		if err != nil {
			return fmt.Errorf("tls.client_ca_file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return fmt.Errorf("tls.client_ca_file %s: no PEM certificate in it", s.caFile)
		}
		c.ClientCAs, c.ClientAuth = pool, tls.RequireAndVerifyClientCert
	}
	s.conf, s.stamp = c, stamp
	return nil
}

// configForClient is tls.Config.GetConfigForClient.
func (s *certSource) configForClient(*tls.ClientHelloInfo) (*tls.Config, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if now := time.Now(); now.Sub(s.checked) >= time.Second {
		s.checked = now
		if stamp, err := s.stampNow(); err == nil && stamp != s.stamp {
			if err := s.load(stamp); err != nil {
				s.log.Warn("tls: the changed files do not load; the old configuration stays in use", "error", err)
			} else {
				s.log.Info("tls: certificate and client CA reloaded", "cert_file", s.certFile, "client_ca_file", s.caFile)
			}
		}
	}
	return s.conf, nil
}

// serverTLS is the listener's TLS configuration: TLS 1.2 at least, the
// reloading certificate, and client certificates when a CA is given.
func (t tlsConfig) serverTLS(log *slog.Logger) (*tls.Config, error) {
	if t.CertFile == "" {
		return nil, nil
	}
	src, err := newCertSource(t.CertFile, t.KeyFile, t.ClientCAFile)
	if err != nil {
		return nil, err
	}
	src.log = log
	return &tls.Config{MinVersion: tls.VersionTLS12, NextProtos: src.base.NextProtos, GetConfigForClient: src.configForClient}, nil
}

// peerClientTLS is how a replica calls its peers: it presents its own
// certificate (reloaded as the server's is) and accepts a peer whose
// certificate the fleet's CA signed, whatever address it is reached by:
// pods are reached by IP, which certificates seldom name.
func (s *certSource) peerClientTLS() *tls.Config {
	current := func() *tls.Config {
		c, _ := s.configForClient(nil)
		return c
	}
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return &current().Certificates[0], nil
		},
		InsecureSkipVerify: true, // the chain is checked below, the name is not
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return errors.New("the peer presented no certificate")
			}
			inter := x509.NewCertPool()
			for _, c := range cs.PeerCertificates[1:] {
				inter.AddCert(c)
			}
			_, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{Roots: current().ClientCAs, Intermediates: inter,
				KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
			if err != nil {
				return fmt.Errorf("the peer's certificate is not the fleet's (cluster.tls.client_ca_file): %w", err)
			}
			return nil
		},
	}
}
