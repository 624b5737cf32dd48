package proxy_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/wharf-registry/wharf/cache"
	"github.com/wharf-registry/wharf/upstream/upstreamtest"
)

// A stale tag is served only when upstream is unavailable (no answer, 5xx,
// 429); any other answer (access revoked, Harbor's "prevent vulnerable
// images" 412, a bad request) is passed on as it is, for GET and HEAD.
func TestStaleOnlyWhenUpstreamIsUnavailable(t *testing.T) {
	t.Parallel()
	up := upstreamtest.New(t)
	img := up.PushImage(t, "org/app", "1", 40, 1, 1024, amd64)
	clk := &clock{t: time.Unix(1_000_000, 0)}
	e := newEnvWith(t, t.TempDir(), cache.Config{Now: clk.now}, spec{name: "harbor.example", reg: up, def: true, ttl: time.Minute})
	e.get(t, "/v2/org/app/manifests/1", img.Manifest.Data, img.Manifest.Digest.String())
	heads := func(r *http.Request) bool { return r.Method == http.MethodHead }
	for _, c := range []struct {
		status int
		body   string
		want   int
		code   string
	}{ // a revalidating HEAD has no body: the status says it all
		{401, "", 401, "UNAUTHORIZED"},
		{403, "", 403, "DENIED"},
		{400, "", 400, "UNKNOWN"},
		{412, "", 412, "UNKNOWN"}, // Harbor's "prevent vulnerable images"
		{500, "", 200, ""},
		{503, "", 200, ""},
		{429, "", 200, ""},
	} {
		clk.add(2 * time.Minute) // stale again
		up.SetHook(fault(heads, c.status, nil, c.body))
		for _, method := range []string{http.MethodGet, http.MethodHead} {
			r := e.do(t, method, "/v2/org/app/manifests/1")
			if c.want == 200 {
				if r.status != 200 || r.header.Get("Docker-Content-Digest") != img.Manifest.Digest.String() {
					t.Errorf("upstream %d, %s: %d, want the stale manifest", c.status, method, r.status)
				}
				continue
			}
			if r.status != c.want {
				t.Errorf("upstream %d, %s: %d %s, want %d", c.status, method, r.status, r.body, c.want)
			}
			if method == http.MethodGet && !strings.Contains(string(r.body), `"code":"`+c.code+`"`) {
				t.Errorf("upstream %d: %s, want code %s", c.status, r.body, c.code)
			}
			if strings.Contains(string(r.body), up.Host()) || strings.Contains(string(r.body), "http://") {
				t.Errorf("upstream %d: the answer names the upstream: %s", c.status, r.body)
			}
		}
		up.SetHook(nil)
		up.Reset()
	}
	if n := metric(t, e, "wharf_stale_served_total"); n != 6 {
		t.Fatalf("stale answers counted: %v, want 6 (3 outages × GET and HEAD)", n)
	}
}

// "Not found" is only what the registry itself says: a 404 from its token
// service or from where it redirected a blob is a broken gateway, 503.
func TestNotFoundOnlyFromTheRegistry(t *testing.T) {
	t.Parallel()
	up := upstreamtest.New(t)
	img := up.PushImage(t, "org/app", "1", 41, 1, 1024, amd64)
	realm := httptest.NewServer(http.NotFoundHandler())
	defer realm.Close()
	up.SetHook(func(w http.ResponseWriter, r *http.Request) bool {
		if r.Header.Get("Authorization") != "" {
			return false
		}
		w.Header().Set("WWW-Authenticate", `Bearer realm="`+realm.URL+`/token",service="x",scope="repository:org/app:pull"`)
		w.WriteHeader(http.StatusUnauthorized)
		return true
	})
	e := newEnv(t, t.TempDir(), spec{name: "docker.io", reg: up, def: true, ttl: time.Hour, negTTL: time.Hour})
	wantError(t, e.do(t, "GET", "/v2/org/app/manifests/1"), 503, "UNAVAILABLE")
	wantError(t, e.do(t, "GET", "/v2/org/app/blobs/"+img.Layers[0].Digest.String()), 503, "UNAVAILABLE")

	// A blob redirected to a CDN that has lost it.
	cdn := httptest.NewServer(http.NotFoundHandler())
	defer cdn.Close()
	up.SetHook(func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/") {
			http.Redirect(w, r, cdn.URL+"/blob?sig=secret", http.StatusTemporaryRedirect)
			return true
		}
		return false
	})
	e = newEnv(t, t.TempDir(), spec{name: "docker.io", reg: up, def: true, ttl: time.Hour, negTTL: time.Hour})
	r := e.do(t, "GET", "/v2/org/app/blobs/"+img.Layers[0].Digest.String())
	wantError(t, r, 503, "UNAVAILABLE")
	if strings.Contains(string(r.body), "secret") || strings.Contains(string(r.body), cdn.URL) {
		t.Fatalf("the redirect target leaked: %s", r.body)
	}
	// Not remembered as absent: the next request asks again.
	up.Reset()
	e.do(t, "GET", "/v2/org/app/blobs/"+img.Layers[0].Digest.String())
	if n := up.Count("GET", "blob"); n != 1 {
		t.Fatalf("a redirect target's 404 was remembered: %d upstream GETs", n)
	}
}

