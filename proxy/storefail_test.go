package proxy_test

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/wharf-registry/wharf/cache"
	"github.com/wharf-registry/wharf/storage"
	"github.com/wharf-registry/wharf/upstream/upstreamtest"
)

// block makes the store unable to place dgst: a plain file sits where its
// directory would go, so the rename into place fails after the bytes have
// verified. It returns how to lift the block.
func block(t *testing.T, root string, dgst digest.Digest) (unblock func()) {
	t.Helper()
	dir := filepath.Join(root, "docker/registry/v2/blobs", string(dgst.Algorithm()), dgst.Encoded()[:2])
	os.MkdirAll(filepath.Dir(dir), 0o755)
	if err := os.WriteFile(dir, []byte("in the way"), 0o644); err != nil {
		t.Fatal(err)
	}
	return func() { os.Remove(dir) }
}

// A blob that verified is served whole to every reader even when storing it
// then fails; nothing is indexed, and once the store can take it again the
// next pull stores it.
func TestVerifiedBlobSurvivesAFailedCommit(t *testing.T) {
	t.Parallel()
	up := upstreamtest.New(t)
	img := up.PushImage(t, "library/app", "1", 27, 1, 2<<20, amd64)
	root := t.TempDir()
	e := newEnv(t, root, spec{name: "docker.io", reg: up, def: true, ttl: time.Hour})
	l := img.Layers[0]
	unblock := block(t, root, l.Digest)

	e.getAll(t, 4, "/v2/library/app/blobs/"+l.Digest.String(), l.Data)
	e.cache.Close(t.Context())
	if _, err := e.store.Blob(l.Digest); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("a blob that could not be placed was indexed: %v", err)
	}
	// A reader arriving after a fill ended unstored starts another: each
	// upstream GET is one fill, and each failed to store.
	if n, gets := metric(t, e, "wharf_fill_failures_total"), up.Count("GET", "blob"); n != float64(gets) || gets < 1 || gets > 4 {
		t.Fatalf("%v fill failures counted for %d upstream GETs", n, gets)
	}
	unblock()
	e.get(t, "/v2/library/app/blobs/"+l.Digest.String(), l.Data, l.Digest.String())
	e.cache.Close(t.Context())
	if _, err := e.store.Blob(l.Digest); err != nil {
		t.Fatalf("not stored once the store could take it: %v", err)
	}
}

// A manifest that verified is answered even when the store cannot keep it;
// the failure is logged and counted, never a 500.
func TestVerifiedManifestSurvivesAFailedStore(t *testing.T) {
	t.Parallel()
	up := upstreamtest.New(t)
	img := up.PushImage(t, "library/app", "1", 28, 1, 1024, amd64)
	root := t.TempDir()
	e := newEnv(t, root, spec{name: "docker.io", reg: up, def: true, ttl: time.Hour})
	unblock := block(t, root, img.Manifest.Digest)
	defer unblock()
	for range 2 {
		r := e.get(t, "/v2/library/app/manifests/1", img.Manifest.Data, img.Manifest.Digest.String())
		if r.header.Get("Content-Type") != img.MediaType {
			t.Fatalf("Content-Type %q", r.header.Get("Content-Type"))
		}
		e.get(t, "/v2/library/app/manifests/"+img.Manifest.Digest.String(), img.Manifest.Data, img.Manifest.Digest.String())
	}
	if n := metric(t, e, "wharf_store_failures_total"); n == 0 {
		t.Fatal("the failed store was not counted")
	}
}

// On a store that is full, misses pass through from upstream from the
// start; a Range request of such a blob gets exactly its bytes, and one
// that runs to the end is verified whole.
func TestPassThroughRangesOnAFullStore(t *testing.T) {
	t.Parallel()
	up := upstreamtest.New(t)
	img := up.PushImage(t, "library/app", "1", 29, 1, 300_000, amd64)
	full := storage.Options{MinFree: 1 << 30, Statfs: func() (uint64, uint64, error) { return 512 << 20, 1 << 40, nil }}
	e := newEnvStore(t, t.TempDir(), full, cache.Config{}, "", spec{name: "docker.io", reg: up, def: true, ttl: time.Hour})
	l := img.Layers[0]
	path := "/v2/library/app/blobs/" + l.Digest.String()
	size := len(l.Data)
	for _, c := range []struct{ from, to int }{{1000, 1999}, {0, 99}, {size - 500, size - 1}, {150_000, size - 1}} {
		rng := fmt.Sprintf("bytes=%d-%d", c.from, c.to)
		up.Reset()
		r := e.do(t, "GET", path, "Range", rng)
		if r.status != 206 || !bytes.Equal(r.body, l.Data[c.from:c.to+1]) {
			t.Fatalf("Range %s on a full store: %d, %d bytes, right bytes %v", rng, r.status, len(r.body), bytes.Equal(r.body, l.Data[c.from:c.to+1]))
		}
		if n := up.Count("GET", "blob"); n != 1 {
			t.Fatalf("Range %s: %d upstream GETs, want 1", rng, n)
		}
	}
	up.Reset()
	e.get(t, path, l.Data, l.Digest.String())
	if n := up.Count("GET", "blob"); n != 1 {
		t.Fatalf("a whole blob on a full store: %d upstream GETs, want 1", n)
	}
	if _, err := e.store.Blob(l.Digest); err == nil {
		t.Fatal("stored on a full store")
	}
}
