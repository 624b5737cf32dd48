//go:build e2e

package e2e

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/wharf-registry/wharf/upstream/upstreamtest"
)

// The real binary, built once, on the first test that needs it, with the
// race detector when the tests run with it.
var (
	buildOnce sync.Once
	wharfBin  string
	buildErr  error
)

func wharfBinary(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "wharf-e2e-")
		if err != nil {
			buildErr = err
			return
		}
		wharfBin = filepath.Join(dir, "wharf")
		args := []string{"build", "-o", wharfBin}
		if raceEnabled {
			args = append(args, "-race")
		}
		if out, err := exec.Command("go", append(args, "../cmd/wharf")...).CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("build wharf: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return wharfBin
}

func TestMain(m *testing.M) {
	code := m.Run()
	if wharfBin != "" {
		os.RemoveAll(filepath.Dir(wharfBin))
	}
	os.Exit(code)
}

// tool returns the path of a client the end-to-end tests drive: `make
// test` installs them all, so a missing one fails in CI and skips elsewhere.
func tool(t *testing.T, name string) string {
	t.Helper()
	return upstreamtest.Tool(t, name)
}

var listenRE = regexp.MustCompile(`msg=listening addr=(\S+)`)

// startWharf runs the binary with config and returns its address. At the end
// of the test it is stopped with SIGTERM and must exit cleanly.
// wharfProc is a running wharf binary.
type wharfProc struct {
	addr   string
	cmd    *exec.Cmd
	killed bool
	done   chan struct{} // the log reader has finished
	logs   *bytes.Buffer
}

// stop ends the process with SIGTERM and fails the test unless it exits
// cleanly.
func (w *wharfProc) stop(t *testing.T) {
	t.Helper()
	w.killed = true // the cleanup has nothing left to do
	w.cmd.Process.Signal(syscall.SIGTERM)
	<-w.done
	if err := w.cmd.Wait(); err != nil {
		t.Fatalf("wharf did not exit cleanly on SIGTERM: %v\n%s", err, w.logs.String())
	}
}

// kill ends the process with SIGKILL, a crash, nothing flushed or closed,
// and returns once it is gone (its locks released).
func (w *wharfProc) kill(t *testing.T) {
	t.Helper()
	w.killed = true
	if err := w.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-w.done
	w.cmd.Wait()
}

func startWharf(t *testing.T, config string) *wharfProc {
	t.Helper()
	cfgPath := filepath.Join(t.TempDir(), "wharf.yml")
	if err := os.WriteFile(cfgPath, []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(wharfBinary(t), "serve", "--config", cfgPath)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	addr := make(chan string, 1)
	var logs bytes.Buffer
	done := make(chan struct{})
	go func() {
		defer close(done)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			logs.WriteString(sc.Text() + "\n")
			if m := listenRE.FindStringSubmatch(sc.Text()); m != nil {
				addr <- m[1]
			}
		}
	}()
	w := &wharfProc{cmd: cmd, done: done, logs: &logs}
	t.Cleanup(func() {
		if !w.killed {
			cmd.Process.Signal(syscall.SIGTERM)
		}
		<-done
		if err := cmd.Wait(); err != nil && !w.killed {
			t.Errorf("wharf did not exit cleanly on SIGTERM: %v\n%s", err, logs.String())
		}
		if t.Failed() {
			t.Logf("wharf log:\n%s", logs.String())
		}
	})
	select {
	case w.addr = <-addr:
		return w
	case <-done:
		t.Fatalf("wharf exited before listening:\n%s", logs.String())
	case <-time.After(30 * time.Second):
		t.Fatal("wharf did not start listening within 30s")
	}
	return nil
}

func runTool(t *testing.T, name string, args ...string) []byte {
	t.Helper()
	cmd := exec.CommandContext(t.Context(), name, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s%s", name, strings.Join(args, " "), err, out, stderr.String())
	}
	return out
}

func mirrorConfig(root, upstreamURL string) string {
	return fmt.Sprintf(`listen: "127.0.0.1:0"
storage:
  root: %s
upstreams:
  - name: docker.io
    url: %s
    aliases: [index.docker.io, registry-1.docker.io]
    default: true
    insecure: true
`, root, upstreamURL)
}

var amd64 = ocispec.Platform{OS: "linux", Architecture: "amd64"}

