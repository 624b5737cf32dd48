package proxy_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/wharf-registry/wharf/upstream/upstreamtest"
)

func TestBadInputTouchesNothing(t *testing.T) {
	t.Parallel()
	up := upstreamtest.New(t)
	root := t.TempDir()
	e := newEnv(t, root, spec{name: "docker.io", reg: up, def: true, ttl: time.Hour})
	good := digest.FromString("x").String()
	cases := []struct {
		method, path string
		status       int
		code         string
	}{
		{"GET", "/v2/Library/alpine/manifests/latest", 400, "NAME_INVALID"},
		{"GET", "/v2/library/alpine./manifests/latest", 400, "NAME_INVALID"},
		{"GET", "/v2/library//alpine/manifests/latest", 400, "NAME_INVALID"},
		{"GET", "/v2/library/../alpine/manifests/latest", 400, "NAME_INVALID"},
		{"GET", "/v2/" + strings.Repeat("a", 256) + "/manifests/latest", 400, "NAME_INVALID"},
		{"GET", "/v2/-x/blobs/" + good, 400, "NAME_INVALID"},
		{"GET", "/v2/alpine/tags/list?ns=docker.io&n=x", 400, "PAGINATION_NUMBER_INVALID"},
		{"GET", "/v2/alpine/manifests/-latest", 400, "TAG_INVALID"},
		{"GET", "/v2/alpine/manifests/.x", 400, "TAG_INVALID"},
		{"GET", "/v2/alpine/manifests/" + strings.Repeat("t", 129), 400, "TAG_INVALID"},
		{"HEAD", "/v2/alpine/manifests/sha256:1234", 400, "DIGEST_INVALID"},
		{"GET", "/v2/alpine/manifests/md5:d41d8cd98f00b204e9800998ecf8427e", 400, "DIGEST_INVALID"},
		{"GET", "/v2/alpine/blobs/sha256:" + strings.Repeat("G", 64), 400, "DIGEST_INVALID"},
		{"GET", "/v2/alpine/blobs/latest", 400, "DIGEST_INVALID"},
		{"GET", "/v2/alpine/blobs/sha256:../../../../etc/passwd", 404, "UNSUPPORTED"},
		{"GET", "/v2/alpine/referrers/nope", 400, "DIGEST_INVALID"},
		{"GET", "/v2/alpine/manifests/latest?ns=nowhere.example", 404, "NAME_UNKNOWN"},
		{"PUT", "/v2/alpine/manifests/latest", 405, "UNSUPPORTED"},
		{"DELETE", "/v2/alpine/manifests/" + good, 405, "UNSUPPORTED"},
		{"DELETE", "/v2/alpine/blobs/" + good, 405, "UNSUPPORTED"},
		{"POST", "/v2/alpine/blobs/uploads/", 405, "UNSUPPORTED"},
		{"PATCH", "/v2/alpine/blobs/uploads/0c4f1e2a", 405, "UNSUPPORTED"},
		{"PUT", "/v2/alpine/blobs/uploads/0c4f1e2a?digest=" + good, 405, "UNSUPPORTED"},
		{"GET", "/v3/", 404, "UNSUPPORTED"},
	}
	for _, c := range cases {
		r := e.do(t, c.method, c.path)
		if c.method == http.MethodHead {
			if r.status != c.status {
				t.Errorf("%s %s: %d, want %d", c.method, c.path, r.status, c.status)
			}
			continue
		}
		if r.status != c.status || !strings.Contains(string(r.body), `"code":"`+c.code+`"`) {
			t.Errorf("%s %s: %d %s, want %d %s", c.method, c.path, r.status, r.body, c.status, c.code)
		}
	}
	wantCounts(t, up, map[string]int{})
	if b, n := e.store.Size(); b != 0 || n != 0 {
		t.Fatalf("store holds %d blobs (%d bytes) after bad requests", n, b)
	}
}

func TestBase(t *testing.T) {
	t.Parallel()
	e := newEnv(t, t.TempDir(), spec{name: "docker.io", reg: upstreamtest.New(t), def: true})
	for _, p := range []string{"/v2/", "/v2"} {
		r := e.do(t, http.MethodGet, p)
		if r.status != 200 || r.header.Get("Docker-Distribution-API-Version") != "registry/2.0" || string(r.body) != "{}" {
			t.Fatalf("GET %s: %d %v %s", p, r.status, r.header, r.body)
		}
	}
	if r := e.do(t, http.MethodGet, "/healthz"); r.status != 200 {
		t.Fatalf("healthz: %d", r.status)
	}
}

