// Package auth decides who a request is and what it may do: users from an
// htpasswd file, rules by pattern on "<upstream>/<repo>", the API token,
// and the loopback default when no auth is configured. It keeps verified
// credentials and failed logins in bounded memory, and never logs a
// password or a token.
package auth

import (
	"cmp"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/crypto/bcrypt"
	"golang.org/x/sync/singleflight"

	"github.com/wharf-registry/wharf/route"
)

// API rights a rule may grant on /api/v1.
const (
	RightPrefetch = "prefetch" // start prefetch jobs; see and cancel one's own
	RightJobs     = "jobs"     // see every job
	RightPins     = "pins"     // list and remove pins
	RightAdmin    = "admin"    // everything: pull all, cancel any job, upstream health
)

// Rule grants users pull rights on content, push rights on the targets
// jobs push to, and rights on the API.
type Rule struct {
	Users []string `yaml:"users"` // user names; "*" is every authenticated user
	Pull  []string `yaml:"pull"`  // patterns (route.Match) on "<upstream>/<repo>"
	// Push are patterns on "<target>/<repo>": where these users' jobs
	// may push. The prefetch right alone only warms the cache.
	Push []string `yaml:"push"`
	API  []string `yaml:"api"` // prefetch, jobs, pins, admin
}

// Config is who may do what: the configuration file's auth: block (its
// first three fields), and what Wharf sets besides.
type Config struct {
	Htpasswd  string   `yaml:"htpasswd"`  // bcrypt users; "" for none
	Anonymous []string `yaml:"anonymous"` // pull patterns open to anyone
	Rules     []Rule   `yaml:"rules"`
	// Loopback grants loopback clients everything without credentials:
	// Wharf's behaviour with no auth block, so a private upstream is served
	// on its own host only.
	Loopback bool `yaml:"-"`
	// LoopbackAPI also grants loopback clients the API: the default with
	// neither users nor an API token.
	LoopbackAPI bool `yaml:"-"`
	// FailureLimit is how many failed logins of one user name one client
	// (an address, an IPv6 /64) may have before that name's attempts are
	// paced (see throttle); 0: 5.
	FailureLimit int `yaml:"-"`
	// APIToken is a machine credential (Authorization: Bearer) with every right.
	APIToken   string                `yaml:"-"`
	Logger     *slog.Logger          `yaml:"-"`
	Registerer prometheus.Registerer `yaml:"-"`
}

// Identity is who sent a request.
type Identity struct {
	User     string // "" for anonymous
	Token    bool   // presented the API token
	Loopback bool   // from this host, not forwarded, addressed by a loopback name
}

// Errors of Authenticate.
var (
	// ErrUnauthorized: credentials were presented and are wrong.
	ErrUnauthorized = errors.New("authentication failed")
)

// TooManyError refuses a login attempt of a user name that failed too
// often, whose turn is further off than a request should wait.
type TooManyError struct{ Retry time.Duration }

func (e *TooManyError) Error() string { return "too many failed logins of this user; try again later" }

// Auth answers who a request is and what it may do. Safe for concurrent use.
type Auth struct {
	cfg     Config
	users   *users
	creds   credCache
	fails   throttle
	verify  singleflight.Group
	log     *slog.Logger
	failed  *prometheus.CounterVec
	limited *prometheus.CounterVec
	now     func() time.Time
	sleep   func(context.Context, time.Duration) error
}

// New checks cfg's patterns and rights and loads the users file.
func New(cfg Config) (*Auth, error) {
	a := &Auth{cfg: cfg, log: cfg.Logger, now: time.Now, sleep: sleep}
	a.fails.clientFree = cmp.Or(max(cfg.FailureLimit, 0), clientFree)
	if a.log == nil {
		a.log = slog.Default()
	}
	check := func(where string, patterns []string) error {
		for _, p := range patterns {
			if err := route.Check(p); err != nil {
				return fmt.Errorf("%s: %w", where, err)
			}
		}
		return nil
	}
	if err := check("auth.anonymous", cfg.Anonymous); err != nil {
		return nil, err
	}
	for i, r := range cfg.Rules {
		if len(r.Users) == 0 {
			return nil, fmt.Errorf("auth.rules[%d]: users is empty", i)
		}
		if err := check(fmt.Sprintf("auth.rules[%d].pull", i), r.Pull); err != nil {
			return nil, err
		}
		if err := check(fmt.Sprintf("auth.rules[%d].push", i), r.Push); err != nil {
			return nil, err
		}
		for _, right := range r.API {
			if !slices.Contains([]string{RightPrefetch, RightJobs, RightPins, RightAdmin}, right) {
				return nil, fmt.Errorf("auth.rules[%d].api: %q: want prefetch, jobs, pins or admin", i, right)
			}
		}
	}
	if cfg.Htpasswd != "" {
		u, err := loadUsers(cfg.Htpasswd, a.log.Warn, a.creds.clear, func() time.Time { return a.now() })
		if err != nil {
			return nil, fmt.Errorf("auth.htpasswd: %w", err)
		}
		a.users = u
	}
	a.failed = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "wharf_auth_failures_total",
		Help: "Failed authentications, by reason (password, user, malformed, token).",
	}, []string{"reason"})
	a.limited = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "wharf_auth_limited_total",
		Help: "Login attempts of a user name that failed too often: slowed (made to wait their turn) or refused (429, their turn too far off).",
	}, []string{"action"})
	if cfg.Registerer != nil {
		for _, c := range []prometheus.Collector{a.failed, a.limited} {
			if err := cfg.Registerer.Register(c); err != nil {
				return nil, err
			}
		}
	}
	return a, nil
}

// Challenge is the WWW-Authenticate a 401 carries; every registry client
// answers it with the user's credentials.
func (a *Auth) Challenge() string { return `Basic realm="wharf"` }

