package proxy_test

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/wharf-registry/wharf/cache"
	"github.com/wharf-registry/wharf/upstream/upstreamtest"
)

var amd64 = ocispec.Platform{OS: "linux", Architecture: "amd64"}

// pull does what containerd does: HEAD the tag, GET the manifest by digest,
// GET every blob; and checks every byte and header on the way.
func pull(t *testing.T, e *env, name string, img upstreamtest.Image, query string) {
	t.Helper()
	mpath := "/v2/" + name + "/manifests/"
	r := e.do(t, http.MethodHead, mpath+img.Tag+query, "Accept", ocispec.MediaTypeImageManifest)
	if r.status != http.StatusOK || r.header.Get("Docker-Content-Digest") != img.Manifest.Digest.String() ||
		r.header.Get("Content-Length") != strconv.Itoa(len(img.Manifest.Data)) || r.header.Get("Content-Type") != img.MediaType {
		t.Fatalf("HEAD %s%s: %d %v", mpath, img.Tag, r.status, r.header)
	}
	r = e.get(t, mpath+img.Manifest.Digest.String()+query, img.Manifest.Data, img.Manifest.Digest.String())
	if r.header.Get("Etag") != `"`+img.Manifest.Digest.String()+`"` || r.header.Get("Content-Type") != img.MediaType {
		t.Fatalf("manifest headers: %v", r.header)
	}
	for _, b := range img.Blobs() {
		r := e.get(t, "/v2/"+name+"/blobs/"+b.Digest.String()+query, b.Data, b.Digest.String())
		if r.header.Get("Content-Length") != strconv.Itoa(len(b.Data)) {
			t.Fatalf("blob Content-Length %q, want %d", r.header.Get("Content-Length"), len(b.Data))
		}
	}
}

func TestPullImageColdThenWarm(t *testing.T) {
	t.Parallel()
	up := upstreamtest.New(t)
	img := up.PushImage(t, "library/app", "1.0", 1, 3, 64<<10, amd64)
	up.Reset()
	e := newEnv(t, t.TempDir(), spec{name: "docker.io", reg: up, def: true, ttl: time.Hour})

	pull(t, e, "app", img, "")
	// The HEAD of a cold tag is an upstream HEAD (which Docker Hub does not
	// count as a pull), the GET by digest fetches the manifest once, and
	// each blob is fetched exactly once.
	wantCounts(t, up, map[string]int{"HEAD manifest": 1, "GET manifest": 1, "GET blob": 4})

	up.Reset()
	pull(t, e, "library/app", img, "?ns=docker.io")
	pull(t, e, "docker.io/library/app", img, "")
	wantCounts(t, up, map[string]int{})
}

func TestPullIndexColdThenWarm(t *testing.T) {
	t.Parallel()
	up := upstreamtest.New(t)
	a := up.PushImage(t, "org/multi", "", 2, 2, 16<<10, amd64)
	b := up.PushImage(t, "org/multi", "", 3, 2, 16<<10, ocispec.Platform{OS: "linux", Architecture: "arm64"})
	idx := up.PushIndex(t, "org/multi", "v1", a, b)
	up.Reset()
	e := newEnv(t, t.TempDir(), spec{name: "ghcr.io", reg: up, ttl: time.Hour})

	pullIndex := func() {
		r := e.get(t, "/v2/org/multi/manifests/v1?ns=ghcr.io", idx.Manifest.Data, idx.Manifest.Digest.String())
		if r.header.Get("Content-Type") != ocispec.MediaTypeImageIndex || r.header.Get("OCI-Namespace") != "ghcr.io" {
			t.Fatalf("index headers: %v", r.header)
		}
		for _, img := range idx.Images {
			img.Tag = img.Manifest.Digest.String()
			pull(t, e, "org/multi", img, "?ns=ghcr.io")
		}
	}
	pullIndex()
	// Index by tag, then each child: HEAD by digest is a miss (an upstream
	// HEAD), then its GET; blobs once.
	wantCounts(t, up, map[string]int{"GET manifest": 3, "HEAD manifest": 2, "GET blob": 6})
	up.Reset()
	pullIndex()
	wantCounts(t, up, map[string]int{})
}

func TestRestartServesFromStore(t *testing.T) {
	t.Parallel()
	up := upstreamtest.New(t)
	img := up.PushImage(t, "library/app", "1.0", 4, 2, 32<<10, amd64)
	root := t.TempDir()
	e := newEnv(t, root, spec{name: "docker.io", reg: up, def: true, ttl: time.Hour})
	pull(t, e, "app", img, "")
	e.close()

	up.Reset()
	e = newEnv(t, root, spec{name: "docker.io", reg: up, def: true, ttl: time.Hour})
	pull(t, e, "app", img, "")
	wantCounts(t, up, map[string]int{})
	if n := e.do(t, http.MethodGet, "/v2/_catalog"); string(n.body) != `{"repositories":["library/app"]}` {
		t.Fatalf("catalog after restart: %s", n.body)
	}
}

