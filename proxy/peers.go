package proxy

import (
	"net/http"

	"github.com/distribution/distribution/v3/registry/api/errcode"
	"github.com/distribution/reference"
	"github.com/gorilla/mux"

	"github.com/wharf-registry/wharf/httpx"
)

// PeerAuth admits another replica of the fleet (its request is signed with
// the fleet's secret: see package cluster).
type PeerAuth func(*http.Request) bool

// peerBlob serves a blob to another replica, which asks this one because
// it owns the digest: the blob is filled here once, from the bucket or
// upstream, and streamed to every replica asking, Range included. The
// upstream and repository come with the request; a replica's answer for
// a repository proves what upstream's would.
func (p *proxy) peerBlob(w http.ResponseWriter, r *http.Request) error {
	if p.peerAuth == nil || !p.peerAuth(r) {
		return httpx.OCIError(http.StatusUnauthorized, errcode.ErrorCodeUnauthorized, "peer requests must be signed with the fleet's secret")
	}
	dgst, err := parseDigest(mux.Vars(r)["digest"])
	if err != nil {
		return err
	}
	up, repo := r.URL.Query().Get("upstream"), r.URL.Query().Get("repo")
	if !p.cache.HasUpstream(up) {
		return httpx.OCIError(http.StatusNotFound, errcode.ErrorCodeUnknown, "no such upstream")
	}
	if _, err := reference.WithName(repo); err != nil {
		return httpx.OCIError(http.StatusBadRequest, errcode.ErrorCodeUnknown, "invalid repository name")
	}
	return p.serveBlob(w, r, up, repo, dgst)
}
