package proxy_test

import (
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/wharf-registry/wharf/upstream/upstreamtest"
)

// waitStored polls the store (bounded) until every blob is there: eager
// fills run on their own goroutines.
func waitStored(t *testing.T, e *env, blobs []upstreamtest.Blob) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for _, b := range blobs {
		for {
			if _, err := e.store.Blob(b.Digest); err == nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("blob %s not stored within 10s", b.Digest)
			}
			time.Sleep(5 * time.Millisecond) // polling the fill goroutines
		}
	}
}

// A client that fetched only the manifest leaves the eager fills of its
// config and layers finishing on their own; the blobs it asks for later
// come from the store, one upstream GET each in all.
func TestEagerFillsFinishOnTheirOwn(t *testing.T) {
	t.Parallel()
	up := upstreamtest.New(t)
	img := up.PushImage(t, "library/app", "1.0", 91, 3, 32<<10, amd64)
	up.Reset()
	e := newEnv(t, t.TempDir(), spec{name: "docker.io", reg: up, def: true, ttl: time.Hour, eager: true, fillGrace: time.Millisecond})
	e.get(t, "/v2/library/app/manifests/1.0", img.Manifest.Data, img.Manifest.Digest.String())
	waitStored(t, e, img.Blobs())
	if metric(t, e, "wharf_eager_fills_total") != 4 || metric(t, e, "wharf_eager_fills_used_total") != 0 {
		t.Fatalf("eager %v, used %v", metric(t, e, "wharf_eager_fills_total"), metric(t, e, "wharf_eager_fills_used_total"))
	}
	for _, b := range img.Blobs() {
		e.get(t, "/v2/library/app/blobs/"+b.Digest.String(), b.Data, b.Digest.String())
	}
	wantCounts(t, up, map[string]int{"GET manifest": 1, "GET blob": 4})
	if n := metric(t, e, "wharf_eager_fills_used_total"); n != 4 {
		t.Fatalf("wharf_eager_fills_used_total %v, want 4", n)
	}
}

// However the client's blob requests interleave with the eager fills
// (before, during, after), each blob is fetched from upstream once.
func TestEagerFillsFetchEachBlobOnce(t *testing.T) {
	t.Parallel()
	for round := range 5 {
		up := upstreamtest.New(t)
		img := up.PushImage(t, "library/app", "1.0", uint64(92+round), 4, 256<<10, amd64)
		up.Reset()
		e := newEnv(t, t.TempDir(), spec{name: "docker.io", reg: up, def: true, ttl: time.Hour, eager: true})
		e.get(t, "/v2/library/app/manifests/1.0", img.Manifest.Data, img.Manifest.Digest.String())
		var wg sync.WaitGroup
		for range 3 {
			for _, b := range img.Blobs() {
				wg.Go(func() { e.getAll(t, 1, "/v2/library/app/blobs/"+b.Digest.String(), b.Data) })
			}
		}
		wg.Wait()
		wantCounts(t, up, map[string]int{"GET manifest": 1, "GET blob": 5})
		e.close()
	}
}

// An eager fill that fails does not fail the client's own request, which
// starts a normal fill, and is not remembered as a refusal.
func TestEagerFillFailureIsNobodysAnswer(t *testing.T) {
	t.Parallel()
	up := upstreamtest.New(t)
	img := up.PushImage(t, "library/app", "1.0", 97, 1, 8<<10, amd64)
	layer := img.Layers[0].Digest
	var mu sync.Mutex
	failed := false
	up.SetHook(func(w http.ResponseWriter, r *http.Request) bool {
		mu.Lock()
		defer mu.Unlock()
		if failed || !strings.HasSuffix(r.URL.Path, "/blobs/"+layer.String()) {
			return false
		}
		failed = true
		http.Error(w, `{"errors":[{"code":"BLOB_UNKNOWN"}]}`, http.StatusNotFound)
		return true
	})
	up.Reset()
	e := newEnv(t, t.TempDir(), spec{name: "docker.io", reg: up, def: true, ttl: time.Hour, negTTL: time.Hour, eager: true})
	e.get(t, "/v2/library/app/manifests/1.0", img.Manifest.Data, img.Manifest.Digest.String())
	waitStored(t, e, []upstreamtest.Blob{img.Config})
	deadline := time.Now().Add(10 * time.Second)
	for {
		mu.Lock()
		done := failed
		mu.Unlock()
		if done && metric(t, e, "wharf_fills_in_flight") == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(5 * time.Millisecond) // polling the failed eager fill's end
	}
	e.get(t, "/v2/library/app/blobs/"+layer.String(), img.Layers[0].Data, layer.String())
	wantCounts(t, up, map[string]int{"GET manifest": 1, "GET blob": 3})
}

// An index starts nothing: only the child a client asks for is fetched,
// with its blobs; the other platform costs no upstream request.
func TestEagerFillsOnlyForRequestedPlatforms(t *testing.T) {
	t.Parallel()
	up := upstreamtest.New(t)
	a := up.PushImage(t, "library/multi", "", 98, 2, 8<<10, amd64)
	b := up.PushImage(t, "library/multi", "", 99, 2, 8<<10, ocispec.Platform{OS: "linux", Architecture: "arm64"})
	idx := up.PushIndex(t, "library/multi", "v1", a, b)
	up.Reset()
	e := newEnv(t, t.TempDir(), spec{name: "docker.io", reg: up, def: true, ttl: time.Hour, eager: true})
	e.get(t, "/v2/library/multi/manifests/v1", idx.Manifest.Data, idx.Manifest.Digest.String())
	wantCounts(t, up, map[string]int{"GET manifest": 1})
	e.get(t, "/v2/library/multi/manifests/"+a.Manifest.Digest.String(), a.Manifest.Data, a.Manifest.Digest.String())
	waitStored(t, e, a.Blobs())
	wantCounts(t, up, map[string]int{"GET manifest": 2, "GET blob": 3})
	for _, bl := range b.Blobs() {
		if _, err := e.store.Blob(bl.Digest); err == nil {
			t.Fatalf("arm64 blob %s fetched", bl.Digest)
		}
	}
}
