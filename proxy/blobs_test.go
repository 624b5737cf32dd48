package proxy_test

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wharf-registry/wharf/upstream/upstreamtest"
)

func TestColdBlobHeadNeverDownloads(t *testing.T) {
	t.Parallel()
	up := upstreamtest.New(t)
	img := up.PushImage(t, "library/app", "1", 40, 1, 50_000, amd64)
	up.Reset()
	e := newEnv(t, t.TempDir(), spec{name: "docker.io", reg: up, def: true, ttl: time.Hour})
	l := img.Layers[0]
	r := e.do(t, "HEAD", "/v2/app/blobs/"+l.Digest.String())
	if r.status != 200 || r.header.Get("Content-Length") != strconv.Itoa(len(l.Data)) || r.header.Get("Docker-Content-Digest") != l.Digest.String() {
		t.Fatalf("HEAD cold blob: %d %v", r.status, r.header)
	}
	wantCounts(t, up, map[string]int{"HEAD blob": 1})
}

func TestBlobRanges(t *testing.T) {
	t.Parallel()
	up := upstreamtest.New(t)
	img := up.PushImage(t, "library/app", "1", 41, 1, 100_000, amd64)
	up.Reset()
	e := newEnv(t, t.TempDir(), spec{name: "docker.io", reg: up, def: true, ttl: time.Hour})
	l := img.Layers[0]
	path := "/v2/app/blobs/" + l.Digest.String()
	size := len(l.Data)
	check := func(rng string, from, to int) {
		t.Helper()
		r := e.do(t, "GET", path, "Range", rng)
		want := fmt.Sprintf("bytes %d-%d/%d", from, to, size)
		if r.status != 206 || r.header.Get("Content-Range") != want || !bytes.Equal(r.body, l.Data[from:to+1]) {
			t.Fatalf("Range %s: %d %q (%d bytes), want 206 %q", rng, r.status, r.header.Get("Content-Range"), len(r.body), want)
		}
	}
	check("bytes=1000-", 1000, size-1) // cold: starts the fill, serves the slice
	check("bytes=10-99", 10, 99)       // warm
	check("bytes=-5", size-5, size-1)
	check("Bytes=20-29", 20, 29) // a range unit is compared without regard to case
	// A Range it cannot satisfy, or cannot read, is an OCI error saying
	// how large the blob is; one in a unit other than bytes is ignored.
	for _, rng := range []string{fmt.Sprintf("bytes=%d-", size+10), "bytes=5-1", "bytes=abc"} {
		r := e.do(t, "GET", path, "Range", rng)
		if r.status != 416 || r.header.Get("Content-Type") != "application/json" || !strings.Contains(string(r.body), `"code":"RANGE_INVALID"`) ||
			r.header.Get("Content-Range") != fmt.Sprintf("bytes */%d", size) {
			t.Errorf("Range %s: %d %q %q %s", rng, r.status, r.header.Get("Content-Type"), r.header.Get("Content-Range"), r.body)
		}
	}
	for _, rng := range []string{"items=0-1", "0-1", "bytes="} {
		if r := e.do(t, "GET", path, "Range", rng); r.status != 200 || !bytes.Equal(r.body, l.Data) {
			t.Errorf("Range %s: %d, %d bytes of %d", rng, r.status, len(r.body), size)
		}
	}
	wantCounts(t, up, map[string]int{"GET blob": 1})
	// The same of a cold blob: the answer is the error, and the fill it
	// started serves the next request.
	img2 := up.PushImage(t, "library/cold", "1", 42, 1, 100_000, amd64)
	cold := img2.Layers[0]
	up.Reset()
	e.get(t, "/v2/cold/manifests/1", img2.Manifest.Data, img2.Manifest.Digest.String())
	if r := e.do(t, "GET", "/v2/cold/blobs/"+cold.Digest.String(), "Range", "bytes=abc"); r.status != 416 || !strings.Contains(string(r.body), `"code":"RANGE_INVALID"`) {
		t.Errorf("a cold blob's unreadable Range: %d %s", r.status, r.body)
	}
	e.get(t, "/v2/cold/blobs/"+cold.Digest.String(), cold.Data, cold.Digest.String())
	wantCounts(t, up, map[string]int{"GET manifest": 1, "GET blob": 1})
	if r := e.do(t, "GET", path, "If-None-Match", `"`+l.Digest.String()+`"`); r.status != 304 {
		t.Fatalf("If-None-Match: %d", r.status)
	}
}

// A manifest's Range errors are OCI errors too, as a blob's are.
func TestManifestRangeErrors(t *testing.T) {
	t.Parallel()
	up := upstreamtest.New(t)
	img := up.PushImage(t, "library/app", "1", 43, 1, 1000, amd64)
	e := newEnv(t, t.TempDir(), spec{name: "docker.io", reg: up, def: true, ttl: time.Hour})
	m := img.Manifest
	if r := e.do(t, "GET", "/v2/app/manifests/1", "Range", "bytes=0-9"); r.status != 206 || !bytes.Equal(r.body, m.Data[:10]) {
		t.Fatalf("Range bytes=0-9: %d %q", r.status, r.body)
	}
	r := e.do(t, "GET", "/v2/app/manifests/1", "Range", "bytes=abc")
	if r.status != 416 || r.header.Get("Content-Type") != "application/json" || !strings.Contains(string(r.body), `"code":"RANGE_INVALID"`) ||
		r.header.Get("Content-Range") != fmt.Sprintf("bytes */%d", len(m.Data)) {
		t.Fatalf("Range bytes=abc: %d %q %q %s", r.status, r.header.Get("Content-Type"), r.header.Get("Content-Range"), r.body)
	}
	e.get(t, "/v2/app/manifests/1", m.Data, m.Digest.String())
}

