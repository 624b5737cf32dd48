package proxy_test

import (
	"errors"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/wharf-registry/wharf/storage"
	"github.com/wharf-registry/wharf/upstream/upstreamtest"
)

// The store's blob filesystem fills up mid-blob: every client still gets the
// whole, verified blob (from upstream), nothing partial is kept or indexed,
// and the server goes on serving.
func TestDiskFullFallsBackToPassThrough(t *testing.T) {
	t.Parallel()
	root, blobsFS := smallDisk(t)

	up := upstreamtest.New(t)
	img := up.PushImage(t, "library/app", "1", 26, 1, 3<<20, amd64) // 3 MiB layer, 1 MiB disk
	e := newEnv(t, root, spec{name: "docker.io", reg: up, def: true, ttl: time.Hour})
	l := img.Layers[0]

	e.getAll(t, 3, "/v2/library/app/blobs/"+l.Digest.String(), l.Data)
	e.cache.Close(t.Context())
	if _, err := e.store.Blob(l.Digest); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("a blob that did not fit was indexed: %v", err)
	}
	if ents, _ := os.ReadDir(filepath.Join(blobsFS, "registry", "v2", "tmp")); len(ents) != 0 {
		t.Fatalf("%d temp files left on the full disk", len(ents))
	}
	if n := metric(t, e, "wharf_fill_passthrough_total"); n < 1 {
		t.Fatalf("pass-through not counted: %v", n)
	}
	// Still healthy: small content fits and is served and stored.
	e.get(t, "/v2/library/app/manifests/1", img.Manifest.Data, img.Manifest.Digest.String())
	e.get(t, "/v2/library/app/blobs/"+img.Config.Digest.String(), img.Config.Data, img.Config.Digest.String())
	e.cache.Close(t.Context()) // the client is served before the commit
	if _, err := e.store.Blob(img.Config.Digest); err != nil {
		t.Fatalf("config not stored after the disk-full episode: %v", err)
	}
}

// The same with an upstream that sends the blob without a length: the
// pass-through takes the length the manifest gave.
func TestDiskFullPassesThroughABlobWithoutLength(t *testing.T) {
	t.Parallel()
	root, _ := smallDisk(t)

	up := upstreamtest.New(t)
	img := up.PushImage(t, "library/app", "1", 27, 1, 3<<20, amd64) // 3 MiB layer, 1 MiB disk
	l := img.Layers[0]
	up.SetHook(func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method != http.MethodGet || r.URL.Path != "/v2/library/app/blobs/"+l.Digest.String() {
			return false
		}
		for b := l.Data; len(b) > 0; b = b[min(len(b), 64<<10):] {
			w.Write(b[:min(len(b), 64<<10)])
			w.(http.Flusher).Flush() // no Content-Length: chunked
		}
		return true
	})
	e := newEnv(t, root, spec{name: "docker.io", reg: up, def: true, ttl: time.Hour})
	e.get(t, "/v2/library/app/manifests/1", img.Manifest.Data, img.Manifest.Digest.String())
	e.get(t, "/v2/library/app/blobs/"+l.Digest.String(), l.Data, l.Digest.String())
	if n := metric(t, e, "wharf_fill_passthrough_total"); n < 1 {
		t.Fatalf("pass-through not counted: %v", n)
	}
}

// smallDisk is a store root whose blob filesystem is a 1 MiB tmpfs, and
// that filesystem's mount point.
func smallDisk(t *testing.T) (root, blobsFS string) {
	upstreamtest.NeedRoot(t, "mounting a small tmpfs")
	root = t.TempDir()
	blobsFS = filepath.Join(root, "docker")
	os.MkdirAll(blobsFS, 0o755)
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", blobsFS).CombinedOutput(); err != nil {
		t.Fatalf("mount tmpfs (root, but the kernel refused): %v %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", blobsFS).Run() })
	return root, blobsFS
}
