//go:build e2e

package e2e

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/wharf-registry/wharf/upstream/upstreamtest"
)

// rawGet sends a GET on a fresh connection and returns it with the
// response's headers read.
func rawGet(t *testing.T, addr, path string) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.(*net.TCPConn).SetReadBuffer(64 << 10)
	fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: wharf\r\n\r\n", path)
	br := bufio.NewReaderSize(c, 64<<10)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %v %v", path, resp, err)
	}
	return c, br
}

// A client that stops reading is dropped once a write has waited
// write_timeout; a slow client that keeps reading is served in full
// however long it takes. The margins are wide, so that a busy machine
// (the client's goroutine not scheduled for a while) changes nothing: the
// slow client pauses a twentieth of the timeout between reads and takes
// three timeouts in all; the stalled one stalls three timeouts.
func TestWriteDeadlineMovesWithProgress(t *testing.T) {
	up := upstreamtest.New(t, upstreamtest.WithFilesystem(t.TempDir()))
	img := up.PushImage(t, "library/app", "1", 68, 1, 16<<20, amd64)
	const timeout = 2 * time.Second
	cfg := mirrorConfig(t.TempDir(), up.URL) + fmt.Sprintf("server:\n  write_timeout: %s\n", timeout)
	w := startWharf(t, cfg)
	path := "/v2/library/app/blobs/" + img.Layers[0].Digest.String()
	size := len(img.Layers[0].Data)
	resp, err := http.Get("http://" + w.addr + path) // warm: served from the store by sendfile from now on
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()

	// Slow but moving: 256 KiB every tenth of a second, the whole blob in
	// more than three write timeouts.
	c, br := rawGet(t, w.addr, path)
	start, got := time.Now(), 0
	buf := make([]byte, 256<<10)
	for got < size {
		n, err := io.ReadFull(br, buf[:min(len(buf), size-got)])
		got += n
		if err != nil {
			t.Fatalf("slow client cut after %d of %d bytes in %v: %v", got, size, time.Since(start), err)
		}
		time.Sleep(timeout / 20) // the client's pace, not synchronisation
	}
	c.Close()

	if elapsed := time.Since(start); elapsed < 2*timeout {
		t.Fatalf("the slow client took %v, not long enough to show the deadline moving", elapsed)
	}

	// Stalled: reads a little, then nothing for three write timeouts.
	c, br = rawGet(t, w.addr, path)
	br.Read(buf[:1])
	time.Sleep(3 * timeout) // the client's stall
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	n, err := io.Copy(io.Discard, br)
	if n+1 >= int64(size) {
		t.Fatalf("a stalled client was kept: it got all %d bytes (%v)", n+1, err)
	}
	if nerr, ok := err.(net.Error); ok && nerr.Timeout() {
		t.Fatalf("the connection was not dropped: read timed out after %d bytes", n)
	}
}

// Past server.max_connections new clients wait in the backlog until a
// connection closes.
func TestMaxConnections(t *testing.T) {
	up := upstreamtest.New(t)
	cfg := mirrorConfig(t.TempDir(), up.URL) + "server:\n  max_connections: 2\n"
	w := startWharf(t, cfg)
	var idle []net.Conn
	for range 2 {
		c, err := net.Dial("tcp", w.addr)
		if err != nil {
			t.Fatal(err)
		}
		idle = append(idle, c)
	}
	client := &http.Client{Timeout: time.Second}
	if resp, err := client.Get("http://" + w.addr + "/healthz"); err == nil {
		resp.Body.Close()
		t.Fatalf("a third connection was served: %d", resp.StatusCode)
	} else if !strings.Contains(err.Error(), "Timeout") && !strings.Contains(err.Error(), "deadline") {
		t.Fatalf("a third connection: %v", err)
	}
	idle[0].Close()
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Get("http://" + w.addr + "/healthz")
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("once a connection closed: %v %v", resp, err)
	}
	resp.Body.Close()
	idle[1].Close()
}

// Attack 5: clients that send one request and then hold their keep-alive
// connections idle fill max_connections; a real pull still gets a slot,
// the idle connections giving way.
func TestIdleConnectionsGiveWayToAPull(t *testing.T) {
	t.Parallel()
	up := upstreamtest.New(t)
	img := up.PushImage(t, "library/app", "1", 69, 1, 64<<10, amd64)
	const max = 32
	w := startWharf(t, mirrorConfig(t.TempDir(), up.URL)+fmt.Sprintf("server:\n  max_connections: %d\n", max))
	for range max {
		c, br := rawGet(t, w.addr, "/healthz")
		if _, err := io.ReadAll(io.LimitReader(br, 3)); err != nil {
			t.Fatal(err)
		}
		_ = c // held open, idle, until the test ends
	}
	client := &http.Client{Timeout: 30 * time.Second}
	for _, path := range []string{"/v2/library/app/manifests/1", "/v2/library/app/blobs/" + img.Layers[0].Digest.String()} {
		resp, err := client.Get("http://" + w.addr + path)
		if err != nil {
			t.Fatalf("GET %s with every slot held by an idle connection: %v", path, err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("GET %s: %d", path, resp.StatusCode)
		}
	}
}
