//go:build e2e

package e2e

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/wharf-registry/wharf/upstream/upstreamtest"
)

// fillUp writes a foreign file until the filesystem under dir has not a
// byte left.
func fillUp(t *testing.T, dir, name string) {
	t.Helper()
	f, err := os.OpenFile(filepath.Join(dir, name), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, size := range []int{1 << 20, 4 << 10, 1} {
		buf := make([]byte, size)
		for {
			if _, err := f.Write(buf); err != nil {
				if !errors.Is(err, syscall.ENOSPC) {
					t.Fatal(err)
				}
				break
			}
		}
	}
	var st syscall.Statfs_t
	syscall.Statfs(dir, &st)
	if st.Bavail != 0 {
		t.Fatalf("%d blocks still free", st.Bavail)
	}
}

// getImage pulls an image through Wharf as containerd would and checks
// every byte.
func getImage(t *testing.T, addr string, img upstreamtest.Image) {
	t.Helper()
	base := "http://" + addr + "/v2/" + img.Repo
	for path, want := range map[string][]byte{"/manifests/" + img.Tag: img.Manifest.Data} {
		resp, err := http.Get(base + path)
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != 200 || !bytes.Equal(got, want) {
			t.Fatalf("GET %s: %d, %d bytes, %v", path, resp.StatusCode, len(got), err)
		}
	}
	for _, b := range img.Blobs() {
		resp, err := http.Get(base + "/blobs/" + b.Digest.String())
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != 200 || !bytes.Equal(got, b.Data) {
			t.Fatalf("GET blob %s: %d, %d bytes, %v", b.Digest, resp.StatusCode, len(got), err)
		}
	}
}

// metricValue reads one sample of Wharf's /metrics.
func metricValue(t *testing.T, addr, name string) string {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			return v
		}
	}
	return ""
}

// checkStore runs wharf check and fails the test unless it succeeds.
func checkStore(t *testing.T, cfg string) {
	t.Helper()
	cfgPath := filepath.Join(t.TempDir(), "wharf.yml")
	os.WriteFile(cfgPath, []byte(cfg), 0o644)
	if b, err := exec.Command(wharfBinary(t), "check", "--config", cfgPath).CombinedOutput(); err != nil {
		t.Fatalf("wharf check (a process): %v\n%s", err, b)
	}
}

// waitFor polls another process's state, bounded.
func waitFor(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 30s", what)
		}
		time.Sleep(50 * time.Millisecond) // polling another process
	}
}

// The filesystem under storage.root filled to the last byte by a foreign
// file: Wharf stays up, serves what it holds, passes misses through
// verified, stops, starts and is checked on the full filesystem (after a
// clean stop and after kill -9), and stores again once there is room.
func TestFullFilesystem(t *testing.T) {
	upstreamtest.NeedRoot(t, "mounting a small tmpfs")
	root := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", root).CombinedOutput(); err != nil {
		t.Fatalf("mount tmpfs: %v %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", "-l", root).Run() })
	up := upstreamtest.New(t)
	a := up.PushImage(t, "library/a", "1", 92, 1, 1<<20, amd64)
	b := up.PushImage(t, "library/b", "1", 93, 1, 3<<20, amd64)
	store := filepath.Join(root, "store")
	cfg := fmt.Sprintf(`listen: "127.0.0.1:0"
storage:
  root: %s
  min_free: 24MiB
upstreams:
  - name: docker.io
    url: %s
    default: true
    insecure: true
`, store, up.URL)
	ballast := func() bool { _, err := os.Stat(filepath.Join(store, "reserve")); return err == nil }

	// Full while running, with the ballast in place.
	w := startWharf(t, cfg)
	getImage(t, w.addr, a)
	waitFor(t, "the ballast", ballast)
	fillUp(t, root, "foreign")
	getImage(t, w.addr, a) // cached: served
	up.Reset()
	getImage(t, w.addr, b) // a miss: passed through, verified, not stored
	getImage(t, w.addr, b)
	if n := up.Count(http.MethodGet, "blob"); n != 4 {
		t.Fatalf("upstream blob GETs for two pulls of b on a full disk: %d, want 4", n)
	}
	if v := metricValue(t, w.addr, "wharf_fill_passthrough_total"); v == "" || v == "0" {
		t.Fatalf("pass-through not counted: %q", v)
	}
	if ballast() {
		t.Fatal("the ballast was kept on a full filesystem")
	}
	w.stop(t) // a clean stop: the index flushes into the ballast's room

	// Start and check on the full filesystem (the foreign file takes the
	// ballast's room too).
	fillUp(t, root, "foreign")
	checkStore(t, cfg)
	w = startWharf(t, cfg)
	if v := metricValue(t, w.addr, "wharf_index_read_only"); v != "1" {
		t.Fatalf("wharf_index_read_only %q on a full filesystem", v)
	}
	up.Reset()
	getImage(t, w.addr, a)
	getImage(t, w.addr, b)
	if n := up.Count(http.MethodGet, "blob"); n != 2 {
		t.Fatalf("upstream blob GETs: %d, want b's 2", n)
	}

	// Room again: the index reopens read-write and b is stored.
	os.Remove(filepath.Join(root, "foreign"))
	waitFor(t, "the index reopened read-write", func() bool { return metricValue(t, w.addr, "wharf_index_read_only") == "0" })
	getImage(t, w.addr, b)
	up.Reset()
	getImage(t, w.addr, b)
	if n := up.Total(); n != 0 {
		t.Fatalf("b was not stored once there was room: %d upstream requests", n)
	}

	// A crash on a full filesystem with index writes in its log: check and
	// start on the full filesystem all the same.
	c := up.PushImage(t, "library/c", "1", 94, 1, 1<<10, amd64)
	fillUp(t, root, "foreign")
	getImage(t, w.addr, c) // its index records go into the log
	w.kill(t)
	fillUp(t, root, "foreign")
	checkStore(t, cfg)
	w = startWharf(t, cfg)
	up.Reset()
	getImage(t, w.addr, a)
	getImage(t, w.addr, b)
	if n := up.Count(http.MethodGet, "blob"); n != 0 {
		t.Fatalf("after the crash, cached blobs went upstream: %d", n)
	}
	w.stop(t)
}
