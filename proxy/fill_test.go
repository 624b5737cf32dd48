package proxy_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/wharf-registry/wharf/upstream/upstreamtest"
)

// N concurrent cold pulls of one image: one upstream GET per manifest and
// blob, every client byte-exact.
func TestConcurrentColdPullsOfAnImage(t *testing.T) {
	t.Parallel()
	for _, clients := range []int{8, 32} {
		t.Run(strconv.Itoa(clients), func(t *testing.T) {
			up := upstreamtest.New(t)
			img := up.PushImage(t, "library/app", "1", 70, 3, 256<<10, amd64)
			up.Reset()
			e := newEnv(t, t.TempDir(), spec{name: "docker.io", reg: up, def: true, ttl: time.Hour})
			var wg sync.WaitGroup
			for range clients {
				wg.Go(func() { pull(t, e, "app", img, "") })
			}
			wg.Wait()
			wantCounts(t, up, map[string]int{"HEAD manifest": 1, "GET manifest": 1, "GET blob": 4})
		})
	}
}

// gate holds an upstream blob response after half its bytes until released.
func gate(l upstreamtest.Blob) (hook func(http.ResponseWriter, *http.Request) bool, release func()) {
	ch := make(chan struct{})
	var once sync.Once
	return func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method != http.MethodGet || !strings.HasSuffix(r.URL.Path, l.Digest.String()) {
			return false
		}
		half := len(l.Data) / 2
		w.Header().Set("Content-Length", strconv.Itoa(len(l.Data)))
		w.Write(l.Data[:half])
		w.(http.Flusher).Flush()
		<-ch
		w.Write(l.Data[half:])
		return true
	}, func() { once.Do(func() { close(ch) }) }
}

// While a fill is stalled half way, Range requests inside the landed half
// are answered at once, slow and vanished clients block nobody, and nobody
// goes upstream on their own.
func TestReadersOfAFillInProgress(t *testing.T) {
	t.Parallel()
	up := upstreamtest.New(t)
	img := up.PushImage(t, "library/app", "1", 71, 1, 400_000, amd64)
	l := img.Layers[0]
	hook, release := gate(l)
	t.Cleanup(release)
	up.SetHook(hook)
	up.Reset()
	e := newEnv(t, t.TempDir(), spec{name: "docker.io", reg: up, def: true, ttl: time.Hour})
	path := e.URL + "/v2/library/app/blobs/" + l.Digest.String()

	// A client that reads one byte and then stops reading.
	slow, err := e.Client().Get(path)
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Body.Close()
	one := make([]byte, 1)
	if _, err := io.ReadFull(slow.Body, one); err != nil || one[0] != l.Data[0] {
		t.Fatalf("first byte: %v", err)
	}
	// A client that reads a little and disconnects.
	gone, err := e.Client().Get(path)
	if err != nil {
		t.Fatal(err)
	}
	io.ReadFull(gone.Body, make([]byte, 100))
	gone.Body.Close()

	// Range inside the half that has landed: served while upstream stalls.
	req, _ := http.NewRequest("GET", path, nil)
	req.Header.Set("Range", "bytes=1000-9999")
	resp, err := e.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	want := fmt.Sprintf("bytes 1000-9999/%d", len(l.Data))
	if resp.StatusCode != 206 || resp.Header.Get("Content-Range") != want || !bytes.Equal(got, l.Data[1000:10000]) {
		t.Fatalf("mid-fill Range: %d %q", resp.StatusCode, resp.Header.Get("Content-Range"))
	}

	// A full reader finishes once upstream goes on, though the slow client
	// still has not read its second byte.
	release()
	e.get(t, "/v2/library/app/blobs/"+l.Digest.String(), l.Data, l.Digest.String())
	if n := up.Count("GET", "blob"); n != 1 {
		t.Fatalf("%d upstream GETs for one blob", n)
	}
	rest, err := io.ReadAll(slow.Body)
	if err != nil || !bytes.Equal(append(one, rest...), l.Data) {
		t.Fatalf("slow client: %v, %d bytes", err, len(rest)+1)
	}
}

