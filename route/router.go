package route

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
)

// Upstream is how a configured upstream is named in requests.
type Upstream struct {
	Name    string   // the key: ?ns=, OCI-Namespace, the path prefix, references
	Aliases []string // other names meaning the same upstream
	Default bool     // serves names that name no upstream
	// Hosts are the registry's own host[:port] (its URL's): what a skopeo
	// sync file keys it by (see Registry), unless a name or an alias of
	// any upstream is the same.
	Hosts []string
	// TLSVerify: the registry is reached over TLS, its certificate
	// verified (not plain http, not insecure).
	TLSVerify bool
}

// ErrUnknown says a name routes to no configured upstream.
var ErrUnknown = errors.New("no upstream is configured")

// Router answers "which upstream and repository does this name mean", the
// one rule for /v2 requests, API references, access rules and pins.
type Router struct {
	keys      map[string]string // lowercased name or alias → upstream name
	fallback  string
	dockerHub map[string]bool   // upstreams whose one-part names get library/
	verify    map[string]bool   // upstreams reached over verified TLS
	hosts     map[string]string // lowercased url host → upstream name, for sync files
}

// NewRouter checks that no name means two upstreams and at most one is
// the default.
func NewRouter(ups []Upstream) (*Router, error) {
	r := &Router{keys: map[string]string{}, dockerHub: map[string]bool{}, verify: map[string]bool{}, hosts: map[string]string{}}
	for _, u := range ups {
		r.verify[u.Name] = u.TLSVerify
		for _, k := range append([]string{u.Name}, u.Aliases...) {
			k = strings.ToLower(k)
			if prev, dup := r.keys[k]; dup {
				return nil, fmt.Errorf("route: %q names both upstream %s and %s", k, prev, u.Name)
			}
			r.keys[k] = u.Name
			if k == "docker.io" {
				r.dockerHub[u.Name] = true
			}
		}
		if u.Default {
			if r.fallback != "" {
				return nil, errors.New("route: more than one default upstream")
			}
			r.fallback = u.Name
		}
	}
	for _, u := range ups {
		for _, h := range u.Hosts {
			if h = strings.ToLower(h); h != "" && r.keys[h] == "" && r.hosts[h] == "" {
				r.hosts[h] = u.Name
			}
		}
	}
	return r, nil
}

// Registry is the upstream a registry key of a skopeo sync file means: a
// name or an alias, or the host of an upstream's url (as skopeo writes
// it). Pulls are routed by names and aliases only (see Resolve).
func (r *Router) Registry(key string) (string, bool) {
	k := strings.ToLower(key)
	if up, ok := r.keys[k]; ok {
		return up, true
	}
	up, ok := r.hosts[k]
	return up, ok
}

// Names lists the upstreams, sorted.
func (r *Router) Names() []string { return slices.Sorted(maps.Keys(r.verify)) }

// TLSVerify reports whether upstream is reached over verified TLS.
func (r *Router) TLSVerify(upstream string) bool { return r.verify[upstream] }

// Default is the default upstream's name, "" if none.
func (r *Router) Default() string { return r.fallback }

// Resolve maps a repository name, as a client wrote it, to an upstream and
// a repository there. ns, if not "", is the namespace the client named
// (containerd's ?ns=): it picks the upstream, and a name that repeats it
// as a prefix (containerd's override_path) loses it. Otherwise a first
// element naming an upstream picks it; a first element that looks like a
// registry host Wharf does not know is an error, never a repository on the
// default upstream; anything else is on the default upstream. Docker Hub's
// one-part names get library/.
func (r *Router) Resolve(name, ns string) (upstream, repo string, err error) {
	first, rest, nested := strings.Cut(name, "/")
	prefix := ""
	if nested {
		prefix = r.keys[strings.ToLower(first)]
	}
	switch {
	case ns != "":
		up, ok := r.keys[strings.ToLower(ns)]
		if !ok {
			return "", "", fmt.Errorf("%w for namespace %s", ErrUnknown, ns)
		}
		upstream, repo = up, name
		if prefix == up {
			repo = rest
		}
	case prefix != "":
		upstream, repo = prefix, rest
	case r.fallback != "" && !(nested && looksLikeHost(first)):
		upstream, repo = r.fallback, name
	case nested && looksLikeHost(first):
		return "", "", fmt.Errorf("%w for %s", ErrUnknown, first)
	default:
		return "", "", fmt.Errorf("%w for %s, and none is the default", ErrUnknown, name)
	}
	if r.dockerHub[upstream] && !strings.Contains(repo, "/") {
		repo = "library/" + repo
	}
	return upstream, repo, nil
}

// looksLikeHost: a registry host, as docker reads a reference's first
// element (a dot, a port, or localhost).
func looksLikeHost(s string) bool {
	return strings.ContainsAny(s, ".:") || s == "localhost"
}