// fault answers matching requests itself.
func fault(match func(*http.Request) bool, status int, hdr map[string]string, body string) func(http.ResponseWriter, *http.Request) bool {
	return func(w http.ResponseWriter, r *http.Request) bool {
		if !match(r) {
			return false
		}
		for k, v := range hdr {
			w.Header().Set(k, v)
		}
		w.WriteHeader(status)
		w.Write([]byte(body))
		return true
	}
}

func all(*http.Request) bool { return true }

func TestUpstreamTroubleIsNeverNotFound(t *testing.T) {
	t.Parallel()
	up := upstreamtest.New(t)
	img := up.PushImage(t, "library/app", "1", 20, 1, 1024, amd64)
	root := t.TempDir()
	e := newEnv(t, root, spec{name: "docker.io", reg: up, def: true, ttl: time.Hour})
	layer := "/v2/app/blobs/" + img.Layers[0].Digest.String()

	up.SetHook(fault(all, 500, nil, `{"errors":[{"code":"UNKNOWN","message":"boom"}]}`))
	wantError(t, e.do(t, "GET", "/v2/app/manifests/1"), 503, "UNAVAILABLE")
	wantError(t, e.do(t, "GET", layer), 503, "UNAVAILABLE")
	noTempFiles(t, root) // a fill makes its file before it asks upstream

	up.SetHook(fault(all, 429, map[string]string{"Retry-After": "7"}, `{"errors":[{"code":"TOOMANYREQUESTS","message":"slow down"}]}`))
	r := e.do(t, "GET", "/v2/app/manifests/1")
	wantError(t, r, 503, "UNAVAILABLE")
	if r.header.Get("Retry-After") != "7" {
		t.Fatalf("Retry-After %q, want 7", r.header.Get("Retry-After"))
	}
	r = e.do(t, "HEAD", layer)
	if r.status != 503 || r.header.Get("Retry-After") != "7" {
		t.Fatalf("HEAD blob under 429: %d %v", r.status, r.header)
	}

	// The 429 opened the circuit: Wharf does not call upstream again until
	// the Retry-After has passed. A fresh Wharf sees the other faults.
	up.Reset()
	wantError(t, e.do(t, "GET", "/v2/app/manifests/1"), 503, "UNAVAILABLE")
	wantCounts(t, up, map[string]int{})
	e = newEnv(t, t.TempDir(), spec{name: "docker.io", reg: up, def: true, ttl: time.Hour})

	up.SetHook(fault(all, 401, map[string]string{"WWW-Authenticate": `Basic realm="x"`}, ""))
	wantError(t, e.do(t, "GET", "/v2/app/manifests/1"), 401, "UNAUTHORIZED")

	up.SetHook(nil)
	up.Close() // unreachable
	start := time.Now()
	wantError(t, e.do(t, "GET", "/v2/app/manifests/1"), 503, "UNAVAILABLE")
	wantError(t, e.do(t, "GET", "/v2/app/tags/list"), 503, "UNAVAILABLE")
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("unreachable upstream took %v to report", d)
	}

	// Genuinely missing content is 404, with the right code per route.
	up2 := upstreamtest.New(t)
	root2 := t.TempDir()
	e2 := newEnv(t, root2, spec{name: "docker.io", reg: up2, def: true, ttl: time.Hour})
	wantError(t, e2.do(t, "GET", "/v2/app/manifests/1"), 404, "MANIFEST_UNKNOWN")
	wantError(t, e2.do(t, "GET", layer), 404, "BLOB_UNKNOWN")
	if r := e2.do(t, "HEAD", layer); r.status != 404 {
		t.Fatalf("HEAD missing blob: %d", r.status)
	}
	noTempFiles(t, root2)
}

// noTempFiles fails if a fill left its temporary file in the store at root
// once its client had the answer.
func noTempFiles(t *testing.T, root string) {
	t.Helper()
	ents, err := os.ReadDir(filepath.Join(root, "docker", "registry", "v2", "tmp"))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		t.Fatal(err)
	}
	if len(ents) != 0 {
		t.Fatalf("%d temporary files left after failed fills, the first %s", len(ents), ents[0].Name())
	}
}

func TestManifestThatDoesNotMatchItsDigestIsRefused(t *testing.T) {
	t.Parallel()
	up := upstreamtest.New(t)
	img := up.PushImage(t, "library/app", "1", 21, 1, 1024, amd64)
	other := up.PushImage(t, "library/app", "2", 22, 1, 1024, amd64)
	e := newEnv(t, t.TempDir(), spec{name: "docker.io", reg: up, def: true, ttl: time.Hour})
	// Upstream answers the request for img's digest with other's bytes.
	up.SetHook(fault(func(r *http.Request) bool { return strings.HasSuffix(r.URL.Path, img.Manifest.Digest.String()) },
		200, map[string]string{"Content-Type": img.MediaType}, string(other.Manifest.Data)))
	path := "/v2/app/manifests/" + img.Manifest.Digest.String()
	wantError(t, e.do(t, "GET", path), 502, "UNKNOWN")
	up.SetHook(nil)
	up.Reset()
	e.get(t, path, img.Manifest.Data, img.Manifest.Digest.String())
	wantCounts(t, up, map[string]int{"GET manifest": 1}) // nothing wrong was stored
}