// A connection that breaks at 40 % is resumed with a Range request; the
// client sees one clean, verified stream.
func TestBrokenFillResumes(t *testing.T) {
	t.Parallel()
	up := upstreamtest.New(t)
	img := up.PushImage(t, "library/app", "1", 72, 1, 500_000, amd64)
	l := img.Layers[0]
	var mu sync.Mutex
	broken := false
	up.SetHook(func(w http.ResponseWriter, r *http.Request) bool {
		mu.Lock()
		defer mu.Unlock()
		if broken || r.Method != "GET" || !strings.Contains(r.URL.Path, "/blobs/") {
			return false
		}
		broken = true
		w.Header().Set("Content-Length", strconv.Itoa(len(l.Data)))
		w.Write(l.Data[:len(l.Data)*4/10])
		w.(http.Flusher).Flush()
		panic(http.ErrAbortHandler) // cut the connection
	})
	up.Reset()
	e := newEnv(t, t.TempDir(), spec{name: "docker.io", reg: up, def: true, ttl: time.Hour})
	e.get(t, "/v2/library/app/blobs/"+l.Digest.String(), l.Data, l.Digest.String())
	reqs := up.Requests()
	if len(reqs) != 2 || reqs[0].Range != "" || reqs[1].Range != fmt.Sprintf("bytes=%d-", len(l.Data)*4/10) {
		t.Fatalf("upstream requests: %+v", reqs)
	}
	if n := metric(t, e, "wharf_fills_resumed_total"); n != 1 {
		t.Fatalf("resumed metric: %v", n)
	}
	up.Reset()
	e.get(t, "/v2/library/app/blobs/"+l.Digest.String(), l.Data, l.Digest.String())
	wantCounts(t, up, map[string]int{})
}

// A client following a fill gets the bytes as they land but the last one
// landed, and the blob's last waits for the digest: when the blob turns
// out corrupt, the client is cut off short of the end, whichever path
// (sendfile or copying) served it.
func TestFollowerOfACorruptFillNeverCompletes(t *testing.T) {
	t.Parallel()
	up := upstreamtest.New(t)
	img := up.PushImage(t, "library/app", "1", 73, 1, 300_000, amd64)
	l := img.Layers[0]
	corrupt := upstreamtest.Blob{Digest: l.Digest, Data: bytes.Clone(l.Data)}
	corrupt.Data[len(corrupt.Data)-1] ^= 0xff // only the last byte is wrong
	hook, release := gate(corrupt)
	t.Cleanup(release)
	up.SetHook(hook)
	e := newEnv(t, t.TempDir(), spec{name: "docker.io", reg: up, def: true, ttl: time.Hour})
	resp, err := e.Client().Get(e.URL + "/v2/library/app/blobs/" + l.Digest.String())
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	half := make([]byte, len(l.Data)/2-1)
	if _, err := io.ReadFull(resp.Body, half); err != nil || !bytes.Equal(half, l.Data[:len(half)]) {
		t.Fatalf("the landed half: %v", err)
	}
	release()
	rest, err := io.ReadAll(resp.Body)
	got := append(half, rest...)
	if err == nil || len(got) >= len(l.Data) || !bytes.Equal(got, l.Data[:len(got)]) {
		t.Fatalf("after the corrupt end: %d of %d bytes, %v; want fewer, all right, and a broken body", len(got), len(l.Data), err)
	}
}