// The media type of a manifest is what its body declares, whatever the
// upstream's Content-Type said: stored and served so, for GET and HEAD.
func TestManifestMediaTypeComesFromTheBody(t *testing.T) {
	t.Parallel()
	for _, ct := range []string{"application/json", "text/plain", "application/octet-stream", ""} {
		t.Run(strings.ReplaceAll(cmpOr(ct, "none"), "/", "_"), func(t *testing.T) {
			up := upstreamtest.New(t)
			img := up.PushImage(t, "org/app", "1", 42, 1, 1024, amd64)
			idx := up.PushIndex(t, "org/app", "multi", img)
			up.Relabel(func(r *http.Request) bool { return strings.Contains(r.URL.Path, "/manifests/") }, ct)
			e := newEnv(t, t.TempDir(), spec{name: "docker.io", reg: up, def: true, ttl: time.Hour})
			for _, m := range []struct {
				ref, mt string
				blob    upstreamtest.Blob
			}{{"1", img.MediaType, img.Manifest}, {"multi", ocispec.MediaTypeImageIndex, idx.Manifest}, {img.Manifest.Digest.String(), img.MediaType, img.Manifest}} {
				for _, method := range []string{http.MethodHead, http.MethodGet, http.MethodHead} {
					r := e.do(t, method, "/v2/org/app/manifests/"+m.ref)
					if r.status != 200 || r.header.Get("Content-Type") != m.mt || r.header.Get("Docker-Content-Digest") != m.blob.Digest.String() {
						t.Fatalf("%s %s: %d %q", method, m.ref, r.status, r.header.Get("Content-Type"))
					}
				}
			}
			e.cache.Close(t.Context())
			if bi, err := e.store.Blob(img.Manifest.Digest); err != nil || bi.MediaType != img.MediaType {
				t.Fatalf("stored as %q (%v)", bi.MediaType, err)
			}
		})
	}
}