func TestTagMovesAfterTTL(t *testing.T) {
	t.Parallel()
	up := upstreamtest.New(t)
	v1 := up.PushImage(t, "org/app", "stable", 5, 1, 1024, amd64)
	// Two upstream entries over the same registry: one trusts tags for an
	// hour, the other revalidates every time (ttl 0), so both sides of the
	// TTL are observable without waiting.
	e := newEnv(t, t.TempDir(),
		spec{name: "slow.example", reg: up, ttl: time.Hour},
		spec{name: "fast.example", reg: up, ttl: 0})
	for _, ns := range []string{"slow.example", "fast.example"} {
		e.get(t, "/v2/org/app/manifests/stable?ns="+ns, v1.Manifest.Data, v1.Manifest.Digest.String())
	}
	v2 := up.PushImage(t, "org/app", "stable", 6, 1, 1024, amd64)
	up.Reset()

	e.get(t, "/v2/org/app/manifests/stable?ns=slow.example", v1.Manifest.Data, v1.Manifest.Digest.String())
	wantCounts(t, up, map[string]int{})

	e.get(t, "/v2/org/app/manifests/stable?ns=fast.example", v2.Manifest.Data, v2.Manifest.Digest.String())
	wantCounts(t, up, map[string]int{"HEAD manifest": 1, "GET manifest": 1})

	up.Reset()
	e.get(t, "/v2/org/app/manifests/stable?ns=fast.example", v2.Manifest.Data, v2.Manifest.Digest.String())
	wantCounts(t, up, map[string]int{"HEAD manifest": 1})

	// The old digest stays pullable, from the store.
	up.Reset()
	e.get(t, "/v2/org/app/manifests/"+v1.Manifest.Digest.String()+"?ns=fast.example", v1.Manifest.Data, v1.Manifest.Digest.String())
	wantCounts(t, up, map[string]int{})
}

func TestRouting(t *testing.T) {
	t.Parallel()
	hub := upstreamtest.New(t)
	ghcr := upstreamtest.New(t)
	hubImg := hub.PushImage(t, "org/app", "1", 7, 1, 2048, amd64)
	ghcrImg := ghcr.PushImage(t, "org/app", "1", 8, 1, 2048, amd64)
	alpine := hub.PushImage(t, "library/alpine", "3", 9, 1, 2048, amd64)
	hub.Reset()
	ghcr.Reset()
	e := newEnv(t, t.TempDir(),
		spec{name: "docker.io", reg: hub, aliases: []string{"index.docker.io"}, def: true, ttl: time.Hour},
		spec{name: "ghcr.io", reg: ghcr, ttl: time.Hour})

	cases := []struct {
		path string
		img  upstreamtest.Image
		ns   string
	}{
		{"/v2/org/app/manifests/1", hubImg, ""},
		{"/v2/org/app/manifests/1?ns=docker.io", hubImg, "docker.io"},
		{"/v2/org/app/manifests/1?ns=index.docker.io", hubImg, "index.docker.io"},
		{"/v2/org/app/manifests/1?ns=ghcr.io", ghcrImg, "ghcr.io"},
		{"/v2/ghcr.io/org/app/manifests/1", ghcrImg, ""},
		{"/v2/ghcr.io/org/app/manifests/1?ns=ghcr.io", ghcrImg, "ghcr.io"}, // containerd override_path
		{"/v2/docker.io/org/app/manifests/1", hubImg, ""},
		{"/v2/alpine/manifests/3", alpine, ""},
		{"/v2/alpine/manifests/3?ns=docker.io", alpine, "docker.io"},
	}
	for _, c := range cases {
		r := e.get(t, c.path, c.img.Manifest.Data, c.img.Manifest.Digest.String())
		if got := r.header.Get("OCI-Namespace"); got != c.ns {
			t.Errorf("%s: OCI-Namespace %q, want %q", c.path, got, c.ns)
		}
	}
	// The namespace header works like ?ns=.
	r := e.do(t, http.MethodGet, "/v2/org/app/manifests/1", "OCI-Namespace", "ghcr.io")
	if r.header.Get("Docker-Content-Digest") != ghcrImg.Manifest.Digest.String() {
		t.Fatalf("OCI-Namespace header routing: %d %v", r.status, r.header)
	}
	wantCounts(t, hub, map[string]int{"GET manifest": 2})
	wantCounts(t, ghcr, map[string]int{"GET manifest": 1})

	// An unknown namespace is a configuration key that does not exist: no
	// traffic anywhere, never a host to dial.
	hub.Reset()
	ghcr.Reset()
	for _, ns := range []string{"evil.example.com", "127.0.0.1:1", ghcr.Host()} {
		wantError(t, e.do(t, http.MethodGet, "/v2/org/app/manifests/1?ns="+ns), http.StatusNotFound, "NAME_UNKNOWN")
	}
	wantCounts(t, hub, map[string]int{})
	wantCounts(t, ghcr, map[string]int{})
}

