package upstream

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"sync"
)

// maxRedirects is how many redirects a request may follow: a blob CDN needs
// one or two; a loop or a chain built to wander needs more.
const maxRedirects = 5

// ErrRefused is the transport error of a request the guard would not send:
// credentials for a host they do not belong to, a redirect to an address
// an upstream has no business naming, or a downgrade to plain http. It is
// the upstream misbehaving, so the cache answers 503 and the log says why.
var ErrRefused = errors.New("refused by wharf's outbound policy")

var challengeRE = regexp.MustCompile(`(?i)^\s*(\w+)(?:\s.*?\brealm="([^"]*)")?`)

// guard is the last step before the wire for every request Wharf sends to
// or on behalf of one upstream: the registry itself, its token service and
// the hosts its redirects name. It decides where credentials may go and
// which hosts may be contacted at all, whatever an answer asks for.
//
//   - Authorization goes to the upstream's own scheme, host and port, and to
//     the token realm of the upstream's first challenge. A later challenge
//     naming another realm gets nothing: the token request is refused before
//     it is sent. A first challenge of Basic pins no realm at all. Any other
//     request to another host (a redirect, an upload location) goes without
//     Authorization.
//   - An https upstream is never followed to plain http, token realm or redirect.
//   - Hosts other than the upstream's own must be public addresses, or of
//     the upstream's own kind (loopback, private range, link-local): a
//     hostile upstream cannot point Wharf at 169.254.169.254 or the LAN.
type guard struct {
	next    http.RoundTripper
	name    string
	base    *url.URL // scheme and canonical host:port of the upstream
	resolve func(ctx context.Context, host string) ([]net.IPAddr, error)
	log     *slog.Logger

	mu         sync.Mutex
	challenged bool
	realm      string          // canonical scheme://host:port of the pinned realm, "" for none
	moved      map[string]bool // realms named by later challenges: token requests there are refused
	home       map[addrKind]bool
}

// maxMoved bounds the realms remembered as refused; an upstream naming
// more is broken anyway, and the oldest are forgotten.
const maxMoved = 16

func newGuard(next http.RoundTripper, name string, base *url.URL, log *slog.Logger) *guard {
	if log == nil {
		log = slog.Default()
	}
	return &guard{next: next, name: name, base: base, resolve: net.DefaultResolver.LookupIPAddr, log: log}
}

func (g *guard) RoundTrip(req *http.Request) (*http.Response, error) {
	if err := g.check(req); err != nil {
		g.log.Warn("upstream request refused", "upstream", g.name, "host", req.URL.Host, "reason", err)
		return nil, fmt.Errorf("%w: %v", ErrRefused, err)
	}
	if req.Header.Get("Authorization") != "" && !g.mayAuthorize(req.URL) {
		// A redirect to another host of the same name: Go keeps the header,
		// the guard does not.
		req = req.Clone(req.Context())
		req.Header.Del("Authorization")
	}
	resp, err := g.next.RoundTrip(req)
	if err == nil && resp.StatusCode == http.StatusUnauthorized && origin(req.URL) == origin(g.base) {
		g.pin(resp.Header.Get("WWW-Authenticate"))
	}
	return resp, err
}

// check refuses what may never be sent.
func (g *guard) check(req *http.Request) error {
	if g.base.Scheme == "https" && req.URL.Scheme != "https" {
		return fmt.Errorf("%s is plain http and the upstream is https", origin(req.URL))
	}
	if origin(req.URL) == origin(g.base) {
		return nil
	}
	// Not the registry: a token realm, a redirect's target, an upload location.
	if req.Header.Get("Authorization") != "" && g.movedRealm(req.URL) {
		return fmt.Errorf("credentials for %s requested by token realm %s, which is not the realm of the upstream's first challenge", g.base.Host, origin(req.URL))
	}
	return g.checkAddress(req.Context(), req.URL.Hostname())
}

// mayAuthorize reports whether credentials may go to u.
func (g *guard) mayAuthorize(u *url.URL) bool {
	o := origin(u)
	if o == origin(g.base) {
		return true
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.realm != "" && o == g.realm
}

func (g *guard) movedRealm(u *url.URL) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.moved[origin(u)]
}

