package cache

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/wharf-registry/wharf/storage"
)

// newTestCache is a cache over a fresh store under root, for logic that
// needs no upstream (or brings its own in cfg).
func newTestCache(t *testing.T, cfg Config) (c *Cache, store *storage.Store, root string) {
	t.Helper()
	root = t.TempDir()
	store, err := storage.Open(root, storage.Options{})
	if err != nil {
		t.Fatal(err)
	}
	cfg.Registerer = prometheus.NewRegistry()
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	c, err = New(store, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.Close(t.Context())
		store.Close()
	})
	return c, store, root
}

func putBlob(t *testing.T, s *storage.Store, data []byte, mediaType string) digest.Digest {
	t.Helper()
	d := digest.FromBytes(data)
	w, err := s.Create(d, mediaType)
	if err != nil {
		t.Fatal(err)
	}
	w.Write(data)
	if err := w.Commit(int64(len(data))); err != nil {
		t.Fatal(err)
	}
	return d
}

func dataPath(root string, d digest.Digest) string {
	return filepath.Join(root, "docker/registry/v2/blobs", string(d.Algorithm()), d.Encoded()[:2], d.Encoded(), "data")
}

// Eviction never goes ahead without knowing what is pinned: when the pinned
// content cannot be read, nothing is evicted and the failure is counted.
func TestEvictionStopsWhenPinsCannotBeRead(t *testing.T) {
	c, store, root := newTestCache(t, Config{MaxSize: 1000, HighWater: 0.5, LowWater: 0.1})
	pinnedLayer := putBlob(t, store, make([]byte, 300), "")
	manifest := fmt.Appendf(nil, `{"schemaVersion":2,"mediaType":%q,"config":{"digest":%q,"size":300},"layers":[]}`,
		ocispec.MediaTypeImageManifest, pinnedLayer)
	md := putBlob(t, store, manifest, ocispec.MediaTypeImageManifest)
	if err := store.AddPin(storage.Pin{Upstream: "u", Repo: "r", Ref: "1", Digest: md}); err != nil {
		t.Fatal(err)
	}
	free := putBlob(t, store, make([]byte, 400), "")

	// The pinned manifest's file is there but cannot be read.
	p := dataPath(root, md)
	os.Rename(p, p+".away")
	os.Mkdir(p, 0o755)
	c.evict()
	if b, n := store.Size(); n != 3 {
		t.Fatalf("evicted while the pins were unknown: %d blobs (%d bytes) left", n, b)
	}
	if n := testutil.ToFloat64(c.metrics.failed.WithLabelValues("evict")); n != 1 {
		t.Fatalf("failed evictions counted: %v", n)
	}

	os.Remove(p)
	os.Rename(p+".away", p)
	c.evict()
	if _, err := store.Blob(free); err == nil {
		t.Fatal("the unpinned blob was not evicted")
	}
	for _, d := range []digest.Digest{md, pinnedLayer} {
		if _, err := store.Blob(d); err != nil {
			t.Fatalf("pinned %s evicted: %v", d, err)
		}
	}
}

// Short of min_free (something else filled the filesystem), eviction makes
// that room and a tenth more out of the store, least recently used first,
// though the store is far under max_size.
func TestEvictionMakesRoomShortOfMinFree(t *testing.T) {
	var free atomic.Int64
	free.Store(1 << 30)
	store, err := storage.Open(t.TempDir(), storage.Options{MinFree: 64 << 20,
		Statfs: func() (uint64, uint64, error) { return uint64(free.Load()), 1 << 40, nil }})
	if err != nil {
		t.Fatal(err)
	}
	c, err := New(store, Config{MaxSize: 1 << 40, Registerer: prometheus.NewRegistry(), Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(t.Context()); free.Store(1 << 30); store.Close() })
	var blobs []digest.Digest
	for i := range 4 {
		blobs = append(blobs, putBlob(t, store, fmt.Appendf(nil, "%0400d", i), ""))
		time.Sleep(time.Millisecond) // distinct access times: the order eviction follows
	}
	free.Store(64<<20 - 500)          // 500 bytes short of min_free
	time.Sleep(20 * time.Millisecond) // past the store's cached reading of the free space
	c.evict()
	for i, d := range blobs {
		_, err := store.Blob(d)
		if gone := err != nil; gone != (i < 2) {
			t.Errorf("blob %d: evicted %v, want the two oldest gone (500 bytes and a tenth is two of 400)", i, gone)
		}
	}
	if n := testutil.ToFloat64(c.metrics.evicted.WithLabelValues("space")); n != 2 {
		t.Fatalf("evictions for space: %v", n)
	}
}