func TestSkopeoAndCrane(t *testing.T) {
	t.Parallel()
	skopeo, crane := tool(t, "skopeo"), tool(t, "crane")
	up := upstreamtest.New(t)
	img := up.PushImage(t, "library/app", "1.0", 60, 2, 256<<10, amd64)
	up.PushImage(t, "library/app", "2.0", 61, 1, 1024, amd64)
	addr := startWharf(t, mirrorConfig(t.TempDir(), up.URL)).addr
	ref := addr + "/library/app:1.0"

	var inspect struct{ Digest string }
	if err := json.Unmarshal(runTool(t, skopeo, "inspect", "--tls-verify=false", "docker://"+ref), &inspect); err != nil {
		t.Fatal(err)
	}
	if inspect.Digest != img.Manifest.Digest.String() {
		t.Fatalf("skopeo inspect digest %s, want %s", inspect.Digest, img.Manifest.Digest)
	}
	var tags struct{ Tags []string }
	json.Unmarshal(runTool(t, skopeo, "list-tags", "--tls-verify=false", "docker://"+addr+"/library/app"), &tags)
	if strings.Join(tags.Tags, ",") != "1.0,2.0" {
		t.Fatalf("skopeo list-tags: %v", tags.Tags)
	}
	layout := filepath.Join(t.TempDir(), "oci")
	runTool(t, skopeo, "copy", "--insecure-policy", "--src-tls-verify=false", "docker://"+ref, "oci:"+layout+":app")
	for _, b := range img.Blobs() {
		got, err := os.ReadFile(filepath.Join(layout, "blobs", "sha256", b.Digest.Encoded()))
		if err != nil || !bytes.Equal(got, b.Data) {
			t.Fatalf("skopeo copy: blob %s differs (%v)", b.Digest, err)
		}
	}

	if got := runTool(t, crane, "manifest", "--insecure", ref); !bytes.Equal(got, img.Manifest.Data) {
		t.Fatalf("crane manifest differs:\n%s", got)
	}
	if got := strings.TrimSpace(string(runTool(t, crane, "digest", "--insecure", ref))); got != img.Manifest.Digest.String() {
		t.Fatalf("crane digest %s", got)
	}
	if got := strings.Fields(string(runTool(t, crane, "ls", "--insecure", addr+"/library/app"))); strings.Join(got, ",") != "1.0,2.0" {
		t.Fatalf("crane ls: %v", got)
	}
	runTool(t, crane, "pull", "--insecure", "--format", "oci", ref, filepath.Join(t.TempDir(), "pulled"))

	// Everything above crossed Wharf; the blobs came from upstream once.
	if n := up.Count("GET", "blob"); n != 3 {
		t.Fatalf("upstream blob GETs: %d, want 3 (config + 2 layers)", n)
	}
}

func TestContainerdPullThroughHostsToml(t *testing.T) {
	up := upstreamtest.New(t)
	img := up.PushImage(t, "library/busybox", "1.36", 62, 2, 64<<10, amd64)
	// An upstream that labels this one's manifests application/json:
	// Wharf serves the type the manifest declares, or containerd refuses it.
	labelled := up.PushImage(t, "library/labelled", "1", 67, 1, 16<<10, amd64)
	up.Relabel(func(r *http.Request) bool { return strings.Contains(r.URL.Path, "/library/labelled/manifests/") }, "application/json")
	ctr, sock, dir := startContainerd(t)
	addr := startWharf(t, mirrorConfig(t.TempDir(), up.URL)).addr

	hosts := filepath.Join(dir, "hosts", "docker.io")
	os.MkdirAll(hosts, 0o755)
	os.WriteFile(filepath.Join(hosts, "hosts.toml"), fmt.Appendf(nil, `server = "https://registry-1.docker.io"

[host."http://%s"]
  capabilities = ["pull", "resolve"]
`, addr), 0o644)

	ref := "docker.io/library/busybox:1.36"
	runTool(t, ctr, "--address", sock, "images", "pull", "--snapshotter", "native", "--hosts-dir", filepath.Join(dir, "hosts"), ref)
	out := string(runTool(t, ctr, "--address", sock, "images", "ls"))
	if !strings.Contains(out, ref) || !strings.Contains(out, img.Manifest.Digest.String()) {
		t.Fatalf("ctr images ls does not show %s at %s:\n%s", ref, img.Manifest.Digest, out)
	}
	// containerd sent ?ns=docker.io; every request reached the in-process
	// upstream through Wharf, never the real Docker Hub.
	if n := up.Count("GET", "blob"); n != 3 {
		t.Fatalf("upstream blob GETs: %d, want 3", n)
	}
	ref = "docker.io/library/labelled:1"
	runTool(t, ctr, "--address", sock, "images", "pull", "--snapshotter", "native", "--hosts-dir", filepath.Join(dir, "hosts"), ref)
	if out := string(runTool(t, ctr, "--address", sock, "images", "ls")); !strings.Contains(out, labelled.Manifest.Digest.String()) {
		t.Fatalf("ctr images ls does not show %s:\n%s", ref, out)
	}
}

// startContainerd runs a private containerd daemon for the test and returns
// ctr's path, the daemon's socket and a directory for the test's files.
func startContainerd(t *testing.T) (ctr, sock, dir string) {
	t.Helper()
	upstreamtest.NeedRoot(t, "a private containerd daemon")
	containerd := tool(t, "containerd")
	ctr = tool(t, "ctr")
	var err error
	dir, err = os.MkdirTemp("", "ctrd-") // short: socket paths are limited to 108 bytes
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock = filepath.Join(dir, "c.sock")
	cfg := fmt.Sprintf(`version = 2
root = %q
state = %q
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = %q
`, filepath.Join(dir, "root"), filepath.Join(dir, "state"), sock)
	cfgPath := filepath.Join(dir, "config.toml")
	os.WriteFile(cfgPath, []byte(cfg), 0o644)
	var logs bytes.Buffer
	d := exec.Command(containerd, "--config", cfgPath)
	d.Stdout, d.Stderr = &logs, &logs
	if err := d.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		d.Process.Signal(syscall.SIGTERM)
		d.Wait()
		if t.Failed() {
			t.Logf("containerd log:\n%s", logs.String())
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for exec.Command(ctr, "--address", sock, "version").Run() != nil {
		if time.Now().After(deadline) {
			t.Fatal("containerd did not come up within 30s")
		}
		time.Sleep(100 * time.Millisecond) // polling an external daemon's socket
	}
	return ctr, sock, dir
}