// endlessBlob is an upstream hook for GETs of blob l of library/app: with
// lie set, a Content-Length one byte longer than the blob and that many
// bytes; else no length, the blob, then junk without end (64 MiB here).
func endlessBlob(l upstreamtest.Blob, lie *atomic.Bool) func(http.ResponseWriter, *http.Request) bool {
	return func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method != http.MethodGet || r.URL.Path != "/v2/library/app/blobs/"+l.Digest.String() {
			return false
		}
		if lie.Load() {
			w.Header().Set("Content-Length", strconv.Itoa(len(l.Data)+1))
			w.Write(append(bytes.Clone(l.Data), 0))
			return true
		}
		w.Write(l.Data)
		junk := make([]byte, 32<<10)
		for range 2048 {
			w.(http.Flusher).Flush()
			if _, err := w.Write(junk); err != nil {
				break
			}
		}
		return true
	}
}

// A blob whose upstream sends no length is served once its fill ends;
// when it fails to verify there, the client gets an OCI error, not
// http.ServeContent's plain-text 500.
func TestBlobWithoutLengthThatFails(t *testing.T) {
	t.Parallel()
	up := upstreamtest.New(t)
	img := up.PushImage(t, "library/app", "1", 74, 1, 100_000, amd64)
	up.SetHook(endlessBlob(img.Layers[0], new(atomic.Bool)))
	e := newEnv(t, t.TempDir(), spec{name: "docker.io", reg: up, def: true, ttl: time.Hour})
	wantError(t, e.do(t, http.MethodGet, "/v2/library/app/blobs/"+img.Layers[0].Digest.String()), http.StatusBadGateway, "UNKNOWN")
}

// A blob is as long as the manifest that names it says. A body without a
// length that goes on past that is read no further, and a length that
// contradicts the manifest is refused before the body is read: neither
// fills the disk, nor pushes out what the store holds, with bytes no
// client could use. Both ways: the client's own fill, after the manifest,
// and the eager fill the manifest starts.
func TestUpstreamBodyBeyondTheManifest(t *testing.T) {
	t.Parallel()
	for _, eager := range []bool{false, true} {
		t.Run(fmt.Sprintf("eager=%v", eager), func(t *testing.T) {
			up := upstreamtest.New(t)
			img := up.PushImage(t, "library/app", "1", 74, 1, 100_000, amd64)
			l := img.Layers[0]
			path := "/v2/library/app/blobs/" + l.Digest.String()
			var lie atomic.Bool
			up.SetHook(endlessBlob(l, &lie))
			e := newEnv(t, t.TempDir(), spec{name: "docker.io", reg: up, def: true, ttl: time.Hour, eager: eager})
			filled := len(l.Data)
			if eager {
				filled += len(img.Config.Data)
			}

			e.get(t, "/v2/library/app/manifests/1", img.Manifest.Data, img.Manifest.Digest.String())
			r := e.get(t, path, l.Data, l.Digest.String())
			if got := r.header.Get("Content-Length"); got != strconv.Itoa(len(l.Data)) {
				t.Fatalf("Content-Length %q, want the manifest's %d", got, len(l.Data))
			}
			e.cache.Close(t.Context())
			if n := metric(t, e, "wharf_filled_bytes_total"); n != float64(filled) {
				t.Fatalf("%v bytes written to the store, want %d", n, filled)
			}

			lie.Store(true)
			e = newEnv(t, t.TempDir(), spec{name: "docker.io", reg: up, def: true, ttl: time.Hour, eager: eager})
			e.get(t, "/v2/library/app/manifests/1", img.Manifest.Data, img.Manifest.Digest.String())
			wantError(t, e.do(t, http.MethodGet, path), http.StatusBadGateway, "UNKNOWN")
			e.cache.Close(t.Context())
			if n := metric(t, e, "wharf_filled_bytes_total"); n != float64(filled-len(l.Data)) {
				t.Fatalf("%v bytes written to the store, want %d: none of the refused blob", n, filled-len(l.Data))
			}
			if n := metric(t, e, "wharf_fill_failures_total", "reason", "digest"); n < 1 {
				t.Fatalf("refusal not counted: %v", n)
			}
		})
	}
}

