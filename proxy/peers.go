package proxy

import (
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/distribution/distribution/v3/registry/api/errcode"
	"github.com/distribution/reference"
	"github.com/gorilla/mux"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/wharf-registry/wharf/cache"
	"github.com/wharf-registry/wharf/httpx"
)

// peerBlob serves a blob to another replica, which asks this one because
// it owns the digest: the blob is filled here once, from the bucket or
// upstream, and streamed to every replica asking, Range included. The
// upstream and repository come with the request; a replica's answer for
// a repository proves what upstream's would.
func (p *proxy) peerBlob(w http.ResponseWriter, r *http.Request) error {
	if !p.fleet.Authorized(r) {
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
	return p.serveBlob(w, r.WithContext(cache.ForPeer(r.Context())), up, repo, dgst)
}

// healthz is the readiness probe: 503 while this replica is starting or
// stopping. Trouble it works around (a bucket that does not answer, peers
// down or refusing it, clocks apart) is still 200, one line each after
// "degraded": a replica that serves what it holds and passes misses
// through must not be restarted or taken out, and the lines are for the
// operator who asks.
func (p *proxy) healthz(ready func() bool) func(http.ResponseWriter, *http.Request) error {
	return func(w http.ResponseWriter, r *http.Request) error {
		w.Header().Set("Cache-Control", "no-store")
		if ready != nil && !ready() {
			w.WriteHeader(http.StatusServiceUnavailable)
			_, err := io.WriteString(w, "not ready: starting or stopping\n")
			return err
		}
		var problems []string
		if why := p.cache.Degraded(r.Context()); why != "" {
			problems = append(problems, why)
		}
		if p.fleet != nil {
			problems = append(problems, p.fleet.Problems()...)
		}
		if len(problems) == 0 {
			_, err := io.WriteString(w, "ok\n")
			return err
		}
		_, err := io.WriteString(w, "degraded:\n- "+strings.Join(problems, "\n- ")+"\n")
		return err
	}
}

// peerTag answers another replica about a tag this one owns: resolved
// here as for a client of its own (from what it holds while fresh, else
// upstream, once however many replicas ask), with the manifest for a GET
// and, in cache.TagAgeHeader, how long ago upstream was asked. Errors are
// 404, 403 and 400 for what upstream said, 503 for the rest (the asking
// replica then resolves the tag itself); 401 is only ever the signature's.
func (p *proxy) peerTag(w http.ResponseWriter, r *http.Request) error {
	if !p.fleet.Authorized(r) {
		return httpx.OCIError(http.StatusUnauthorized, errcode.ErrorCodeUnauthorized, "peer requests must be signed with the fleet's secret")
	}
	q := r.URL.Query()
	up, repo, tag := q.Get("upstream"), q.Get("repo"), q.Get("tag")
	if !p.cache.HasUpstream(up) {
		return httpx.OCIError(http.StatusNotFound, errcode.ErrorCodeUnknown, "no such upstream")
	}
	if _, err := reference.WithName(repo); err != nil {
		return httpx.OCIError(http.StatusBadRequest, errcode.ErrorCodeUnknown, "invalid repository name")
	}
	tag, err := parseReference(tag) // a tag, or a manifest's digest (see cache.viaDigestOwner)
	if err != nil {
		return err
	}
	ctx := cache.ForPeer(r.Context())
	var desc ocispec.Descriptor
	var body []byte
	if r.Method == http.MethodHead {
		desc, err = p.cache.ManifestHead(ctx, up, repo, tag)
	} else {
		desc, body, err = p.cache.Manifest(ctx, up, repo, tag)
	}
	if err != nil {
		return peerError(err, errcode.ErrorCodeManifestUnknown)
	}
	if ms, ok := p.cache.TagAge(up, repo, tag); ok {
		w.Header().Set(cache.TagAgeHeader, strconv.FormatInt(ms, 10))
	}
	setManifestHeaders(w, desc)
	w.Header().Set("Content-Length", strconv.FormatInt(desc.Size, 10))
	if r.Method == http.MethodHead {
		w.WriteHeader(http.StatusOK)
		return nil
	}
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	_, err = w.Write(body)
	return err
}

// peerTags answers another replica with the tag list of a repository this
// one owns, no older than max_age_ms (as a scheduled replication run
// asks), and in cache.TagAgeHeader how old it is. Errors as peerTag's.
func (p *proxy) peerTags(w http.ResponseWriter, r *http.Request) error {
	if !p.fleet.Authorized(r) {
		return httpx.OCIError(http.StatusUnauthorized, errcode.ErrorCodeUnauthorized, "peer requests must be signed with the fleet's secret")
	}
	q := r.URL.Query()
	up, repo := q.Get("upstream"), q.Get("repo")
	if !p.cache.HasUpstream(up) {
		return httpx.OCIError(http.StatusNotFound, errcode.ErrorCodeUnknown, "no such upstream")
	}
	if _, err := reference.WithName(repo); err != nil {
		return httpx.OCIError(http.StatusBadRequest, errcode.ErrorCodeUnknown, "invalid repository name")
	}
	ms, err := strconv.ParseInt(q.Get("max_age_ms"), 10, 64)
	if err != nil {
		return httpx.OCIError(http.StatusBadRequest, errcode.ErrorCodeUnknown, "max_age_ms must be milliseconds")
	}
	tags, err := p.cache.TagsWithin(cache.ForPeer(r.Context()), up, repo, time.Duration(ms)*time.Millisecond)
	if err != nil {
		return peerError(err, errcode.ErrorCodeNameUnknown)
	}
	if age, ok := p.cache.TagListAge(up, repo); ok {
		w.Header().Set(cache.TagAgeHeader, strconv.FormatInt(age, 10))
	}
	return httpx.WriteJSON(w, r, map[string]any{"tags": tags})
}

// peerError is what a peer is told of err: 404, 403 and 400 for what
// upstream said, 503 for the rest, so that the peer resolves the rest
// itself; 401 is only ever the signature's.
func peerError(err error, notFound errcode.ErrorCode) error {
	he := httpx.ToHTTP(err, notFound)
	switch {
	case errors.Is(err, cache.ErrNotFound) || errors.Is(err, cache.ErrUnknown):
		he.Status = http.StatusNotFound
	case errors.Is(err, cache.ErrDenied):
		he.Status = http.StatusForbidden
	case errors.Is(err, cache.ErrRejected):
		he.Status = http.StatusBadRequest
	default:
		he.Status = http.StatusServiceUnavailable
	}
	return he
}

// peerRepositories lists the repositories this replica holds, for another
// building the fleet's catalog (cache.FleetRepositories).
func (p *proxy) peerRepositories(w http.ResponseWriter, r *http.Request) error {
	if !p.fleet.Authorized(r) {
		return httpx.OCIError(http.StatusUnauthorized, errcode.ErrorCodeUnauthorized, "peer requests must be signed with the fleet's secret")
	}
	repos, err := p.cache.Repositories()
	if err != nil {
		return err
	}
	return httpx.WriteJSON(w, r, repos)
}
