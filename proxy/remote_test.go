package proxy_test

import (
	"bytes"
	"net/http"
	"os"
	"testing"
	"time"

	"github.com/wharf-registry/wharf/cache"
	"github.com/wharf-registry/wharf/replicate"
	"github.com/wharf-registry/wharf/storage"
	"github.com/wharf-registry/wharf/storage/s3test"
	"github.com/wharf-registry/wharf/upstream/upstreamtest"
)

// Wharfs that share a bucket fetch each blob from upstream once between
// them: the first uploads every verified blob and manifest in
// distribution's layout; a second, on an empty disk, fills from the
// bucket, Range requests included; with the bucket gone, a third still
// serves, from upstream.
func TestWharfsSharingABucket(t *testing.T) {
	s3 := s3test.Start(t)
	up := upstreamtest.New(t)
	img := up.PushImage(t, "library/app", "1", 81, 3, 300_000, amd64)
	replica := func() *env {
		r, err := storage.OpenRemote(t.Context(), "s3", s3.Params())
		if err != nil {
			t.Fatal(err)
		}
		return newEnvFull(t, t.TempDir(), storage.Options{Remote: r}, cache.Config{}, replicate.Config{}, "", nil, nil,
			spec{name: "docker.io", reg: up, def: true, ttl: time.Hour})
	}

	// A fill uploads after its client has every byte.
	settled := func(e *env) {
		t.Helper()
		if n := settle(func() int { return int(metric(t, e, "wharf_fills_in_flight")) }, 0); n != 0 {
			t.Fatalf("%d fills still running", n)
		}
	}
	up.Reset()
	first := replica()
	pull(t, first, "app", img, "")
	settled(first)
	wantCounts(t, up, map[string]int{"HEAD manifest": 1, "GET manifest": 1, "GET blob": 4})
	for _, b := range append(img.Blobs(), img.Manifest) {
		key := "/docker/registry/v2/blobs/sha256/" + b.Digest.Encoded()[:2] + "/" + b.Digest.Encoded() + "/data"
		if got, err := os.ReadFile(s3.ObjectFile(key)); err != nil || !bytes.Equal(got, b.Data) {
			t.Fatalf("%s in the bucket: %v, %d bytes of %d", b.Digest, err, len(got), len(b.Data))
		}
	}

	// A second replica, empty disk: the manifest from upstream (tags and
	// manifests are each replica's own), every blob from the bucket.
	up.Reset()
	second := replica()
	pull(t, second, "app", img, "")
	settled(second)
	wantCounts(t, up, map[string]int{"HEAD manifest": 1, "GET manifest": 1})
	if n := metric(t, second, "wharf_remote_lookups_total"); n != 4 {
		t.Fatalf("bucket hits: %v, want 4", n)
	}

	// A third: a Range request of a layer it never held.
	up.Reset()
	third := replica()
	third.get(t, "/v2/app/manifests/"+img.Manifest.Digest.String(), img.Manifest.Data, img.Manifest.Digest.String())
	l := img.Layers[1]
	r := third.do(t, http.MethodGet, "/v2/app/blobs/"+l.Digest.String(), "Range", "bytes=1000-1999")
	if r.status != http.StatusPartialContent || !bytes.Equal(r.body, l.Data[1000:2000]) {
		t.Fatalf("Range from the bucket: %d, %d bytes", r.status, len(r.body))
	}
	wantCounts(t, up, map[string]int{"GET manifest": 1})

	// The bucket gone: a fresh replica serves from upstream, and stores
	// nothing it could not put in the bucket.
	s3.Stop()
	up.Reset()
	fourth := replica()
	pull(t, fourth, "app", img, "")
	settled(fourth)
	wantCounts(t, up, map[string]int{"HEAD manifest": 1, "GET manifest": 1, "GET blob": 4})
	if n := metric(t, fourth, "wharf_remote_lookups_total"); n != 4 {
		t.Fatalf("bucket lookups that failed: %v, want 4", n)
	}
}
