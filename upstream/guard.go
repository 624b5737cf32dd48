package upstream

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"sync"

	"golang.org/x/net/publicsuffix"
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
//     the token realm of the upstream's first challenge, if that realm is on
//     the upstream's own site or listed in token_realms. A later challenge
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
	realms  []string // origins token_realms adds to the upstream's own site
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

func newGuard(next http.RoundTripper, name string, base *url.URL, log *slog.Logger, resolve func(context.Context, string) ([]net.IPAddr, error)) *guard {
	if log == nil {
		log = slog.Default()
	}
	if resolve == nil {
		resolve = net.DefaultResolver.LookupIPAddr
	}
	return &guard{next: next, name: name, base: base, resolve: resolve, log: log}
}

func (g *guard) RoundTrip(req *http.Request) (*http.Response, error) {
	ips, err := g.check(req)
	if err != nil {
		g.log.Warn("upstream request refused", "upstream", g.name, "host", req.URL.Host, "reason", err)
		return nil, fmt.Errorf("%w: %v", ErrRefused, err)
	}
	if ips != nil {
		// Dial what was checked, not what the name resolves to a moment
		// later (DNS rebinding).
		req = req.WithContext(context.WithValue(req.Context(), dialPlanKey{}, dialPlan{host: req.URL.Hostname(), ips: ips}))
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

// check refuses what may never be sent. For a host other than the
// upstream's own it returns the addresses checked, which are the only
// ones dialled.
func (g *guard) check(req *http.Request) ([]net.IP, error) {
	if g.base.Scheme == "https" && req.URL.Scheme != "https" {
		return nil, fmt.Errorf("%s is plain http and the upstream is https", origin(req.URL))
	}
	if origin(req.URL) == origin(g.base) {
		return nil, nil
	}
	// Not the registry: a token realm, a redirect's target, an upload location.
	if req.Header.Get("Authorization") != "" && g.movedRealm(req.URL) {
		return nil, fmt.Errorf("credentials for %s requested by token realm %s, which is not the realm of the upstream's first challenge", g.base.Host, origin(req.URL))
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
	if err != nil || u.Host == "" || !g.realmAllowed(u) {
		g.log.Warn("upstream names a token realm credentials may not go to: on another site than the upstream's own, and not in its token_realms", "upstream", g.name, "realm", redact(m[2]))
		return
	}
	g.realm = origin(u)
}

// realmAllowed reports whether the upstream's credentials may go to a
// token realm at u: over https (or http for an http upstream), on the
// upstream's own host or site (auth.docker.io for registry-1.docker.io,
// by the public suffix list; an address only the same address), or at an
// origin configured in token_realms.
func (g *guard) realmAllowed(u *url.URL) bool {
	if u.Scheme != "https" && (u.Scheme != "http" || g.base.Scheme == "https") {
		return false
	}
	if slices.Contains(g.realms, origin(u)) {
		return true
	}
	return sameSite(u.Hostname(), g.base.Hostname())
}

// sameSite reports whether hosts a and b belong to one site: the same
// name or address, or names under the same registrable domain.
func sameSite(a, b string) bool {
	a, b = strings.TrimSuffix(strings.ToLower(a), "."), strings.TrimSuffix(strings.ToLower(b), ".")
	if a == b {
		return true
	}
	ipA, ipB := net.ParseIP(a), net.ParseIP(b)
	if ipA != nil || ipB != nil {
		return ipA != nil && ipB != nil && ipA.Equal(ipB)
	}
	siteA, errA := publicsuffix.EffectiveTLDPlusOne(a)
	siteB, errB := publicsuffix.EffectiveTLDPlusOne(b)
	return errA == nil && errB == nil && siteA == siteB
}

// addrKind sorts addresses by who may be behind them, from the least to
// the most sensitive.
type addrKind int

const (
	public addrKind = iota
	private
	loopback
	linkLocal
	special // unspecified, multicast, reserved, documentation: never dialled
)

var kindNames = [...]string{"public", "private-range", "loopback", "link-local", "special"}

// Ranges the standard library's predicates do not know, and IPv6
// prefixes that carry an IPv4 address a dial may end up at.
var (
	privateRanges = prefixes("100.64.0.0/10", "198.18.0.0/15", "64:ff9b:1::/48", "fec0::/10") // shared (CGNAT: cloud metadata 100.100.100.200), benchmarking, local NAT64, site-local
	specialRanges = prefixes("0.0.0.0/8", "192.0.0.0/24", "192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "240.0.0.0/4", "2001:db8::/32", "100::/64")
	nat64         = netip.MustParsePrefix("64:ff9b::/96")
	sixToFour     = netip.MustParsePrefix("2002::/16")
	teredo        = netip.MustParsePrefix("2001::/32")
	v4Compatible  = netip.MustParsePrefix("::/96")
)

func prefixes(ps ...string) []netip.Prefix {
	out := make([]netip.Prefix, len(ps))
	for i, p := range ps {
		out[i] = netip.MustParsePrefix(p)
	}
	return out
}

func inAny(ps []netip.Prefix, a netip.Addr) bool {
	for _, p := range ps {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// kindOf is who may be behind ip. An IPv6 address that embeds an IPv4 one
// (IPv4-mapped and -compatible, NAT64, 6to4, Teredo) is of the embedded
// address's kind, or worse: routers translate it to that address.
func kindOf(ip net.IP) addrKind {
	a, ok := netip.AddrFromSlice(ip)
	if !ok {
		return special
	}
	a = a.Unmap()
	b := a.As16()
	v4 := func(x []byte) addrKind { return kindOf(net.IP(x)) }
	switch {
	case a.Is6() && a != netip.IPv6Unspecified() && a != netip.IPv6Loopback() && v4Compatible.Contains(a):
		return v4(b[12:])
	case nat64.Contains(a):
		return v4(b[12:])
	case sixToFour.Contains(a):
		return v4(b[2:6])
	case teredo.Contains(a):
		client := [4]byte{^b[12], ^b[13], ^b[14], ^b[15]}
		return max(v4(b[4:8]), v4(client[:]))
	case inAny(specialRanges, a):
		return special
	case inAny(privateRanges, a):
		return private
	}
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
// the upstream itself is on, and returns them: the only addresses the
// request may be dialled to. Literals are judged without a lookup, so a
// refused literal is never dialled.
func (g *guard) checkAddress(ctx context.Context, host string) ([]net.IP, error) {
	addrs, err := g.addrs(ctx, host)
	if err != nil {
		return nil, err
	}
	home, err := g.homeKinds(ctx)
	if err != nil {
		return nil, err
	}
	for _, ip := range addrs {
		if k := kindOf(ip); k == special || (k != public && !home[k]) {
			return nil, fmt.Errorf("%s is a %s address and the upstream is not on one", host, kindNames[k])
		}
	}
	return addrs, nil
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

// dialPlan is the addresses the guard checked for a host, carried to the
// dial in the request's context.
type dialPlan struct {
	host string
	ips  []net.IP
}

type dialPlanKey struct{}

// pinnedDial dials addr through dial, at one of the addresses the guard
// checked when addr's host has a plan in ctx (in order, the first that
// answers), else as it is: the upstream's own host, or a proxy.
func pinnedDial(dial func(ctx context.Context, network, addr string) (net.Conn, error)) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		plan, ok := ctx.Value(dialPlanKey{}).(dialPlan)
		host, port, err := net.SplitHostPort(addr)
		if !ok || err != nil || !strings.EqualFold(strings.Trim(host, "[]"), strings.Trim(plan.host, "[]")) {
			return dial(ctx, network, addr)
		}
		var errs []error
		for _, ip := range plan.ips {
			c, err := dial(ctx, network, net.JoinHostPort(ip.String(), port))
			if err == nil {
				return c, nil
			}
			errs = append(errs, err)
		}
		return nil, errors.Join(errs...)
	}
}
