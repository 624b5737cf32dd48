package proxy_test

import (
	"fmt"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/wharf-registry/wharf/cache"
	"github.com/wharf-registry/wharf/upstream/upstreamtest"
)

// Past storage.max_size the least recently used blobs go, pinned tags and
// blobs being read stay, and an evicted image is pulled again transparently.
func TestEvictionKeepsPinsAndReaders(t *testing.T) {
	t.Parallel()
	up := upstreamtest.New(t, upstreamtest.WithFilesystem(t.TempDir()))
	image := func(i, size int) upstreamtest.Image {
		l := upstreamtest.NewBlob(upstreamtest.Random(uint64(90+i), size))
		return up.PushLayers(t, fmt.Sprintf("team/app%d", i), "v1", []upstreamtest.Blob{l}, nil, amd64)
	}
	// app0 is pinned; app1's 32 MiB layer is being read when eviction runs
	// (too big to sit whole in socket buffers); app2-5 fill the store.
	imgs := []upstreamtest.Image{image(0, 100_000), image(1, 32<<20)}
	for i := 2; i < 6; i++ {
		imgs = append(imgs, image(i, 3<<20))
	}
	const maxSize = 40 << 20
	e := newEnvWith(t, t.TempDir(), cache.Config{MaxSize: maxSize, HighWater: 0.9, LowWater: 0.5,
		PinPatterns: []string{"docker.io/team/app0:v1"}}, spec{name: "docker.io", reg: up, def: true, ttl: time.Hour})

	pull(t, e, imgs[0].Repo, imgs[0], "")
	pull(t, e, imgs[1].Repo, imgs[1], "")
	l1 := imgs[1].Layers[0]
	reader, err := e.Client().Get(e.URL + "/v2/team/app1/blobs/" + l1.Digest.String())
	if err != nil {
		t.Fatal(err)
	}
	defer reader.Body.Close()
	if _, err := io.ReadFull(reader.Body, make([]byte, 10)); err != nil {
		t.Fatal(err)
	}
	for _, img := range imgs[2:] {
		pull(t, e, img.Repo, img, "")
	}
	e.cache.Close(t.Context()) // waits for eviction passes in flight
	if n := metric(t, e, "wharf_evictions_total"); n == 0 {
		t.Fatal("nothing evicted past max_size")
	}
	if b, _ := e.store.Size(); b > maxSize {
		t.Fatalf("store holds %d bytes, max %d", b, maxSize)
	}
	rest, err := io.ReadAll(reader.Body)
	if err != nil || len(rest) != len(l1.Data)-10 {
		t.Fatalf("reader cut short: %d bytes, %v", len(rest), err)
	}
	up.Reset()
	for _, b := range imgs[0].Blobs() { // pinned: still here
		e.get(t, "/v2/team/app0/blobs/"+b.Digest.String(), b.Data, b.Digest.String())
	}
	e.get(t, "/v2/team/app1/blobs/"+l1.Digest.String(), l1.Data, l1.Digest.String()) // was being read
	wantCounts(t, up, map[string]int{})

	// app2 was the least recently used unpinned image: evicted, and pulled
	// again without the client noticing.
	pull(t, e, imgs[2].Repo, imgs[2], "")
	if up.Count(http.MethodGet, "blob") == 0 {
		t.Fatal("app2 was expected to have been evicted")
	}
}