func TestOversizedManifestIsRefused(t *testing.T) {
	t.Parallel()
	up := upstreamtest.New(t)
	e := newEnv(t, t.TempDir(), spec{name: "docker.io", reg: up, def: true, ttl: time.Hour})
	big := `{"mediaType":"application/vnd.oci.image.manifest.v1+json","x":"` + strings.Repeat("a", 4<<20) + `"}`
	up.SetHook(fault(all, 200, map[string]string{"Content-Type": "application/vnd.oci.image.manifest.v1+json"}, big))
	r := e.do(t, "GET", "/v2/app/manifests/huge")
	wantError(t, r, 502, "UNKNOWN")
	if !strings.Contains(string(r.body), "larger than 4 MiB") {
		t.Fatalf("message: %s", r.body)
	}
}

// An upstream that never answers, or stops mid-body, is reported within the
// configured timeouts (2s in these tests), never as a hang or a 404.
func TestHangingUpstream(t *testing.T) {
	t.Parallel()
	up := upstreamtest.New(t)
	img := up.PushImage(t, "library/app", "1", 23, 1, 100_000, amd64)
	e := newEnv(t, t.TempDir(), spec{name: "docker.io", reg: up, def: true, ttl: time.Hour})
	up.SetHook(func(w http.ResponseWriter, r *http.Request) bool {
		if strings.Contains(r.URL.Path, "/manifests/") {
			<-r.Context().Done() // no headers, ever
			return true
		}
		if r.Method == "GET" && strings.Contains(r.URL.Path, "/blobs/") {
			w.Header().Set("Content-Length", "100000")
			w.Write(img.Layers[0].Data[:1000])
			w.(http.Flusher).Flush()
			<-r.Context().Done() // then silence
			return true
		}
		return false
	})
	start := time.Now()
	wantError(t, e.do(t, "GET", "/v2/app/manifests/1"), 503, "UNAVAILABLE")
	resp, err := e.Client().Get(e.URL + "/v2/app/blobs/" + img.Layers[0].Digest.String())
	if err == nil {
		_, err = io.ReadAll(resp.Body)
		resp.Body.Close()
		if err == nil {
			t.Fatal("stalled blob delivered cleanly")
		}
	}
	if d := time.Since(start); d > 15*time.Second {
		t.Fatalf("took %v to give up on a hanging upstream", d)
	}
}

// A stale tag whose revalidation hangs is served from the cache once the
// revalidate timeout passes; by-digest requests never ask upstream.
func TestStaleIfErrorWithinDeadline(t *testing.T) {
	t.Parallel()
	up := upstreamtest.New(t)
	img := up.PushImage(t, "library/app", "1", 24, 1, 1024, amd64)
	e := newEnv(t, t.TempDir(), spec{name: "docker.io", reg: up, def: true, ttl: 0, stale: 200 * time.Millisecond})
	e.get(t, "/v2/app/manifests/1", img.Manifest.Data, img.Manifest.Digest.String())
	for _, hook := range []func(http.ResponseWriter, *http.Request) bool{
		func(w http.ResponseWriter, r *http.Request) bool { <-r.Context().Done(); return true }, // hangs
		fault(all, 503, nil, ""),
		fault(all, 429, map[string]string{"Retry-After": "60"}, ""),
	} {
		up.SetHook(hook)
		start := time.Now()
		e.get(t, "/v2/app/manifests/1", img.Manifest.Data, img.Manifest.Digest.String())
		// The revalidation gives up after 200 ms; a bound fifty times that
		// tells a deadline from a hang on a busy machine.
		if d := time.Since(start); d > 10*time.Second {
			t.Fatalf("stale answer took %v", d)
		}
	}
	if n := metric(t, e, "wharf_stale_served_total"); n != 3 {
		t.Fatalf("stale served %v times, want 3", n)
	}
	up.Reset()
	e.get(t, "/v2/app/manifests/"+img.Manifest.Digest.String(), img.Manifest.Data, img.Manifest.Digest.String())
	wantCounts(t, up, map[string]int{})
}