func TestNoDefaultUpstream(t *testing.T) {
	t.Parallel()
	up := upstreamtest.New(t)
	e := newEnv(t, t.TempDir(), spec{name: "ghcr.io", reg: up, ttl: time.Hour})
	wantError(t, e.do(t, http.MethodGet, "/v2/org/app/manifests/1"), http.StatusNotFound, "NAME_UNKNOWN")
	wantCounts(t, up, map[string]int{})
}

func TestPullManyImagesCounts(t *testing.T) {
	t.Parallel()
	up := upstreamtest.New(t)
	var imgs []upstreamtest.Image
	for i := range 5 {
		imgs = append(imgs, up.PushImage(t, fmt.Sprintf("team/svc%d", i), "v1", uint64(100+i), 2, 4096, amd64))
	}
	up.Reset()
	e := newEnv(t, t.TempDir(), spec{name: "docker.io", reg: up, def: true, ttl: time.Hour})
	for _, img := range imgs {
		pull(t, e, img.Repo, img, "")
	}
	wantCounts(t, up, map[string]int{"HEAD manifest": 5, "GET manifest": 5, "GET blob": 15})
}

// The index is lost (a crash between a blob's rename and its index write,
// taken to the extreme): verified files on disk are adopted, not fetched
// again; only what the files cannot tell (tags) goes upstream.
func TestLostIndexAdoptsVerifiedFiles(t *testing.T) {
	t.Parallel()
	up := upstreamtest.New(t)
	img := up.PushImage(t, "library/app", "1", 64, 2, 32<<10, amd64)
	root := t.TempDir()
	e := newEnv(t, root, spec{name: "docker.io", reg: up, def: true, ttl: time.Hour})
	pull(t, e, "app", img, "")
	e.close()
	if err := os.RemoveAll(filepath.Join(root, "index")); err != nil {
		t.Fatal(err)
	}
	up.Reset()
	e = newEnv(t, root, spec{name: "docker.io", reg: up, def: true, ttl: time.Hour})
	pull(t, e, "app", img, "")
	// The tag is asked again (a HEAD), and membership of this repository
	// is proven by it and the manifest it names: no blob and no by-digest
	// request goes upstream.
	wantCounts(t, up, map[string]int{"HEAD manifest": 1})
}

// clock is a settable time for tag TTL tests.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time      { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) { c.mu.Lock(); c.t = c.t.Add(d); c.mu.Unlock() }

// A tag is trusted for exactly its TTL; once stale, any number of
// concurrent requests for it cost upstream one HEAD.
func TestStaleTagRevalidatedOnceAfterTTL(t *testing.T) {
	t.Parallel()
	up := upstreamtest.New(t)
	v1 := up.PushImage(t, "org/app", "stable", 65, 1, 1024, amd64)
	clk := &clock{t: time.Unix(1_000_000, 0)}
	var inflight atomic.Int32
	// The held HEAD must not time out (nor the revalidation give up) while
	// the clients arrive, however loaded the machine.
	e := newEnvWith(t, t.TempDir(), cache.Config{Now: clk.now}, spec{name: "docker.io", reg: up, def: true, ttl: time.Minute,
		headers: time.Minute, stale: time.Minute})
	e.Config.Handler = countInflight(e.Config.Handler, &inflight)
	e.get(t, "/v2/org/app/manifests/stable", v1.Manifest.Data, v1.Manifest.Digest.String())

	up.Reset()
	clk.add(59 * time.Second)
	e.get(t, "/v2/org/app/manifests/stable", v1.Manifest.Data, v1.Manifest.Digest.String())
	wantCounts(t, up, map[string]int{}) // within the TTL

	v2 := up.PushImage(t, "org/app", "stable", 66, 1, 1024, amd64)
	up.Reset()
	clk.add(2 * time.Second) // stale now
	const clients = 16
	// Hold the first HEAD until every client is inside Wharf.
	up.SetHook(func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method == http.MethodHead {
			deadline := time.Now().Add(30 * time.Second)
			for inflight.Load() < clients && time.Now().Before(deadline) {
				time.Sleep(time.Millisecond) // polling a condition, bounded
			}
		}
		return false
	})
	var wg sync.WaitGroup
	for range clients {
		wg.Go(func() { e.get(t, "/v2/org/app/manifests/stable", v2.Manifest.Data, v2.Manifest.Digest.String()) })
	}
	wg.Wait()
	wantCounts(t, up, map[string]int{"HEAD manifest": 1, "GET manifest": 1})
}

func countInflight(h http.Handler, n *atomic.Int32) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n.Add(1)
		defer n.Add(-1)
		h.ServeHTTP(w, r)
	})
}