// A repository's manifest bounds only its own fills. evil/app's manifest
// gives library/app's layer one byte less: evil/app's fill is refused when
// upstream announces the true length, or fails its digest where upstream
// sends none, and a library/app client that joined that fill fetches the
// blob through its own repository.
func TestAnotherRepositorysManifestFailsOnlyItsFill(t *testing.T) {
	t.Parallel()
	for _, chunked := range []bool{false, true} {
		t.Run(fmt.Sprintf("chunked=%v", chunked), func(t *testing.T) { anotherRepositorysManifest(t, chunked) })
	}
}

func anotherRepositorysManifest(t *testing.T, chunked bool) {
	up := upstreamtest.New(t)
	img := up.PushImage(t, "library/app", "1", 75, 1, 100_000, amd64)
	l := img.Layers[0]
	up.PushBlob(t, "evil/app", l)
	var m ocispec.Manifest
	if err := json.Unmarshal(img.Manifest.Data, &m); err != nil {
		t.Fatal(err)
	}
	m.Layers[0].Size--
	data, _ := json.Marshal(m)
	evil := upstreamtest.NewBlob(data)
	asked, joined, release := make(chan struct{}), make(chan struct{}), make(chan struct{})
	var askedOnce, joinedOnce sync.Once
	up.SetHook(func(w http.ResponseWriter, r *http.Request) bool {
		switch {
		case r.URL.Path == "/v2/evil/app/manifests/1":
			w.Header().Set("Content-Type", ocispec.MediaTypeImageManifest)
			w.Header().Set("Docker-Content-Digest", evil.Digest.String())
			w.Header().Set("Content-Length", strconv.Itoa(len(evil.Data)))
			if r.Method == http.MethodGet {
				w.Write(evil.Data)
			}
			return true
		case r.Method == http.MethodGet && r.URL.Path == "/v2/evil/app/blobs/"+l.Digest.String() && chunked:
			w.Write(l.Data[:len(l.Data)/2])
			w.(http.Flusher).Flush()
			askedOnce.Do(func() { close(asked) })
			<-release
			w.Write(l.Data[len(l.Data)/2:])
			return true
		case r.Method == http.MethodGet && r.URL.Path == "/v2/evil/app/blobs/"+l.Digest.String():
			askedOnce.Do(func() { close(asked) })
			<-release
		case r.Method == http.MethodHead && r.URL.Path == "/v2/library/app/blobs/"+l.Digest.String():
			joinedOnce.Do(func() { close(joined) }) // library/app's client found the fill: is this repository's?
		}
		return false
	})
	t.Cleanup(func() {
		select {
		case <-release:
		default:
			close(release)
		}
	})
	e := newEnv(t, t.TempDir(), spec{name: "docker.io", reg: up, def: true, ttl: time.Hour})
	e.get(t, "/v2/evil/app/manifests/1", evil.Data, evil.Digest.String())

	type result struct {
		status int
		body   []byte
		err    error
	}
	get := func(path string, out chan<- result) {
		resp, err := e.Client().Get(e.URL + path)
		if err != nil {
			out <- result{err: err}
			return
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		out <- result{resp.StatusCode, body, err}
	}
	evilGot, libGot := make(chan result, 1), make(chan result, 1)
	go get("/v2/evil/app/blobs/"+l.Digest.String(), evilGot)
	<-asked
	go get("/v2/library/app/blobs/"+l.Digest.String(), libGot)
	<-joined
	close(release)

	if r := <-evilGot; r.err != nil || r.status != http.StatusBadGateway {
		t.Fatalf("evil/app: %d %s %v, want 502", r.status, r.body, r.err)
	}
	if r := <-libGot; r.err != nil || r.status != http.StatusOK || !bytes.Equal(r.body, l.Data) {
		t.Fatalf("library/app: %d, %d bytes, %v; want 200 and the layer", r.status, len(r.body), r.err)
	}
	if n := up.Count("GET", "blob"); n != 2 {
		t.Fatalf("%d upstream GETs of the layer, want 2: evil/app's and library/app's own", n)
	}
}
