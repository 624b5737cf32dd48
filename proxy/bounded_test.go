package proxy_test

import (
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/wharf-registry/wharf/upstream/upstreamtest"
)

// stall holds upstream blob GETs after half their bytes until the request
// ends; ended is told each time one does.
func stall(ended chan<- string) func(http.ResponseWriter, *http.Request) bool {
	return func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method != http.MethodGet || !strings.Contains(r.URL.Path, "/blobs/") {
			return false
		}
		w.Header().Set("Content-Length", "1000000")
		w.Write(make([]byte, 1000))
		w.(http.Flusher).Flush()
		<-r.Context().Done()
		ended <- r.URL.Path
		return true
	}
}

// A fill whose clients all went away, and that no job reads, is cancelled
// after the grace period: it no longer holds an upstream slot for up to an
// hour.
func TestAbandonedFillIsCancelled(t *testing.T) {
	t.Parallel()
	up := upstreamtest.New(t)
	img := up.PushImage(t, "library/app", "1", 48, 1, 1024, amd64)
	ended := make(chan string, 4)
	up.SetHook(stall(ended))
	e := newEnv(t, t.TempDir(), spec{name: "docker.io", reg: up, def: true, ttl: time.Hour, fillGrace: 200 * time.Millisecond})
	resp, err := e.Client().Get(e.URL + "/v2/library/app/blobs/" + img.Layers[0].Digest.String())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(resp.Body, make([]byte, 100)); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close() // the only client leaves
	select {
	case <-ended:
	case <-time.After(10 * time.Second):
		t.Fatal("the abandoned fill still holds its upstream request")
	}
	e.cache.Close(t.Context())
	if n := metric(t, e, "wharf_fills_in_flight"); n != 0 {
		t.Fatalf("%v fills in flight", n)
	}
	if n := metric(t, e, "wharf_fill_failures_total"); n != 1 {
		t.Fatalf("fill failures %v, want the one abandoned", n)
	}
}

// Fills of one upstream are capped below its request limit: past the cap a
// miss waits its WaitTimeout and is told 503 with Retry-After, and manifest
// requests still find a slot.
func TestFillsAreCappedBelowTheRequestLimit(t *testing.T) {
	t.Parallel()
	up := upstreamtest.New(t)
	var imgs []upstreamtest.Image
	for i := range 3 {
		imgs = append(imgs, up.PushImage(t, "library/app", string(rune('a'+i)), uint64(49+i), 1, 1024, amd64))
	}
	ended := make(chan string, 8)
	up.SetHook(stall(ended))
	e := newEnv(t, t.TempDir(), spec{name: "docker.io", reg: up, def: true, ttl: time.Hour,
		maxConc: 4, maxFills: 2, wait: 100 * time.Millisecond})
	var bodies []io.Closer
	defer func() {
		for _, b := range bodies {
			b.Close()
		}
	}()
	for _, img := range imgs[:2] {
		resp, err := e.Client().Get(e.URL + "/v2/library/app/blobs/" + img.Layers[0].Digest.String())
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("fill %v %v", resp, err)
		}
		bodies = append(bodies, resp.Body)
	}
	r := e.do(t, http.MethodGet, "/v2/library/app/blobs/"+imgs[2].Layers[0].Digest.String())
	wantError(t, r, http.StatusServiceUnavailable, "UNAVAILABLE")
	if r.header.Get("Retry-After") == "" {
		t.Fatal("no Retry-After past the fill cap")
	}
	// Manifests still get through.
	var wg sync.WaitGroup
	for _, img := range imgs {
		wg.Go(func() {
			e.get(t, "/v2/library/app/manifests/"+img.Tag, img.Manifest.Data, img.Manifest.Digest.String())
		})
	}
	wg.Wait()
}