// Authenticate reads the request's credentials. No Authorization header is
// an anonymous identity, not an error; a wrong one is ErrUnauthorized. A
// user name that failed too often is paced (see throttle): the attempt
// waits its turn, or gets *TooManyError when that is too far off.
func (a *Auth) Authenticate(r *http.Request) (Identity, error) {
	h := r.Header.Get("Authorization")
	tok, bearer := cutScheme(h, "Bearer")
	if h == "" || (bearer && a.cfg.APIToken == "") || (!bearer && a.users == nil) {
		// Nothing to check it against: a client that sends credentials
		// to a Wharf without users is served as anyone else is.
		return Identity{Loopback: a.cfg.Loopback && loopback(r)}, nil
	}
	if a.users != nil {
		a.users.refresh() // a removed user is out within a second, cached or not
	}
	key := sha256.Sum256([]byte(h))
	if user, ok := a.creds.get(key, a.now()); ok {
		return Identity{User: user}, nil // known good: never paced
	}
	client := clientOf(r)
	name, pass, ok := ParseBasic(h)
	switch {
	case bearer:
		name = "(api token)"
	case !ok:
		name = "(malformed)"
	}
	if err := a.wait(r.Context(), client, name); err != nil {
		return Identity{}, err
	}
	if bearer {
		if subtle.ConstantTimeCompare([]byte(tok), []byte(a.cfg.APIToken)) == 1 {
			a.fails.succeed(client, name)
			return Identity{Token: true}, nil
		}
		return Identity{}, a.failure(r, client, "token", name)
	}
	if !ok {
		return Identity{}, a.failure(r, client, "malformed", name)
	}
	// Concurrent requests with the same header share one bcrypt run.
	reason, _, _ := a.verify.Do(string(key[:]), func() (any, error) {
		hash, found, dummy := a.users.lookup(name)
		if !found {
			// The same work as a wrong password: user names stay private.
			bcrypt.CompareHashAndPassword(dummy, []byte(pass))
			return "user", nil
		}
		if bcrypt.CompareHashAndPassword(hash, []byte(pass)) != nil {
			return "password", nil
		}
		a.creds.put(key, name, a.now())
		return "", nil
	})
	if reason != "" {
		return Identity{}, a.failure(r, client, reason.(string), name)
	}
	a.fails.succeed(client, name)
	return Identity{User: name}, nil
}

// wait holds an attempt of name from client until its turn.
func (a *Auth) wait(ctx context.Context, client, name string) error {
	d, ok := a.fails.turn(client, name, a.now())
	if !ok {
		a.limited.WithLabelValues("refused").Inc()
		return &TooManyError{Retry: d}
	}
	if d <= 0 {
		return nil
	}
	a.limited.WithLabelValues("slowed").Inc()
	return a.sleep(ctx, d)
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// clientOf is who failures are counted by: the remote address, or its
// /64 for IPv6, which one host may hold whole.
func clientOf(r *http.Request) string {
	host := remoteHost(r)
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return host
	}
	if ip = ip.Unmap(); ip.Is6() {
		p, _ := ip.Prefix(64)
		return p.String()
	}
	return ip.String()
}

func (a *Auth) failure(r *http.Request, client, reason, user string) error {
	a.failed.WithLabelValues(reason).Inc()
	a.fails.fail(client, user, a.now())
	if len(user) > maxNameInLog {
		user = user[:maxNameInLog] + "…"
	}
	a.log.Warn("login failed", "user", user, "reason", reason, "remote", r.RemoteAddr, "path", r.URL.Path)
	return ErrUnauthorized
}

// ParseBasic reads an Authorization header of the Basic scheme: the scheme
// name in any case, base64 of "user:password". It never panics, whatever
// a client sends.
func ParseBasic(h string) (user, pass string, ok bool) {
	enc, ok := cutScheme(h, "Basic")
	if !ok || len(enc) > 4096 {
		return "", "", false
	}
	raw, err := base64.StdEncoding.DecodeString(enc)
	if err != nil {
		return "", "", false
	}
	user, pass, ok = strings.Cut(string(raw), ":")
	if !ok || user == "" {
		return "", "", false
	}
	return user, pass, true
}

// cutScheme returns what follows "<scheme> " in h, the scheme matched
// without regard to case.
func cutScheme(h, scheme string) (string, bool) {
	if len(h) <= len(scheme) || !strings.EqualFold(h[:len(scheme)], scheme) || h[len(scheme)] != ' ' {
		return "", false
	}
	return strings.TrimLeft(h[len(scheme)+1:], " "), true
}

// remoteHost is the address failures are counted by.
func remoteHost(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// loopback reports whether r comes from this host and was addressed to it
// by a loopback name or an address: not forwarded by a proxy on this host
// for someone else, and not a browser page whose own name was rebound to
// 127.0.0.1 (DNS rebinding).
func loopback(r *http.Request) bool {
	ip := net.ParseIP(remoteHost(r))
	if ip == nil || !ip.IsLoopback() {
		return false
	}
	for _, h := range []string{"Forwarded", "X-Forwarded-For", "X-Real-Ip"} {
		if r.Header.Get(h) != "" {
			return false
		}
	}
	return LoopbackHost(r.Host)
}

// LoopbackHost reports whether a Host header names this host in a way DNS
// cannot rebind: a loopback address, "localhost" or a name under .localhost.
func LoopbackHost(host string) bool {
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	host = strings.TrimSuffix(strings.ToLower(strings.Trim(host, "[]")), ".")
	if ip := net.ParseIP(host); ip != nil {
		return ip.IsLoopback()
	}
	return host == "localhost" || strings.HasSuffix(host, ".localhost")
}
