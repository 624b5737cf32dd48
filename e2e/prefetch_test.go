//go:build e2e

package e2e

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/wharf-registry/wharf/replicate"
	"github.com/wharf-registry/wharf/upstream/upstreamtest"
)

// promoteConfig configures a Wharf between src ("Harbor A") and dst
// ("Harbor B", basic auth for robot$push), with an API token; it returns
// the config and the token file.
func promoteConfig(t *testing.T, src, dst *upstreamtest.Registry) (cfg, token string) {
	dir := t.TempDir()
	secret, token := filepath.Join(dir, "harbor-b"), filepath.Join(dir, "api-token")
	os.WriteFile(secret, []byte("s3cret\n"), 0o600)
	os.WriteFile(token, []byte("e2e-token-0123456789\n"), 0o600)
	return fmt.Sprintf(`listen: "127.0.0.1:0"
storage:
  root: %s
upstreams:
  - name: harbor-a.example.com
    url: %s
    default: true
    insecure: true
targets:
  - name: harbor-b
    url: %s
    username: robot$push
    password_file: %s
    insecure: true
api:
  token_file: %s
prefetch:
  concurrency: 1
`, filepath.Join(dir, "store"), src.URL, dst.URL, secret, token), token
}

// wharf runs the binary as a client.
func wharf(t *testing.T, args ...string) (stdout, stderr string, err error) {
	cmd := exec.CommandContext(t.Context(), wharfBinary(t), args...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err = cmd.Run()
	return o.String(), e.String(), err
}

// wharf prefetch --wait against the real binary promotes tags from a source
// registry to a basic-auth target; crane then reads the same digests there.
func TestPrefetchPromotesWithCLI(t *testing.T) {
	t.Parallel()
	crane := tool(t, "crane")
	src := upstreamtest.New(t)
	app := src.PushImage(t, "proj/app", "1.0", 70, 2, 64<<10, amd64)
	a := src.PushImage(t, "proj/multi", "", 71, 1, 16<<10, amd64)
	b := src.PushImage(t, "proj/multi", "", 72, 1, 16<<10, ocispec.Platform{OS: "linux", Architecture: "arm64"})
	multi := src.PushIndex(t, "proj/multi", "v1", a, b)
	dst := upstreamtest.New(t, upstreamtest.WithBasicAuth("robot$push", "s3cret"))

	cfg, token := promoteConfig(t, src, dst)
	server := "http://" + startWharf(t, cfg).addr

	_, stderr, err := wharf(t, "prefetch", "--server", server, "harbor-a.example.com/proj/app:1.0")
	if err == nil || !strings.Contains(stderr, "401") || !strings.Contains(stderr, "UNAUTHORIZED") {
		t.Fatalf("without the token: %v %s", err, stderr)
	}

	out, stderr, err := wharf(t, "prefetch", "--server", server, "--token-file", token, "--push-to", "harbor-b",
		"--rename", "harbor-a.example.com/proj/=proj-b/", "--output", "json",
		"harbor-a.example.com/proj/app:1.0", "harbor-a.example.com/proj/multi:v1", "--wait")
	if err != nil {
		t.Fatalf("wharf prefetch --wait: %v\n%s", err, stderr)
	}
	var job replicate.Job
	if err := json.Unmarshal([]byte(out), &job); err != nil || job.State != replicate.StateDone {
		t.Fatalf("final job: %v %s", err, out)
	}
	for _, want := range []string{"done      harbor-a.example.com/proj/app:1.0 -> proj-b/app:1.0 " + app.Manifest.Digest.String(),
		"done      harbor-a.example.com/proj/multi:v1 -> proj-b/multi:v1 " + multi.Manifest.Digest.String(),
		"job " + job.ID + " done: 2 of 2 images done"} {
		if !strings.Contains(stderr, want) {
			t.Errorf("progress lacks %q:\n%s", want, stderr)
		}
	}

	// crane, logged in to the target, sees the source digests.
	cfgDir := t.TempDir()
	auth := base64.StdEncoding.EncodeToString([]byte("robot$push:s3cret"))
	os.WriteFile(filepath.Join(cfgDir, "config.json"), fmt.Appendf(nil, `{"auths": {%q: {"auth": %q}}}`, dst.Host(), auth), 0o600)
	for ref, want := range map[string]string{"proj-b/app:1.0": app.Manifest.Digest.String(), "proj-b/multi:v1": multi.Manifest.Digest.String()} {
		cmd := exec.CommandContext(t.Context(), crane, "digest", "--insecure", dst.Host()+"/"+ref)
		cmd.Env = append(os.Environ(), "DOCKER_CONFIG="+cfgDir)
		got, err := cmd.Output()
		if err != nil || strings.TrimSpace(string(got)) != want {
			t.Fatalf("crane digest %s: %q %v, want %s", ref, got, err, want)
		}
	}

	// --pin keeps an image safe from eviction until wharf pins --unpin.
	if _, stderr, err := wharf(t, "prefetch", "--server", server, "--token-file", token, "--pin", "--wait", "harbor-a.example.com/proj/app:1.0"); err != nil {
		t.Fatalf("prefetch --pin: %v %s", err, stderr)
	}
	pins := func() string {
		out, stderr, err := wharf(t, "pins", "--server", server, "--token-file", token)
		if err != nil {
			t.Fatalf("wharf pins: %v %s", err, stderr)
		}
		return out
	}
	if got, want := pins(), "harbor-a.example.com/proj/app 1.0 "+app.Manifest.Digest.String()+"\n"; got != want {
		t.Fatalf("wharf pins: %q, want %q", got, want)
	}
	if _, stderr, err := wharf(t, "pins", "--server", server, "--token-file", token, "--unpin", "harbor-a.example.com/proj/app:1.0"); err != nil {
		t.Fatalf("unpin: %v %s", err, stderr)
	}
	if got := pins(); got != "" {
		t.Fatalf("after unpin: %q", got)
	}

	// A tag that does not exist fails its image; --wait exits non-zero.
	_, stderr, err = wharf(t, "prefetch", "--server", server, "--token-file", token, "--wait", "harbor-a.example.com/proj/app:9.9")
	if err == nil || !strings.Contains(stderr, "failed    harbor-a.example.com/proj/app:9.9") || !strings.Contains(stderr, "ended failed") {
		t.Fatalf("missing tag: %v\n%s", err, stderr)
	}

	out, _, err = wharf(t, "jobs", "--server", server, "--token-file", token)
	if err != nil || !strings.Contains(out, job.ID) || strings.Count(out, "\n") != 4 {
		t.Fatalf("wharf jobs: %v\n%s", err, out)
	}

	// The push target's health, as a target.
	out, _, err = wharf(t, "targets", "--server", server, "--token-file", token)
	if err != nil || !regexp.MustCompile(`harbor-b +closed +0 +[1-9][0-9]* +[1-9][0-9]* +-`).MatchString(out) {
		t.Fatalf("wharf targets: %v\n%s", err, out)
	}
}

// kill -9 in the middle of a job: the restarted Wharf resumes it by itself,
// leaves the image already done alone and finishes the other.
func TestPrefetchJobSurvivesKill(t *testing.T) {
	t.Parallel()
	src := upstreamtest.New(t)
	app := src.PushImage(t, "proj/app", "1.0", 73, 1, 32<<10, amd64)
	tool := src.PushImage(t, "proj/tool", "2.0", 74, 2, 32<<10, amd64)
	dst := upstreamtest.New(t, upstreamtest.WithBasicAuth("robot$push", "s3cret"))
	reached := holdPut(dst, "/v2/proj/tool/manifests/2.0")
	cfg, token := promoteConfig(t, src, dst)
	w := startWharf(t, cfg)
	out, stderr, err := wharf(t, "prefetch", "--server", "http://"+w.addr, "--token-file", token, "--push-to", "harbor-b",
		"harbor-a.example.com/proj/app:1.0", "harbor-a.example.com/proj/tool:2.0")
	if err != nil {
		t.Fatalf("prefetch: %v %s", err, stderr)
	}
	id := strings.TrimSpace(out)
	<-reached
	w.kill(t)
	dst.SetHook(nil)
	dst.Reset()

	w = startWharf(t, cfg)
	out, stderr, err = wharf(t, "jobs", "--server", "http://"+w.addr, "--token-file", token, "--output", "json", id)
	if err != nil || !strings.Contains(out, `"id": "`+id+`"`) {
		t.Fatalf("wharf jobs %s: %v %s%s", id, err, out, stderr)
	}
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, "http://"+w.addr+"/api/v1/jobs/"+id+"?wait=2m", nil)
	req.Header.Set("Authorization", "Bearer e2e-token-0123456789")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var job replicate.Job
	if err := json.NewDecoder(resp.Body).Decode(&job); err != nil || job.State != replicate.StateDone {
		t.Fatalf("resumed job: %v %+v", err, job)
	}
	out, stderr, err = wharf(t, "jobs", "--server", "http://"+w.addr, "--token-file", token, "--output", "json", id)
	var shown struct{ Images []replicate.Image }
	if err != nil || json.Unmarshal([]byte(out), &shown) != nil || len(shown.Images) != 2 {
		t.Fatalf("wharf jobs %s: %v %s%s", id, err, out, stderr)
	}
	if img := shown.Images[1]; img.BlobsSkipped != 3 || img.BlobsPushed != 0 {
		t.Fatalf("tool after the restart: %d skipped, %d pushed; want its 3 blobs skipped", img.BlobsSkipped, img.BlobsPushed)
	}
	for _, r := range dst.Requests() {
		if strings.HasPrefix(r.Path, "/v2/proj/app/") {
			t.Fatalf("the resumed job touched the image done before the crash: %s %s", r.Method, r.Path)
		}
	}
	for repo, m := range map[string]upstreamtest.Blob{"proj/app:1.0": app.Manifest, "proj/tool:2.0": tool.Manifest} {
		name, tag, _ := strings.Cut(repo, ":")
		resp, body := dst.Get(t, http.MethodGet, "/v2/"+name+"/manifests/"+tag)
		if resp.StatusCode != http.StatusOK || !bytes.Equal(body, m.Data) {
			t.Fatalf("target %s: %d", repo, resp.StatusCode)
		}
	}
}

// holdPut makes dst take a PUT of path and never answer it, until the
// connection closes (a crash): reached is closed once it arrived.
func holdPut(dst *upstreamtest.Registry, path string) (reached <-chan struct{}) {
	ch := make(chan struct{})
	var once sync.Once
	dst.SetHook(func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method != http.MethodPut || r.URL.Path != path {
			return false
		}
		io.Copy(io.Discard, r.Body)
		once.Do(func() { close(ch) })
		<-r.Context().Done()
		return true
	})
	return ch
}
