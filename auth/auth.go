// Package auth decides who a request is and what it may do: users from an
// htpasswd file, rules by pattern on "<upstream>/<repo>", the API token,
// and the loopback default when no auth is configured. It keeps verified
// credentials and failed logins in bounded memory, and never logs a
// password or a token.
package auth

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
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

// Rule grants users pull rights on content and rights on the API.
type Rule struct {
	Users []string // user names; "*" is every authenticated user
	Pull  []string // patterns (route.Match) on "<upstream>/<repo>"
	API   []string // prefetch, jobs, pins, admin
}

// Config is who may do what.
type Config struct {
	Htpasswd  string   // bcrypt users; "" for none
	Anonymous []string // pull patterns open to anyone
	Rules     []Rule
	// Loopback grants loopback clients everything without credentials:
	// Wharf's behaviour with no auth block, so a private upstream is served
	// on its own host only.
	Loopback bool
	// LoopbackAPI also grants loopback clients the API: the default with
	// neither users nor an API token.
	LoopbackAPI bool
	// FailureLimit is how many failed logins an address may have in a
	// minute before it is refused for a while; 0: 10.
	FailureLimit int
	// APIToken is a machine credential (Authorization: Bearer) with every right.
	APIToken   string
	Logger     *slog.Logger
	Registerer prometheus.Registerer
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

// TooManyError refuses an address that failed to log in too often.
type TooManyError struct{ Retry time.Duration }

func (e *TooManyError) Error() string { return "too many failed logins from this address" }

// Auth answers who a request is and what it may do. Safe for concurrent use.
type Auth struct {
	cfg     Config
	users   *users
	creds   credCache
	fails   limiter
	verify  singleflight.Group
	log     *slog.Logger
	failed  *prometheus.CounterVec
	limited prometheus.Counter
	now     func() time.Time
}

// New checks cfg's patterns and rights and loads the users file.
func New(cfg Config) (*Auth, error) {
	a := &Auth{cfg: cfg, log: cfg.Logger, now: time.Now}
	a.fails.max = cfg.FailureLimit
	if a.fails.max <= 0 {
		a.fails.max = maxFailures
	}
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
		for _, right := range r.API {
			if !slices.Contains([]string{RightPrefetch, RightJobs, RightPins, RightAdmin}, right) {
				return nil, fmt.Errorf("auth.rules[%d].api: %q: want prefetch, jobs, pins or admin", i, right)
			}
		}
	}
	if cfg.Htpasswd != "" {
		u, err := loadUsers(cfg.Htpasswd, a.log.Warn, a.creds.clear)
		if err != nil {
			return nil, fmt.Errorf("auth.htpasswd: %w", err)
		}
		a.users = u
	}
	a.failed = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "wharf_auth_failures_total",
		Help: "Failed authentications, by reason (password, user, malformed, token).",
	}, []string{"reason"})
	a.limited = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "wharf_auth_limited_total",
		Help: "Requests refused with 429 because their address failed to log in too often.",
	})
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
// an anonymous identity, not an error; a wrong one is ErrUnauthorized, and
// an address with too many failures gets *TooManyError before any check.
func (a *Auth) Authenticate(r *http.Request) (Identity, error) {
	h := r.Header.Get("Authorization")
	tok, bearer := cutScheme(h, "Bearer")
	if h == "" || (bearer && a.cfg.APIToken == "") || (!bearer && a.users == nil) {
		// Nothing to check it against: a client that sends credentials
		// to a Wharf without users is served as anyone else is.
		return Identity{Loopback: a.cfg.Loopback && loopback(r)}, nil
	}
	addr := remoteHost(r)
	now := a.now()
	key := sha256.Sum256([]byte(h))
	if user, ok := a.creds.get(key, now); ok {
		// Known good: served even to an address that is being limited,
		// which costs nothing and spares the other clients behind a NAT.
		return Identity{User: user}, nil
	}
	if wait := a.fails.blocked(addr, now); wait > 0 {
		a.limited.Inc()
		return Identity{}, &TooManyError{Retry: wait}
	}
	if bearer {
		if subtle.ConstantTimeCompare([]byte(tok), []byte(a.cfg.APIToken)) == 1 {
			return Identity{Token: true}, nil
		}
		return Identity{}, a.failure(r, addr, "token", "")
	}
	name, pass, ok := ParseBasic(h)
	if !ok {
		return Identity{}, a.failure(r, addr, "malformed", "")
	}
	// Concurrent requests with the same header share one bcrypt run.
	reason, _, _ := a.verify.Do(string(key[:]), func() (any, error) {
		var hash []byte
		found := false
		if a.users != nil {
			hash, found = a.users.lookup(name)
		}
		if !found {
			// Spend the same time as a wrong password: user names stay private.
			bcrypt.CompareHashAndPassword(dummyHash(), []byte(pass))
			return "user", nil
		}
		if bcrypt.CompareHashAndPassword(hash, []byte(pass)) != nil {
			return "password", nil
		}
		a.creds.put(key, name, a.now())
		return "", nil
	})
	if reason != "" {
		return Identity{}, a.failure(r, addr, reason.(string), name)
	}
	return Identity{User: name}, nil
}