// A blob stored through one repository is not readable through another
// unless that repository's upstream shows it holds it.
func TestNoBlobLeaksAcrossRepositories(t *testing.T) {
	t.Parallel()
	up := upstreamtest.New(t)
	secret := up.PushImage(t, "team/secret", "1", 42, 1, 4096, amd64)
	up.PushImage(t, "team/public", "1", 43, 1, 4096, amd64)
	up.PushBlob(t, "team/public", secret.Layers[0]) // public also holds this one layer
	e := newEnv(t, t.TempDir(), spec{name: "docker.io", reg: up, def: true, ttl: time.Hour})
	pull(t, e, "team/secret", secret, "")
	up.Reset()

	cfg := secret.Config.Digest.String()
	wantError(t, e.do(t, "GET", "/v2/team/public/blobs/"+cfg), 404, "BLOB_UNKNOWN")
	wantError(t, e.do(t, "GET", "/v2/team/public/manifests/"+secret.Manifest.Digest.String()), 404, "MANIFEST_UNKNOWN")
	if r := e.do(t, "HEAD", "/v2/team/public/blobs/"+cfg); r.status != 404 {
		t.Fatalf("HEAD leaked blob: %d", r.status)
	}
	wantCounts(t, up, map[string]int{"GET blob": 0, "HEAD blob": 2, "HEAD manifest": 1})

	// The layer public really holds is served from the store after one HEAD.
	up.Reset()
	l := secret.Layers[0]
	e.get(t, "/v2/team/public/blobs/"+l.Digest.String(), l.Data, l.Digest.String())
	e.get(t, "/v2/team/public/blobs/"+l.Digest.String(), l.Data, l.Digest.String())
	wantCounts(t, up, map[string]int{"HEAD blob": 1})
}

// A blob whose upstream bytes do not hash to its digest never completes
// cleanly for the client and never enters the store.
func TestBlobDigestMismatchBreaksTheTransfer(t *testing.T) {
	t.Parallel()
	up := upstreamtest.New(t)
	img := up.PushImage(t, "library/app", "1", 44, 1, 200_000, amd64)
	l := img.Layers[0]
	corrupt := bytes.Clone(l.Data)
	corrupt[len(corrupt)/2] ^= 0xff
	up.SetHook(fault(func(r *http.Request) bool { return r.Method == "GET" && strings.Contains(r.URL.Path, "/blobs/") },
		200, map[string]string{"Content-Length": strconv.Itoa(len(corrupt))}, string(corrupt)))
	e := newEnv(t, t.TempDir(), spec{name: "docker.io", reg: up, def: true, ttl: time.Hour})
	path := "/v2/app/blobs/" + l.Digest.String()

	// Depending on timing the client sees a cut connection (the fill failed
	// mid-stream) or, if it failed before the client attached, an error
	// status; never a 200 that completes.
	brokenOrRefused := func(what string) {
		t.Helper()
		resp, err := e.Client().Get(e.URL + path)
		if err != nil {
			return
		}
		body, rerr := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK && rerr == nil {
			t.Fatalf("%s blob delivered cleanly: %d bytes", what, len(body))
		}
		if resp.StatusCode == http.StatusOK && len(body) >= len(l.Data) {
			t.Fatalf("client got all %d bytes of a %s blob", len(body), what)
		}
		if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusBadGateway && resp.StatusCode != http.StatusServiceUnavailable {
			t.Fatalf("%s blob: status %d", what, resp.StatusCode)
		}
	}
	brokenOrRefused("corrupt")
	// Truncated upstream bodies are refused the same way.
	up.SetHook(func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method != "GET" || !strings.Contains(r.URL.Path, "/blobs/") {
			return false
		}
		w.Header().Set("Content-Length", strconv.Itoa(len(l.Data)))
		w.Write(l.Data[:len(l.Data)/3])
		return true // the server closes the short response
	})
	brokenOrRefused("truncated")
	if n := metric(t, e, "wharf_fill_failures_total"); n != 2 {
		t.Fatalf("fill failures counted: %v, want 2", n)
	}
	up.SetHook(nil)
	up.Reset()
	e.get(t, path, l.Data, l.Digest.String())
	wantCounts(t, up, map[string]int{"GET blob": 1})
}

// Concurrent cold pulls of one image fetch each blob once.
func TestConcurrentColdPullsFetchOnce(t *testing.T) {
	t.Parallel()
	up := upstreamtest.New(t)
	img := up.PushImage(t, "library/app", "1", 45, 3, 300_000, amd64)
	up.Reset()
	e := newEnv(t, t.TempDir(), spec{name: "docker.io", reg: up, def: true, ttl: time.Hour})
	const clients = 8
	var wg sync.WaitGroup
	errs := make(chan error, clients*4)
	for range clients {
		wg.Go(func() {
			for _, b := range img.Blobs() {
				resp, err := e.Client().Get(e.URL + "/v2/app/blobs/" + b.Digest.String())
				if err != nil {
					errs <- err
					return
				}
				got, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				if err != nil || resp.StatusCode != 200 || !bytes.Equal(got, b.Data) {
					errs <- fmt.Errorf("blob %s: %d, %d bytes, %v", b.Digest, resp.StatusCode, len(got), err)
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	// No manifest was pulled, so each client's repository membership comes
	// from a HEAD for every blob some other client was already filling.
	if n := up.Count("GET", "blob"); n != 4 {
		t.Fatalf("%d upstream blob GETs for 4 blobs", n)
	}
}