// pin remembers the realm of the upstream's first challenge, and every
// other realm a later one names.
func (g *guard) pin(challenge string) {
	m := challengeRE.FindStringSubmatch(challenge)
	g.mu.Lock()
	defer g.mu.Unlock()
	if m == nil {
		return
	}
	if g.challenged {
		if u, err := url.Parse(m[2]); err == nil && m[2] != "" && origin(u) != g.realm {
			if g.moved == nil || len(g.moved) >= maxMoved {
				g.moved = map[string]bool{}
			}
			g.moved[origin(u)] = true
		}
		return
	}
	g.challenged = true
	if !strings.EqualFold(m[1], "bearer") {
		return
	}
	u, err := url.Parse(m[2])
	if err != nil || u.Host == "" || (u.Scheme != "https" && (u.Scheme != "http" || g.base.Scheme == "https")) {
		g.log.Warn("upstream names a token realm credentials may not go to", "upstream", g.name, "realm", redact(m[2]))
		return
	}
	g.realm = origin(u)
}

// addrKind sorts addresses by who may be behind them.
type addrKind int

const (
	public addrKind = iota
	loopback
	private
	linkLocal
	special // unspecified, multicast: never dialled
)

func kindOf(ip net.IP) addrKind {
	switch {
	case ip.IsLoopback():
		return loopback
	case ip.IsLinkLocalUnicast():
		return linkLocal
	case ip.IsPrivate():
		return private
	case ip.IsUnspecified(), ip.IsMulticast(), ip.IsLinkLocalMulticast(), ip.IsInterfaceLocalMulticast():
		return special
	}
	return public
}

// checkAddress admits host if every address it has is public or of a kind
// the upstream itself is on. Literals are judged without a lookup, so a
// refused literal is never dialled.
func (g *guard) checkAddress(ctx context.Context, host string) error {
	addrs, err := g.addrs(ctx, host)
	if err != nil {
		return err
	}
	home, err := g.homeKinds(ctx)
	if err != nil {
		return err
	}
	for _, ip := range addrs {
		if k := kindOf(ip); k == special || (k != public && !home[k]) {
			return fmt.Errorf("%s is a %s address and the upstream is not on one", host, [...]string{"public", "loopback", "private-range", "link-local", "special"}[k])
		}
	}
	return nil
}

func (g *guard) addrs(ctx context.Context, host string) ([]net.IP, error) {
	if ip := net.ParseIP(host); ip != nil {
		return []net.IP{ip}, nil
	}
	ias, err := g.resolve(ctx, host)
	if err != nil {
		return nil, err
	}
	ips := make([]net.IP, len(ias))
	for i, ia := range ias {
		ips[i] = ia.IP
	}
	return ips, nil
}

// homeKinds are the kinds of address the upstream's own host has, looked
// up once.
func (g *guard) homeKinds(ctx context.Context) (map[addrKind]bool, error) {
	g.mu.Lock()
	home := g.home
	g.mu.Unlock()
	if home != nil {
		return home, nil
	}
	ips, err := g.addrs(ctx, g.base.Hostname())
	if err != nil {
		return nil, err
	}
	home = map[addrKind]bool{}
	for _, ip := range ips {
		home[kindOf(ip)] = true
	}
	g.mu.Lock()
	g.home = home
	g.mu.Unlock()
	return home, nil
}

// origin is scheme://host:port with the default port spelled out, so that
// registry.example and registry.example:443 are one origin.
func origin(u *url.URL) string {
	port := u.Port()
	if port == "" {
		port = map[string]string{"http": "80", "https": "443"}[u.Scheme]
	}
	return u.Scheme + "://" + net.JoinHostPort(strings.ToLower(u.Hostname()), port)
}

// checkRedirect bounds redirect chains; the guard judges each hop's target.
func checkRedirect(req *http.Request, via []*http.Request) error {
	if len(via) >= maxRedirects {
		return fmt.Errorf("%w: more than %d redirects", ErrRefused, maxRedirects)
	}
	return nil
}
