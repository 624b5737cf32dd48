//go:build e2e

package e2e

import (
	"bytes"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/wharf-registry/wharf/upstream/upstreamtest"
)

// kill -9 in the middle of a fill, then `wharf check` and a restart: nothing
// half-written is served or indexed, the temp file is gone, and the blob is
// fetched again, whole and verified.
func TestKillMidFillThenRestart(t *testing.T) {
	t.Parallel()
	up := upstreamtest.New(t)
	img := up.PushImage(t, "library/app", "1", 63, 1, 2<<20, amd64)
	l := img.Layers[0]
	stall := make(chan struct{})
	defer close(stall)
	up.SetHook(func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method != "GET" || !strings.HasSuffix(r.URL.Path, l.Digest.String()) {
			return false
		}
		w.Header().Set("Content-Length", strconv.Itoa(len(l.Data)))
		w.Write(l.Data[:len(l.Data)/2])
		w.(http.Flusher).Flush()
		select { // half the blob, then nothing until the test ends
		case <-stall:
		case <-r.Context().Done():
		}
		return true
	})
	root := t.TempDir()
	cfg := mirrorConfig(root, up.URL)
	w := startWharf(t, cfg)
	url := "http://" + w.addr + "/v2/library/app/blobs/" + l.Digest.String()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(resp.Body, make([]byte, 1<<20)); err != nil {
		t.Fatalf("first half: %v", err)
	}
	tmp := filepath.Join(root, "docker", "registry", "v2", "tmp")
	if ents, _ := os.ReadDir(tmp); len(ents) != 1 {
		t.Fatalf("expected one fill in progress, found %d temp files", len(ents))
	}
	w.kill(t)
	if _, err := io.ReadAll(resp.Body); err == nil {
		t.Fatal("client saw a clean end of a blob cut by a crash")
	}
	resp.Body.Close()

	cfgPath := filepath.Join(t.TempDir(), "wharf.yml")
	os.WriteFile(cfgPath, []byte(cfg), 0o644)
	var out, errOut bytes.Buffer
	check := exec.Command(wharfBinary(t), "check", "--config", cfgPath)
	check.Stdout, check.Stderr = &out, &errOut
	if err := check.Run(); err != nil {
		t.Fatalf("wharf check after the crash: %v\n%s%s", err, out.String(), errOut.String())
	}
	if !strings.Contains(out.String(), "found 0 orphan, 0 dangling, 0 corrupt, 0 mediatype") {
		t.Fatalf("check summary: %s", out.String())
	}
	if ents, _ := os.ReadDir(tmp); len(ents) != 0 {
		t.Fatalf("%d temp files survived a restart", len(ents))
	}

	up.SetHook(nil)
	up.Reset()
	w = startWharf(t, cfg)
	resp, err = http.Get("http://" + w.addr + "/v2/library/app/blobs/" + l.Digest.String())
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != 200 || !bytes.Equal(got, l.Data) {
		t.Fatalf("after restart: %d, %d bytes, %v", resp.StatusCode, len(got), err)
	}
	if n := up.Count("GET", "blob"); n != 1 {
		t.Fatalf("upstream blob GETs after restart: %d", n)
	}
}
