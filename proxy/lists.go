package proxy

import (
	"net/http"
	"slices"
	"sort"
	"strconv"

	"github.com/gorilla/mux"

	"github.com/wharf-registry/wharf/httpx"
)

// tags lists a repository's tags with n/last pagination and a Link header.
func (p *proxy) tags(w http.ResponseWriter, r *http.Request) error {
	t, err := p.resolve(w, r)
	if err != nil {
		return err
	}
	n, err := httpx.PageParams(r)
	if err != nil {
		return err
	}
	last := r.URL.Query().Get("last")
	tags, err := p.cache.Tags(r.Context(), t.upstream, t.repo)
	if err != nil {
		return err
	}
	page, more := httpx.Paginate(tags, n, last)
	if more {
		httpx.SetNextLink(w, r, "/v2/"+t.name+"/tags/list", n, page[len(page)-1])
	}
	return httpx.WriteJSON(w, r, map[string]any{"name": t.name, "tags": page})
}

// catalog lists the repositories Wharf holds that the caller may pull, as
// names a client can pull: plain for the default upstream, prefixed with
// the upstream otherwise; in a fleet, those every live replica holds. Like
// GET /v2/, it asks an anonymous caller who may pull nothing to log in.
func (p *proxy) catalog(w http.ResponseWriter, r *http.Request) error {
	if p.auth.MustLogIn(httpx.Identity(r.Context())) {
		return httpx.Unauthorized(p.auth, "authentication required")
	}
	n, err := httpx.PageParams(r)
	if err != nil {
		return err
	}
	last := r.URL.Query().Get("last")
	repos, _, err := p.cache.FleetRepositories(r.Context())
	if err != nil {
		return err
	}
	names := make([]string, 0, len(repos))
	id := httpx.Identity(r.Context())
	for _, repo := range repos {
		if !p.auth.MayPull(id, repo.Upstream, repo.Name) {
			continue
		}
		if repo.Upstream == p.router.Default() {
			names = append(names, repo.Name)
		} else {
			names = append(names, repo.Upstream+"/"+repo.Name)
		}
	}
	sort.Strings(names)
	page, more := httpx.Paginate(slices.Compact(names), n, last)
	if more {
		httpx.SetNextLink(w, r, "/v2/_catalog", n, page[len(page)-1])
	}
	return httpx.WriteJSON(w, r, map[string]any{"repositories": page})
}

// referrers passes upstream's referrers list through, cached, and applies
// an artifactType filter itself.
func (p *proxy) referrers(w http.ResponseWriter, r *http.Request) error {
	dgst, err := parseDigest(mux.Vars(r)["digest"])
	if err != nil {
		return err
	}
	t, err := p.resolve(w, r)
	if err != nil {
		return err
	}
	filter := r.URL.Query().Get("artifactType")
	doc, filtered, err := p.cache.Referrers(r.Context(), t.upstream, t.repo, dgst, filter)
	if err != nil {
		return err
	}
	if filtered {
		w.Header().Set("OCI-Filters-Applied", "artifactType")
	}
	w.Header().Set("Content-Type", doc.MediaType)
	w.Header().Set("Content-Length", strconv.Itoa(len(doc.Body)))
	if r.Method == http.MethodHead {
		return nil
	}
	_, err = w.Write(doc.Body)
	return err
}
