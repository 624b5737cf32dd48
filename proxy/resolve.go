package proxy

import (
	"net/http"
	"regexp"
	"strings"

	"github.com/distribution/distribution/v3/registry/api/errcode"
	"github.com/gorilla/mux"
	"github.com/opencontainers/go-digest"
)

// tagRE is the OCI distribution spec's tag pattern.
var tagRE = regexp.MustCompile(`^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$`)

// validName reports whether name matches the OCI distribution spec's
// repository pattern,
//
//	[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*
//
// written out by hand: it runs on every request, where the regexp was a
// fifth of the cost of a warm manifest.
func validName(name string) bool {
	if name == "" || len(name) > maxNameLength {
		return false
	}
	for _, comp := range strings.Split(name, "/") {
		if !validComponent(comp) {
			return false
		}
	}
	return true
}

// validComponent: alphanumeric runs joined by ".", "_", "__" or "-"+.
func validComponent(c string) bool {
	alnum := func(b byte) bool { return b >= 'a' && b <= 'z' || b >= '0' && b <= '9' }
	i := 0
	for {
		start := i
		for i < len(c) && alnum(c[i]) {
			i++
		}
		if i == start {
			return false // empty run: leading, trailing or doubled separator
		}
		if i == len(c) {
			return true
		}
		switch {
		case c[i] == '.':
			i++
		case c[i] == '_':
			i++
			if i < len(c) && c[i] == '_' {
				i++
			}
		case c[i] == '-':
			for i < len(c) && c[i] == '-' {
				i++
			}
		default:
			return false
		}
	}
}

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
// the default. An unknown ns is an error, never a host to dial. A caller
// who may not pull the result is refused here, before anything is read.
func (p *proxy) resolve(w http.ResponseWriter, r *http.Request) (target, error) {
	name := mux.Vars(r)["name"]
	if !validName(name) {
		return target{}, ociError(http.StatusBadRequest, errcode.ErrorCodeNameInvalid, "invalid repository name")
	}
	ns := r.URL.Query().Get("ns")
	if ns == "" {
		ns = r.Header.Get("OCI-Namespace")
	}
	up, repo, err := p.router.Resolve(name, ns)
	if err != nil {
		return target{}, ociError(http.StatusNotFound, errcode.ErrorCodeNameUnknown, err.Error())
	}
	t := target{upstream: up, repo: repo, name: name, byNS: ns}
	if ns != "" {
		w.Header().Set("OCI-Namespace", ns)
	}
	return t, p.mayPull(r.Context(), t)
}

// parseDigest accepts the digests the store keeps: "sha256:" and 64, or
// "sha512:" and 128, lowercase hex digits, checked by hand because it runs
// on every request (go-digest's Parse is a regexp match).
func parseDigest(s string) (digest.Digest, error) {
	alg, hex, _ := strings.Cut(s, ":")
	want := 0
	switch alg {
	case "sha256":
		want = 64
	case "sha512":
		want = 128
	}
	if want == 0 || len(hex) != want || strings.IndexFunc(hex, func(c rune) bool { return !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') }) >= 0 {
		return "", ociError(http.StatusBadRequest, errcode.ErrorCodeDigestInvalid, "invalid or unsupported digest")
	}
	return digest.Digest(s), nil
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
