package proxy

import (
	"encoding/json"
	"net/http"
	"net/url"
	"slices"
	"sort"
	"strconv"

	"github.com/distribution/distribution/v3/registry/api/errcode"
	"github.com/gorilla/mux"
)

// tags lists a repository's tags with n/last pagination and a Link header.
func (p *proxy) tags(w http.ResponseWriter, r *http.Request) error {
	t, err := p.resolve(w, r)
	if err != nil {
		return err
	}
	n, err := pageParams(r)
	if err != nil {
		return err
	}
	last := r.URL.Query().Get("last")
	tags, err := p.cache.Tags(r.Context(), t.upstream, t.repo)
	if err != nil {
		return err
	}
	page, more := paginate(tags, n, last)
	if more {
		setNextLink(w, r, "/v2/"+t.name+"/tags/list", n, page[len(page)-1])
	}
	return writeJSON(w, r, map[string]any{"name": t.name, "tags": page})
}

// catalog lists the repositories Wharf holds that the caller may pull, as
// names a client can pull: plain for the default upstream, prefixed with
// the upstream otherwise. Like GET /v2/, it asks an anonymous caller who
// may pull nothing to log in.
func (p *proxy) catalog(w http.ResponseWriter, r *http.Request) error {
	if p.auth.MustLogIn(identity(r.Context())) {
		return p.unauthorized("authentication required")
	}
	n, err := pageParams(r)
	if err != nil {
		return err
	}
	last := r.URL.Query().Get("last")
	repos, err := p.cache.Repositories()
	if err != nil {
		return err
	}
	names := make([]string, 0, len(repos))
	id := identity(r.Context())
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
	page, more := paginate(slices.Compact(names), n, last)
	if more {
		setNextLink(w, r, "/v2/_catalog", n, page[len(page)-1])
	}
	return writeJSON(w, r, map[string]any{"repositories": page})
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

// pageParams reads n, -1 when absent.
func pageParams(r *http.Request) (int, error) {
	n := -1
	if s := r.URL.Query().Get("n"); s != "" {
		v, err := strconv.Atoi(s)
		if err != nil || v < 0 {
			return 0, ociError(http.StatusBadRequest, errcode.ErrorCodePaginationNumberInvalid, "n must be a non-negative integer")
		}
		n = v
	}
	return n, nil
}

// paginate returns the sorted items after last, at most n of them (all if
// n < 0), and whether more follow.
func paginate(items []string, n int, last string) ([]string, bool) {
	if last != "" {
		i, _ := slices.BinarySearch(items, last)
		if i < len(items) && items[i] == last {
			i++
		}
		items = items[i:]
	}
	if items == nil {
		items = []string{}
	}
	if n >= 0 && len(items) > n {
		return items[:n], n > 0
	}
	return items, false
}

func setNextLink(w http.ResponseWriter, r *http.Request, path string, n int, last string) {
	q := url.Values{"n": {strconv.Itoa(n)}, "last": {last}}
	if ns := r.URL.Query().Get("ns"); ns != "" {
		q.Set("ns", ns)
	}
	w.Header().Set("Link", "<"+path+"?"+q.Encode()+`>; rel="next"`)
}

func writeJSON(w http.ResponseWriter, r *http.Request, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	if r.Method == http.MethodHead {
		return nil
	}
	_, err = w.Write(b)
	return err
}