// 10,000 anonymous requests for random repository names and digests: each
// distinct name or digest costs upstream one request, asking again costs
// none, nothing is added to the index, and memory and goroutines come back
// to where they were.
func TestRandomNamesStayBounded(t *testing.T) {
	up := upstreamtest.New(t)
	img := up.PushImage(t, "org/real", "1", 52, 1, 1024, amd64)
	sig := `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}`
	e := newEnv(t, t.TempDir(), spec{name: "docker.io", reg: up, def: true, ttl: time.Hour, negTTL: time.Hour})
	e.get(t, "/v2/org/real/manifests/1", img.Manifest.Data, img.Manifest.Digest.String())
	up.SetHook(fault(func(r *http.Request) bool { return strings.Contains(r.URL.Path, "/referrers/") },
		200, map[string]string{"Content-Type": "application/vnd.oci.image.index.v1+json"}, sig))
	e.cache.Close(t.Context())
	records, err := e.store.Records()
	if err != nil {
		t.Fatal(err)
	}
	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	baseG := runtime.NumGoroutine()
	up.Reset()

	const distinct = 1250 // × 4 kinds × 2 requests each = 10,000
	rng := rand.New(rand.NewPCG(1, 2))
	paths := make([]string, 0, 4*distinct)
	for i := range distinct {
		repo := fmt.Sprintf("r%08x/n%08x", rng.Uint32(), i)
		d1, d2 := digest.FromString(fmt.Sprint("random", i, rng.Uint64())), digest.FromString(fmt.Sprint("other", i, rng.Uint64()))
		paths = append(paths,
			"/v2/"+repo+"/manifests/t"+fmt.Sprint(i),
			"/v2/"+repo+"/blobs/"+d1.String(),
			"/v2/org/real/blobs/"+d2.String(),
			"/v2/org/real/referrers/"+img.Manifest.Digest.String()+"?artifactType=application/x-"+fmt.Sprint(i))
	}
	var wg sync.WaitGroup
	work := make(chan string)
	bad := make(chan string, 16)
	for range 8 {
		wg.Go(func() {
			for p := range work {
				resp, err := e.Client().Get(e.URL + p)
				if err != nil {
					bad <- err.Error()
					continue
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				want := http.StatusNotFound
				if strings.Contains(p, "/referrers/") {
					want = http.StatusOK
				}
				if resp.StatusCode != want {
					select {
					case bad <- fmt.Sprintf("%s: %d", p, resp.StatusCode):
					default:
					}
				}
			}
		})
	}
	for range 2 { // each path twice: the second time from memory
		for _, p := range paths {
			work <- p
		}
	}
	close(work)
	wg.Wait()
	close(bad)
	for b := range bad {
		t.Error(b)
	}
	// One upstream request per distinct name and digest, the second round
	// answered from memory; every referrers filter from one cached list.
	wantCounts(t, up, map[string]int{"GET manifest": distinct, "GET blob": 2 * distinct, "GET referrers": 1})
	if n := metric(t, e, "wharf_negative_entries"); n != 3*distinct {
		t.Errorf("negative entries %v, want %d", n, 3*distinct)
	}
	e.cache.Close(t.Context())
	if n, _ := e.store.Records(); n > records+1 { // +1: the referrers list
		t.Errorf("index records: %d before, %d after", records, n)
	}
	e.Client().CloseIdleConnections()
	if g := settle(runtime.NumGoroutine, baseG+4); g > baseG+4 {
		t.Errorf("goroutines: %d after, %d before", g, baseG)
	}
	runtime.GC()
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	if grown := int64(after.HeapAlloc) - int64(before.HeapAlloc); grown > 32<<20 {
		t.Errorf("heap grew by %d MiB", grown>>20)
	}
	// The request metric's labels are a fixed set, whatever method a
	// client sends.
	for _, m := range []string{"BREW", "PROPFIND", "X-" + strings.Repeat("A", 100)} {
		req, _ := http.NewRequest(m, e.URL+"/v2/", nil)
		if resp, err := e.Client().Do(req); err == nil {
			resp.Body.Close()
		}
	}
	mfs, _ := e.reg.Gather()
	for _, mf := range mfs {
		for _, mt := range mf.GetMetric() {
			for _, l := range mt.GetLabel() {
				if l.GetName() == "method" && !strings.Contains("GET HEAD POST PUT PATCH DELETE OPTIONS other", l.GetValue()) {
					t.Errorf("%s has method label %q", mf.GetName(), l.GetValue())
				}
			}
		}
	}
}

// Attack 6: referrers of random digests, which a spec-conformant upstream
// answers 200 with an empty list, cost one upstream request per digest and
// no index record; a list of a cached manifest that names something is
// kept in the index, and survives a restart.
func TestRandomReferrersStayOutOfTheIndex(t *testing.T) {
	t.Parallel()
	up := upstreamtest.New(t, upstreamtest.WithReferrersAPI())
	img := up.PushImage(t, "org/real", "1", 53, 1, 1024, amd64)
	_, sig := up.PushArtifact(t, "org/real", "sig", "application/vnd.example.sig", &ocispec.Descriptor{MediaType: img.MediaType, Digest: img.Manifest.Digest, Size: int64(len(img.Manifest.Data))}, []byte("signed"))
	root := t.TempDir()
	e := newEnv(t, root, spec{name: "docker.io", reg: up, def: true, ttl: time.Hour})
	e.get(t, "/v2/org/real/manifests/1", img.Manifest.Data, img.Manifest.Digest.String())
	records, err := e.store.Records()
	if err != nil {
		t.Fatal(err)
	}
	up.Reset()
	const n = 1000
	for round := range 2 {
		for i := range n {
			r := e.do(t, http.MethodGet, "/v2/org/real/referrers/"+digest.FromString(fmt.Sprint("random", i)).String())
			if r.status != http.StatusOK || !strings.Contains(string(r.body), `"manifests":[]`) {
				t.Fatalf("round %d, referrers of a random digest: %d %s", round, r.status, r.body)
			}
		}
	}
	wantCounts(t, up, map[string]int{"GET referrers": n})
	if got, _ := e.store.Records(); got != records {
		t.Fatalf("index records: %d before, %d after", records, got)
	}
	path := "/v2/org/real/referrers/" + img.Manifest.Digest.String()
	if r := e.do(t, http.MethodGet, path); r.status != http.StatusOK || !strings.Contains(string(r.body), sig.Digest.String()) {
		t.Fatalf("referrers of the cached manifest: %d %s", r.status, r.body)
	}
	e.close()
	up.Reset()
	e = newEnv(t, root, spec{name: "docker.io", reg: up, def: true, ttl: time.Hour})
	if r := e.do(t, http.MethodGet, path); r.status != http.StatusOK || !strings.Contains(string(r.body), sig.Digest.String()) {
		t.Fatalf("referrers of the cached manifest after a restart: %d %s", r.status, r.body)
	}
	wantCounts(t, up, map[string]int{})
}
