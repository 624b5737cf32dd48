package httpx

import (
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strings"
)

// Behind a load balancer every client shares its address: failed logins
// would be counted, and requests logged, against the balancer. A request
// from one of the proxies the operator trusts is taken to come from the
// address that proxy put in X-Forwarded-For: the right-most one that is
// not itself a trusted proxy (a client can write what it likes on the
// left). Requests from anywhere else keep their own address, whatever
// they claim.

// ParseProxies reads server.trusted_proxies: addresses and CIDR prefixes.
func ParseProxies(list []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, s := range list {
		if p, err := netip.ParsePrefix(s); err == nil {
			out = append(out, p.Masked())
			continue
		}
		a, err := netip.ParseAddr(s)
		if err != nil {
			return nil, fmt.Errorf("server.trusted_proxies: %q is neither an address nor a prefix like 10.0.0.0/8", s)
		}
		out = append(out, netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()))
	}
	return out, nil
}

// TrustProxies rewrites the RemoteAddr of requests that trusted proxies
// forward to the client's address (port 0); without proxies it is h.
func TrustProxies(proxies []netip.Prefix, h http.Handler) http.Handler {
	if len(proxies) == 0 {
		return h
	}
	trusted := func(a netip.Addr) bool {
		for _, p := range proxies {
			if p.Contains(a.Unmap()) {
				return true
			}
		}
		return false
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if client, ok := forwardedFor(r, trusted); ok {
			r2 := *r
			r2.RemoteAddr = net.JoinHostPort(client.String(), "0")
			r = &r2
		}
		h.ServeHTTP(w, r)
	})
}

// forwardedFor is the client a trusted proxy forwarded r for.
func forwardedFor(r *http.Request, trusted func(netip.Addr) bool) (netip.Addr, bool) {
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil || !trusted(ap.Addr()) {
		return netip.Addr{}, false
	}
	var hops []string
	for _, v := range r.Header.Values("X-Forwarded-For") {
		hops = append(hops, strings.Split(v, ",")...)
	}
	for i := len(hops) - 1; i >= 0; i-- {
		a, err := netip.ParseAddr(strings.TrimSpace(hops[i]))
		if err != nil {
			return netip.Addr{}, false // a hop that is not an address: believe none left of it
		}
		if !trusted(a) || i == 0 {
			return a.Unmap(), true
		}
	}
	return netip.Addr{}, false
}
