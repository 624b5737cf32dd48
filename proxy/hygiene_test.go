package proxy_test

import (
	"io"
	"net"
	"net/http"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/wharf-registry/wharf/upstream/upstreamtest"
)

// settle waits, bounded, until f reports at most want; goroutines and file
// descriptors are released asynchronously after connections close.
func settle(f func() int, want int) int {
	deadline := time.Now().Add(10 * time.Second)
	n := f()
	for n > want && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond) // polling a condition, bounded
		n = f()
	}
	return n
}

func openFDs() int {
	ents, _ := os.ReadDir("/proc/self/fd")
	return len(ents)
}

// Hundreds of idle connections and a client reading nothing do not block
// anyone else, and everything returns to its baseline afterwards.
func TestIdleAndSlowClientsBlockNobody(t *testing.T) {
	up := upstreamtest.New(t, upstreamtest.WithFilesystem(t.TempDir()))
	img := up.PushImage(t, "library/app", "1", 27, 1, 8<<20, amd64)
	e := newEnv(t, t.TempDir(), spec{name: "docker.io", reg: up, def: true, ttl: time.Hour})
	pull(t, e, "app", img, "") // warm the path once: connection pools, caches
	e.Client().CloseIdleConnections()
	baseG, baseFD := runtime.NumGoroutine(), openFDs()

	addr := strings.TrimPrefix(e.URL, "http://")
	var idle []net.Conn
	for range 300 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		idle = append(idle, c)
	}
	// A client that asks for an 8 MiB layer (more than socket buffers hold)
	// and reads one byte.
	slow, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(slow, "GET /v2/library/app/blobs/"+img.Layers[0].Digest.String()+" HTTP/1.1\r\nHost: x\r\n\r\n")
	slow.Read(make([]byte, 1))

	// Everyone else is served, cold fills included.
	other := up.PushImage(t, "library/other", "1", 28, 2, 256<<10, amd64)
	pull(t, e, "other", other, "")
	pull(t, e, "app", img, "")

	for _, c := range idle {
		c.Close()
	}
	slow.Close()
	e.Client().CloseIdleConnections()
	// The new image's fills finished; allow the keep-alive upstream pool.
	if g := settle(runtime.NumGoroutine, baseG+4); g > baseG+4 {
		buf := make([]byte, 1<<16)
		t.Fatalf("goroutines: %d after load, %d before\n%s", g, baseG, buf[:runtime.Stack(buf, true)])
	}
	if fd := settle(openFDs, baseFD+4); fd > baseFD+4 {
		t.Fatalf("file descriptors: %d after load, %d before", fd, baseFD)
	}
}

// Every kind of upstream fault, cold and warm: cold requests fail as 503 (or
// a cut connection), never 404 and never a hang; warm ones are served from
// the store without asking upstream at all.
func TestFaultMatrix(t *testing.T) {
	// Cold upstream traffic per fault: a manifest GET, then a blob GET.
	//   429: the circuit opens for its Retry-After, so the blob GET is not sent.
	//   reset: Go's transport replays a GET once when a reused keep-alive
	//     connection closes without an answer.
	//   truncated: the fill resumes twice (upstream ignores Range) and gives
	//     up; the client, which already had headers and bytes, does not retry.
	faults := map[string]struct {
		hook func(http.ResponseWriter, *http.Request) bool
		want map[string]int
	}{
		"500": {fault(all, 500, nil, `{"errors":[{"code":"UNKNOWN","message":"boom"}]}`),
			map[string]int{"GET manifest": 1, "GET blob": 1}},
		"429": {fault(all, 429, map[string]string{"Retry-After": "3"}, ""),
			map[string]int{"GET manifest": 1}},
		"reset": {func(http.ResponseWriter, *http.Request) bool { panic(http.ErrAbortHandler) },
			map[string]int{"GET manifest": 2, "GET blob": 1}},
		"hang": {func(w http.ResponseWriter, r *http.Request) bool { <-r.Context().Done(); return true },
			map[string]int{"GET manifest": 1, "GET blob": 1}},
		"truncated": {func(w http.ResponseWriter, r *http.Request) bool {
			w.Header().Set("Content-Length", "100000")
			w.Write([]byte(`{"partial":`))
			return true
		}, map[string]int{"GET manifest": 1, "GET blob": 3}},
	}
	for name, f := range faults {
		hook := f.hook
		t.Run(name, func(t *testing.T) {
			up := upstreamtest.New(t)
			warm := up.PushImage(t, "library/warm", "1", 29, 1, 4096, amd64)
			cold := up.PushImage(t, "library/cold", "1", 30, 1, 4096, amd64)
			e := newEnv(t, t.TempDir(), spec{name: "docker.io", reg: up, def: true, ttl: time.Hour})
			pull(t, e, "warm", warm, "")
			up.SetHook(hook)
			up.Reset()
			pull(t, e, "warm", warm, "")
			wantCounts(t, up, map[string]int{})

			up.Reset()
			r := e.do(t, "GET", "/v2/cold/manifests/1")
			wantError(t, r, 503, "UNAVAILABLE")
			resp, err := e.Client().Get(e.URL + "/v2/cold/blobs/" + cold.Layers[0].Digest.String())
			if err == nil {
				body, rerr := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 503 && rerr == nil {
					t.Fatalf("cold blob under %s: %d, %d bytes", name, resp.StatusCode, len(body))
				}
			}
			wantCounts(t, up, f.want)
		})
	}
}