// readFile reads a blob's data file in distribution's layout under root.
func readFile(root string, d digest.Digest) ([]byte, error) {
	return os.ReadFile(filepath.Join(root, "docker/registry/v2/blobs", string(d.Algorithm()), d.Encoded()[:2], d.Encoded(), "data"))
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// A sha512 digest is accepted wherever a sha256 one is: a blob is fetched,
// verified with SHA-512 and stored under blobs/sha512; a manifest by sha512
// digest is verified the same way; a missing one is 404 as upstream says.
func TestSHA512Digests(t *testing.T) {
	t.Parallel()
	up := upstreamtest.New(t)
	data := upstreamtest.Random(43, 100_000)
	d := digest.SHA512.FromBytes(data)
	resp, _ := http.Post(up.URL+"/v2/org/app/blobs/uploads/", "", nil)
	resp.Body.Close()
	req, _ := http.NewRequest(http.MethodPut, resp.Header.Get("Location")+"&digest="+d.String(), bytes.NewReader(data))
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != http.StatusCreated {
		t.Fatalf("sha512 upload: %v %v", resp, err)
	}
	manifest := fmt.Appendf(nil, `{"schemaVersion":2,"mediaType":%q,"config":{"mediaType":%q,"digest":%q,"size":%d},"layers":[]}`,
		ocispec.MediaTypeImageManifest, ocispec.MediaTypeImageConfig, d, len(data))
	md := digest.SHA512.FromBytes(manifest)
	up.SetHook(func(w http.ResponseWriter, r *http.Request) bool {
		// distribution keeps manifests by sha256 only: serve this one here.
		if r.URL.Path == "/v2/org/app/manifests/"+md.String() {
			w.Header().Set("Content-Type", ocispec.MediaTypeImageManifest)
			w.Header().Set("Docker-Content-Digest", md.String())
			w.Header().Set("Content-Length", fmt.Sprint(len(manifest)))
			if r.Method == http.MethodGet {
				w.Write(manifest)
			}
			return true
		}
		return false
	})
	root := t.TempDir()
	e := newEnv(t, root, spec{name: "docker.io", reg: up, def: true, ttl: time.Hour})
	e.get(t, "/v2/org/app/manifests/"+md.String(), manifest, md.String())
	e.get(t, "/v2/org/app/blobs/"+d.String(), data, d.String())
	r := e.do(t, http.MethodGet, "/v2/org/app/blobs/"+d.String(), "Range", "bytes=10-19")
	if r.status != http.StatusPartialContent || !bytes.Equal(r.body, data[10:20]) {
		t.Fatalf("range of a sha512 blob: %d", r.status)
	}
	e.cache.Close(t.Context())
	for _, dg := range []digest.Digest{d, md} {
		if _, err := e.store.Blob(dg); err != nil {
			t.Fatalf("%s not stored: %v", dg, err)
		}
		if _, err := readFile(root, dg); err != nil {
			t.Fatalf("%s not under blobs/sha512: %v", dg, err)
		}
	}
	missing := digest.SHA512.FromString("missing")
	wantError(t, e.do(t, http.MethodGet, "/v2/org/app/blobs/"+missing.String()), 404, "BLOB_UNKNOWN")
	wantError(t, e.do(t, http.MethodGet, "/v2/org/app/manifests/"+missing.String()), 404, "MANIFEST_UNKNOWN")
	if r := e.do(t, http.MethodHead, "/v2/org/app/blobs/"+missing.String()); r.status != 404 {
		t.Fatalf("HEAD missing sha512 blob: %d", r.status)
	}
	// Wrong bytes under a sha512 digest never pass.
	up.SetHook(func(w http.ResponseWriter, r *http.Request) bool {
		if strings.Contains(r.URL.Path, "/manifests/") {
			w.Header().Set("Content-Type", ocispec.MediaTypeImageManifest)
			w.Write([]byte(`{"schemaVersion":2}`))
			return true
		}
		return false
	})
	wrong := digest.SHA512.FromString("something else")
	wantError(t, e.do(t, http.MethodGet, "/v2/org/app/manifests/"+wrong.String()), 502, "UNKNOWN")
}

// A cold manifest HEAD, by tag or digest, costs upstream a HEAD, never a
// GET (Docker Hub counts GETs against the pull limit).
func TestColdManifestHeadIsAnUpstreamHead(t *testing.T) {
	t.Parallel()
	up := upstreamtest.New(t)
	img := up.PushImage(t, "library/app", "1", 44, 1, 1024, amd64)
	up.Reset()
	e := newEnv(t, t.TempDir(), spec{name: "docker.io", reg: up, def: true, ttl: time.Hour})
	for _, ref := range []string{"1", img.Manifest.Digest.String()} {
		r := e.do(t, http.MethodHead, "/v2/app/manifests/"+ref)
		if r.status != 200 || r.header.Get("Docker-Content-Digest") != img.Manifest.Digest.String() ||
			r.header.Get("Content-Length") != fmt.Sprint(len(img.Manifest.Data)) || r.header.Get("Content-Type") != img.MediaType {
			t.Fatalf("HEAD %s: %d %v", ref, r.status, r.header)
		}
	}
	// The tag was resolved by the first HEAD and is trusted for its TTL.
	e.do(t, http.MethodHead, "/v2/app/manifests/1")
	wantCounts(t, up, map[string]int{"HEAD manifest": 2})
	if r := e.do(t, http.MethodHead, "/v2/app/manifests/2"); r.status != 404 {
		t.Fatalf("HEAD of a missing tag: %d", r.status)
	}
}

// Tag lists are trusted for the upstream's tag TTL, concurrent requests
// share one upstream fetch, and a stale list is served only when upstream
// is unavailable.
func TestTagListsAreCachedAndShared(t *testing.T) {
	t.Parallel()
	up := upstreamtest.New(t)
	up.PushImage(t, "org/app", "1", 45, 1, 512, amd64)
	up.PushImage(t, "org/app", "2", 46, 1, 512, amd64)
	clk := &clock{t: time.Unix(1_000_000, 0)}
	// The held fetch must not time out while the clients arrive, however
	// loaded the machine: header and idle timeouts far above the hold.
	e := newEnvWith(t, t.TempDir(), cache.Config{Now: clk.now}, spec{name: "docker.io", reg: up, def: true, ttl: time.Minute, headers: time.Minute})
	var inflight atomic.Int32
	e.Config.Handler = countInflight(e.Config.Handler, &inflight)
	up.Reset()
	// Hold the first upstream fetch until every client is inside Wharf.
	up.SetHook(func(w http.ResponseWriter, r *http.Request) bool {
		deadline := time.Now().Add(30 * time.Second)
		for inflight.Load() < 16 && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond) // polling a condition, bounded
		}
		return false
	})
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for range 16 {
		wg.Go(func() {
			resp, err := e.Client().Get(e.URL + "/v2/org/app/tags/list")
			if err != nil {
				errs <- err
				return
			}
			var doc struct{ Tags []string }
			err = json.NewDecoder(resp.Body).Decode(&doc)
			resp.Body.Close()
			if err != nil || strings.Join(doc.Tags, ",") != "1,2" {
				errs <- fmt.Errorf("tags %v, %v", doc.Tags, err)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	up.SetHook(nil)
	wantCounts(t, up, map[string]int{"GET tags": 1})

	up.PushImage(t, "org/app", "3", 47, 1, 512, amd64)
	up.Reset()
	clk.add(59 * time.Second)
	if r := e.do(t, http.MethodGet, "/v2/org/app/tags/list"); !strings.Contains(string(r.body), `"tags":["1","2"]`) {
		t.Fatalf("within the TTL: %s", r.body)
	}
	clk.add(2 * time.Second)
	if r := e.do(t, http.MethodGet, "/v2/org/app/tags/list"); !strings.Contains(string(r.body), `"tags":["1","2","3"]`) {
		t.Fatalf("after the TTL: %s", r.body)
	}
	wantCounts(t, up, map[string]int{"GET tags": 1})
	clk.add(2 * time.Minute)
	up.SetHook(fault(all, 503, nil, ""))
	if r := e.do(t, http.MethodGet, "/v2/org/app/tags/list"); r.status != 200 || !strings.Contains(string(r.body), `"tags":["1","2","3"]`) {
		t.Fatalf("upstream down: %d %s", r.status, r.body)
	}
	up.SetHook(fault(all, 403, nil, `{"errors":[{"code":"DENIED","message":"no"}]}`))
	clk.add(2 * time.Minute)
	wantError(t, e.do(t, http.MethodGet, "/v2/org/app/tags/list"), 403, "DENIED")
}

// A repository's tag list that upstream called missing (no tags yet) is
// asked for again once a manifest of it is fetched or resolved: a
// remembered 404 must not contradict a tag just served.
func TestFoundManifestForgetsMissingTagList(t *testing.T) {
	t.Parallel()
	for _, method := range []string{http.MethodGet, http.MethodHead} {
		up := upstreamtest.New(t)
		e := newEnv(t, t.TempDir(), spec{name: "docker.io", reg: up, def: true, ttl: time.Hour, negTTL: time.Hour})
		wantError(t, e.do(t, http.MethodGet, "/v2/team/app/tags/list"), http.StatusNotFound, "NAME_UNKNOWN")
		up.PushImage(t, "team/app", "v1", 71, 1, 1024, amd64)
		if r := e.do(t, method, "/v2/team/app/manifests/v1"); r.status != http.StatusOK {
			t.Fatalf("%s of the new tag: %d", method, r.status)
		}
		r := e.do(t, http.MethodGet, "/v2/team/app/tags/list")
		if r.status != http.StatusOK || string(r.body) != `{"name":"team/app","tags":["v1"]}` {
			t.Fatalf("after a %s of its manifest, the tag list: %d %s", method, r.status, r.body)
		}
	}
}

// A stale tag whose repository keeps failing is asked about once per
// back-off, not once per request: 1 s after the first failure, then 2 s;
// the stale answer is served meanwhile; upstream's first good answer ends
// it.
func TestStaleTagBacksOff(t *testing.T) {
	t.Parallel()
	up := upstreamtest.New(t)
	img := up.PushImage(t, "org/app", "1", 42, 1, 1024, amd64)
	clk := &clock{t: time.Unix(1_000_000, 0)}
	e := newEnvWith(t, t.TempDir(), cache.Config{Now: clk.now}, spec{name: "harbor.example", reg: up, def: true, ttl: time.Minute})
	e.get(t, "/v2/org/app/manifests/1", img.Manifest.Data, img.Manifest.Digest.String())
	clk.add(2 * time.Minute)
	up.SetHook(fault(func(r *http.Request) bool { return r.Method == http.MethodHead }, http.StatusServiceUnavailable, nil, ""))
	up.Reset()
	burst := func() {
		t.Helper()
		for i := range 20 {
			method := []string{http.MethodGet, http.MethodHead}[i%2]
			if r := e.do(t, method, "/v2/org/app/manifests/1"); r.status != http.StatusOK || r.header.Get("Docker-Content-Digest") != img.Manifest.Digest.String() {
				t.Fatalf("%s of a stale tag while upstream fails: %d", method, r.status)
			}
		}
	}
	burst()
	wantCounts(t, up, map[string]int{"HEAD manifest": 1})
	clk.add(1500 * time.Millisecond) // past the first back-off
	burst()
	wantCounts(t, up, map[string]int{"HEAD manifest": 2})
	clk.add(1500 * time.Millisecond) // not past the second (2 s)
	burst()
	wantCounts(t, up, map[string]int{"HEAD manifest": 2})
	up.SetHook(nil)
	clk.add(time.Second)
	burst()
	wantCounts(t, up, map[string]int{"HEAD manifest": 3}) // fresh again: one HEAD, the rest from the index
	if n := metric(t, e, "wharf_stale_served_total"); n != 60 {
		t.Fatalf("stale answers: %v, want 60", n)
	}
}