// dummyHash is a bcrypt hash of nothing anyone knows, at the default cost,
// made on first use: every command links this package, few check users.
var dummyHash = sync.OnceValue(func() []byte {
	h, _ := bcrypt.GenerateFromPassword([]byte("wharf: no such user"), bcrypt.DefaultCost)
	return h
})

func (a *Auth) failure(r *http.Request, addr, reason, user string) error {
	a.failed.WithLabelValues(reason).Inc()
	if len(user) > maxNameInLog {
		user = user[:maxNameInLog] + "…"
	}
	blocked := a.fails.fail(addr, a.now())
	a.log.Warn("login failed", "user", user, "reason", reason, "remote", r.RemoteAddr, "path", r.URL.Path, "now_limited", blocked)
	return ErrUnauthorized
}

// MayPull reports whether id may read repo of upstream: manifests, blobs,
// tags, referrers, and its name in the catalog.
func (a *Auth) MayPull(id Identity, upstream, repo string) bool {
	if id.Token || id.Loopback {
		return true
	}
	name := upstream + "/" + repo
	if matchAny(a.cfg.Anonymous, name) {
		return true
	}
	if id.User == "" {
		return false
	}
	for _, r := range a.cfg.Rules {
		if a.applies(r, id) && (matchAny(r.Pull, name) || slices.Contains(r.API, RightAdmin)) {
			return true
		}
	}
	return false
}

// MayAPI reports whether id holds right on /api/v1.
func (a *Auth) MayAPI(id Identity, right string) bool {
	if id.Token || (id.Loopback && a.cfg.LoopbackAPI) {
		return true
	}
	for _, r := range a.cfg.Rules {
		if a.applies(r, id) && (slices.Contains(r.API, right) || slices.Contains(r.API, RightAdmin)) {
			return true
		}
	}
	return false
}

// Credentials reports whether any credential can be checked: users or an
// API token.
func (a *Auth) Credentials() bool { return a.users != nil || a.cfg.APIToken != "" }

// MustLogIn is true when id presented no credentials and may pull nothing
// at all: then GET /v2/ asks for credentials, as registries do, and
// `docker login` works.
func (a *Auth) MustLogIn(id Identity) bool {
	return id.User == "" && !id.Token && !id.Loopback && len(a.cfg.Anonymous) == 0
}

func (a *Auth) applies(r Rule, id Identity) bool {
	return id.User != "" && (slices.Contains(r.Users, id.User) || slices.Contains(r.Users, "*"))
}

func matchAny(patterns []string, name string) bool {
	for _, p := range patterns {
		if route.Match(p, name) {
			return true
		}
	}
	return false
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
