package main

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"slices"
	"strings"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/wharf-registry/wharf/auth"
	"github.com/wharf-registry/wharf/route"
)

// tlsConfig is the listener's certificate, and the CA client certificates
// must be signed by for mutual TLS.
type tlsConfig struct {
	CertFile     string `yaml:"cert_file"`
	KeyFile      string `yaml:"key_file"`
	ClientCAFile string `yaml:"client_ca_file"`
}

// validateAccess refuses what would serve a private upstream to the
// network anonymously, and a debug listener off loopback.
func (c *fileConfig) validateAccess() error {
	if c.DebugListen != "" {
		host, _, err := net.SplitHostPort(c.DebugListen)
		if err != nil || !auth.LoopbackHost(host) {
			return fmt.Errorf("debug_listen %q: pprof must stay on loopback, like 127.0.0.1:6060", c.DebugListen)
		}
	}
	if c.Auth == nil {
		return nil
	}
	if c.Auth.Htpasswd == "" && len(c.Auth.Rules) > 0 {
		return errors.New("auth.rules name users, but auth.htpasswd is not set")
	}
	for i, r := range c.Auth.Rules {
		for _, p := range r.Push {
			if err := route.Check(p); err != nil {
				return fmt.Errorf("auth.rules[%d].push: %w", i, err)
			}
			if !slices.ContainsFunc(c.Targets, func(t targetConfig) bool { return route.MayMatchUpstream(p, t.Name) }) {
				return fmt.Errorf("auth.rules[%d].push %q names no configured target: push patterns are <target>/<repository>, like harbor-b/proj/*", i, p)
			}
		}
	}
	for _, p := range c.Auth.Anonymous {
		if err := route.Check(p); err != nil {
			return fmt.Errorf("auth.anonymous: %w", err)
		}
		for _, u := range c.Upstreams {
			if u.private() && route.MayMatchUpstream(p, u.Name) {
				return fmt.Errorf("auth.anonymous %q would serve upstream %s, which Wharf logs in to, to anyone. "+
					"Either set public: true on upstream %s if everything its credentials can read may be served to anyone, "+
					"or narrow auth.anonymous so that no pattern matches %s", p, u.Name, u.Name, u.Name)
			}
		}
	}
	return nil
}

// accessConfig is auth's configuration. Without an auth block, upstreams
// Wharf does not log in to (or marked public) are open to anyone, and
// private ones to loopback clients only.
func (c *fileConfig) accessConfig(log *slog.Logger, reg prometheus.Registerer) auth.Config {
	ac := auth.Config{APIToken: c.API.token, Logger: log, Registerer: reg}
	if c.Auth == nil {
		ac.Loopback, ac.LoopbackAPI = true, c.API.token == ""
		for _, u := range c.Upstreams {
			if !u.private() {
				ac.Anonymous = append(ac.Anonymous, u.Name+"/*")
			}
		}
		return ac
	}
	ac.Htpasswd, ac.Anonymous, ac.Rules = c.Auth.Htpasswd, c.Auth.Anonymous, c.Auth.Rules
	return ac
}

// logAccess says at start who may read each private upstream, and warns of
// secret files others can read.
func (c *fileConfig) logAccess(log *slog.Logger) {
	for _, u := range c.Upstreams {
		if !u.private() {
			continue
		}
		if c.Auth == nil {
			log.Warn("private upstream: Wharf logs in to it, so it is served to loopback clients only; add an auth block with users, or set public: true on it to serve it to anyone", "upstream", u.Name)
			continue
		}
		var readers []string
		for _, r := range c.Auth.Rules {
			if slices.Contains(r.API, auth.RightAdmin) || slices.ContainsFunc(r.Pull, func(p string) bool { return route.MayMatchUpstream(p, u.Name) }) {
				readers = append(readers, r.Users...)
			}
		}
		slices.Sort(readers)
		log.Info("private upstream", "upstream", u.Name, "readers", strings.Join(slices.Compact(readers), ","))
	}
	files := map[string]string{"api.token_file": c.API.TokenFile, "tls.key_file": c.TLS.KeyFile}
	if c.Cluster != nil {
		files["cluster.secret_file"] = c.Cluster.SecretFile
	}
	if c.Auth != nil {
		files["auth.htpasswd"] = c.Auth.Htpasswd
	}
	for _, u := range c.Upstreams {
		files["upstream "+u.Name+" password_file"] = u.PasswordFile
		files["upstream "+u.Name+" key_file"] = u.KeyFile
	}
	for _, t := range c.Targets {
		files["target "+t.Name+" password_file"] = t.PasswordFile
		files["target "+t.Name+" key_file"] = t.KeyFile
	}
	for what, f := range files {
		if fi, err := os.Stat(f); f != "" && err == nil && fi.Mode().Perm()&0o077 != 0 {
			log.Warn("a secret file is readable by group or others: chmod 600 it", "setting", what, "file", f, "mode", fi.Mode().Perm().String())
		}
	}
}

// validateTLS checks the listener's TLS files are set together and load.
func (c *fileConfig) validateTLS() error {
	t := c.TLS
	if (t.CertFile == "") != (t.KeyFile == "") {
		return errors.New("tls: set cert_file and key_file together")
	}
	if t.CertFile == "" && t.ClientCAFile != "" {
		return errors.New("tls.client_ca_file needs tls.cert_file and tls.key_file")
	}
	if t.CertFile == "" {
		return nil
	}
	_, err := newCertSource(t.CertFile, t.KeyFile, t.ClientCAFile)
	return err
}
