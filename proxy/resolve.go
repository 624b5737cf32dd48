package proxy

import (
	"net/http"
	"regexp"
	"strings"

	"github.com/distribution/distribution/v3/registry/api/errcode"
	"github.com/gorilla/mux"
	"github.com/opencontainers/go-digest"
)

// Patterns from the OCI distribution spec. Anything else is refused before
// it reaches the cache, the store or an upstream.
var (
	nameRE = regexp.MustCompile(`^[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*$`)
	tagRE  = regexp.MustCompile(`^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$`)
)

const maxNameLength = 255

// target is where a request goes: an upstream key and a repository there.
type target struct {
	upstream string
	repo     string
	name     string // the name as the client wrote it, for answers
	byNS     string // the ns that routed it, echoed as OCI-Namespace
}

// resolve validates the repository name and picks the upstream: ?ns= or the
// OCI-Namespace header first, then a path prefix naming an upstream, then
// the default. An unknown ns is an error, never a host to dial.
func (p *proxy) resolve(w http.ResponseWriter, r *http.Request) (target, error) {
	name := mux.Vars(r)["name"]
	if len(name) > maxNameLength || !nameRE.MatchString(name) {
		return target{}, ociError(http.StatusBadRequest, errcode.ErrorCodeNameInvalid, "invalid repository name")
	}
	t := target{name: name, repo: name}
	first, rest, nested := strings.Cut(name, "/")
	ns := r.URL.Query().Get("ns")
	if ns == "" {
		ns = r.Header.Get("OCI-Namespace")
	}
	switch {
	case ns != "":
		rt, ok := p.routes[strings.ToLower(ns)]
		if !ok {
			return target{}, ociError(http.StatusNotFound, errcode.ErrorCodeNameUnknown, "no upstream is configured for namespace "+ns)
		}
		t.upstream, t.byNS = rt.Name, ns
		if prefix, ok := p.routes[first]; ok && nested && prefix.Name == rt.Name {
			t.repo = rest // containerd's override_path form: /v2/<ns>/<repo>
		}
		w.Header().Set("OCI-Namespace", ns)
	case nested && p.routes[first].Name != "":
		t.upstream, t.repo = p.routes[first].Name, rest
	case p.fallback != "":
		t.upstream = p.fallback
	default:
		return target{}, ociError(http.StatusNotFound, errcode.ErrorCodeNameUnknown, "no upstream serves "+name+" and none is the default")
	}
	if p.dockerHub[t.upstream] && !strings.Contains(t.repo, "/") {
		t.repo = "library/" + t.repo
	}
	return t, nil
}

// parseDigest accepts only sha256 digests: the store's only algorithm.
func parseDigest(s string) (digest.Digest, error) {
	d, err := digest.Parse(s)
	if err != nil || d.Algorithm() != digest.SHA256 {
		return "", ociError(http.StatusBadRequest, errcode.ErrorCodeDigestInvalid, "invalid or unsupported digest")
	}
	return d, nil
}

// parseReference checks a manifest reference: a digest if it has a colon,
// a tag otherwise.
func parseReference(s string) (string, error) {
	if strings.Contains(s, ":") {
		d, err := parseDigest(s)
		return d.String(), err
	}
	if !tagRE.MatchString(s) {
		return "", ociError(http.StatusBadRequest, errcode.ErrorCodeTagInvalid, "invalid tag")
	}
	return s, nil
}
