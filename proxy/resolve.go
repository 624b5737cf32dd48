package proxy

import (
	"net/http"
	"regexp"
	"strings"

	"github.com/distribution/distribution/v3/registry/api/errcode"
	"github.com/gorilla/mux"
	"github.com/opencontainers/go-digest"

	"github.com/wharf-registry/wharf/httpx"
	"github.com/wharf-registry/wharf/oci"
)

// tagRE is the OCI distribution spec's tag pattern.
var tagRE = regexp.MustCompile(`^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$`)

// routed is where a request goes: an upstream key and a repository there.
type routed struct {
	upstream string
	repo     string
	name     string // the name as the client wrote it, for answers
	byNS     string // the ns that routed it, echoed as OCI-Namespace
}

// resolve validates the repository name and picks the upstream: ?ns= or the
// OCI-Namespace header first, then a path prefix naming an upstream, then
// the default. An unknown ns is an error, never a host to dial. A caller
// who may not pull the result is refused here, before anything is read.
func (p *proxy) resolve(w http.ResponseWriter, r *http.Request) (routed, error) {
	name := mux.Vars(r)["name"]
	if !oci.ValidName(name) {
		return routed{}, httpx.OCIError(http.StatusBadRequest, errcode.ErrorCodeNameInvalid, "invalid repository name")
	}
	ns := r.URL.Query().Get("ns")
	if ns == "" {
		ns = r.Header.Get("OCI-Namespace")
	}
	up, repo, err := p.router.Resolve(name, ns)
	if err != nil {
		return routed{}, httpx.OCIError(http.StatusNotFound, errcode.ErrorCodeNameUnknown, err.Error())
	}
	t := routed{upstream: up, repo: repo, name: name, byNS: ns}
	if ns != "" {
		w.Header().Set("OCI-Namespace", ns)
	}
	return t, httpx.MayPull(p.auth, r.Context(), t.upstream, t.repo, t.name)
}

// parseDigest is oci.ParseDigest as an OCI error.
func parseDigest(s string) (digest.Digest, error) {
	d, ok := oci.ParseDigest(s)
	if !ok {
		return "", httpx.OCIError(http.StatusBadRequest, errcode.ErrorCodeDigestInvalid, "invalid or unsupported digest")
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
		return "", httpx.OCIError(http.StatusBadRequest, errcode.ErrorCodeTagInvalid, "invalid tag")
	}
	return s, nil
}