// A missing tag is asked upstream once per negative TTL, however often a
// crash-looping pod asks; without a negative TTL every request goes up.
func TestNegativeCache(t *testing.T) {
	t.Parallel()
	up := upstreamtest.New(t)
	e := newEnv(t, t.TempDir(),
		spec{name: "remember.example", reg: up, ttl: time.Hour, negTTL: time.Hour},
		spec{name: "forget.example", reg: up, ttl: time.Hour})
	for range 5 {
		wantError(t, e.do(t, "GET", "/v2/org/app/manifests/missing?ns=remember.example"), 404, "MANIFEST_UNKNOWN")
		if r := e.do(t, "HEAD", "/v2/org/app/manifests/missing?ns=forget.example"); r.status != 404 {
			t.Fatalf("HEAD missing: %d", r.status)
		}
	}
	wantCounts(t, up, map[string]int{"GET manifest": 1, "HEAD manifest": 5})
	if n := metric(t, e, "wharf_negative_hits_total"); n != 4 {
		t.Fatalf("negative hits %v, want 4", n)
	}
	// A repository upstream says does not exist (NAME_UNKNOWN, as Harbor
	// answers; distribution says MANIFEST_UNKNOWN) is remembered whole: any
	// tag or digest of it is answered from memory.
	up.SetHook(fault(func(r *http.Request) bool { return strings.Contains(r.URL.Path, "/org/nothing/") },
		404, nil, `{"errors":[{"code":"NAME_UNKNOWN","message":"repository not found"}]}`))
	up.Reset()
	for _, ref := range []string{"a", "b", digest.FromString("c").String()} {
		wantError(t, e.do(t, "GET", "/v2/org/nothing/manifests/"+ref+"?ns=remember.example"), 404, "MANIFEST_UNKNOWN")
	}
	wantCounts(t, up, map[string]int{"GET manifest": 1})
	up.SetHook(nil)

	// An outage is not remembered as absence.
	up.Reset()
	up.SetHook(fault(all, 503, nil, ""))
	wantError(t, e.do(t, "GET", "/v2/org/app/manifests/other?ns=remember.example"), 503, "UNAVAILABLE")
	up.SetHook(nil)
	wantError(t, e.do(t, "GET", "/v2/org/app/manifests/other?ns=remember.example"), 404, "MANIFEST_UNKNOWN")
	wantCounts(t, up, map[string]int{"GET manifest": 2})
}

// After repeated failures Wharf stops calling the upstream: cached content
// is served at once, the rest is 503 with Retry-After, with no upstream
// traffic, and the state shows in /api/v1/upstreams and /metrics.
func TestCircuitBreaker(t *testing.T) {
	t.Parallel()
	up := upstreamtest.New(t)
	img := up.PushImage(t, "library/app", "1", 25, 1, 1024, amd64)
	e := newEnv(t, t.TempDir(), spec{name: "docker.io", reg: up, def: true, ttl: time.Hour})
	pull(t, e, "app", img, "")
	up.SetHook(fault(all, 502, nil, ""))
	up.Reset()
	// One broken repository does not shut the others out.
	for i := range 6 {
		wantError(t, e.do(t, "GET", fmt.Sprintf("/v2/broken/app/manifests/missing-%d", i)), 503, "UNAVAILABLE")
	}
	if n := up.Count("GET", "manifest"); n != 6 {
		t.Fatalf("one failing repository opened the circuit: %d of 6 requests went upstream", n)
	}
	// 5xx from several repositories open it.
	for i := range 4 {
		wantError(t, e.do(t, "GET", fmt.Sprintf("/v2/team/app%d/manifests/missing", i)), 503, "UNAVAILABLE")
	}
	up.Reset()
	r := e.do(t, "GET", "/v2/app/manifests/missing-x")
	wantError(t, r, 503, "UNAVAILABLE")
	if r.header.Get("Retry-After") == "" {
		t.Fatal("no Retry-After while the circuit is open")
	}
	pull(t, e, "app", img, "") // cached: served regardless
	wantCounts(t, up, map[string]int{})

	r = e.do(t, "GET", "/api/v1/upstreams")
	var st struct {
		Upstreams []struct {
			Name, State         string
			ConsecutiveFailures int
		}
	}
	if err := json.Unmarshal(r.body, &st); err != nil || len(st.Upstreams) != 1 ||
		st.Upstreams[0].Name != "docker.io" || st.Upstreams[0].State != "open" || st.Upstreams[0].ConsecutiveFailures != 5 {
		t.Fatalf("status: %d %s", r.status, r.body)
	}
	if v := metric(t, e, "wharf_upstream_up"); v != 0 {
		t.Fatalf("wharf_upstream_up = %v while open", v)
	}
}
