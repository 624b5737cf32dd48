package main

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/wharf-registry/wharf/cache"
	"github.com/wharf-registry/wharf/upstream/upstreamtest"
)

// wharf prefetch --wait against the real binary promotes tags from a source
// registry to a basic-auth target; crane then reads the same digests there.
func TestPrefetchPromotesWithCLI(t *testing.T) {
	crane := tool(t, "crane")
	src := upstreamtest.New(t)
	app := src.PushImage(t, "proj/app", "1.0", 70, 2, 64<<10, amd64)
	a := src.PushImage(t, "proj/multi", "", 71, 1, 16<<10, amd64)
	b := src.PushImage(t, "proj/multi", "", 72, 1, 16<<10, ocispec.Platform{OS: "linux", Architecture: "arm64"})
	multi := src.PushIndex(t, "proj/multi", "v1", a, b)
	dst := upstreamtest.New(t, upstreamtest.WithBasicAuth("robot$push", "s3cret"))

	dir := t.TempDir()
	secret, token := filepath.Join(dir, "harbor-b"), filepath.Join(dir, "api-token")
	os.WriteFile(secret, []byte("s3cret\n"), 0o600)
	os.WriteFile(token, []byte("e2e-token-0123456789\n"), 0o600)
	w := startWharf(t, fmt.Sprintf(`listen: "127.0.0.1:0"
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
`, filepath.Join(dir, "store"), src.URL, dst.URL, secret, token))
	server := "http://" + w.addr

	wharf := func(args ...string) (stdout, stderr string, err error) {
		cmd := exec.CommandContext(t.Context(), wharfBin, args...)
		var o, e bytes.Buffer
		cmd.Stdout, cmd.Stderr = &o, &e
		err = cmd.Run()
		return o.String(), e.String(), err
	}

	_, stderr, err := wharf("prefetch", "--server", server, "harbor-a.example.com/proj/app:1.0")
	if err == nil || !strings.Contains(stderr, "401") || !strings.Contains(stderr, "UNAUTHORIZED") {
		t.Fatalf("without the token: %v %s", err, stderr)
	}

	out, stderr, err := wharf("prefetch", "--server", server, "--token-file", token, "--push-to", "harbor-b",
		"--rename", "harbor-a.example.com/proj/=proj-b/", "--output", "json",
		"harbor-a.example.com/proj/app:1.0", "harbor-a.example.com/proj/multi:v1", "--wait")
	if err != nil {
		t.Fatalf("wharf prefetch --wait: %v\n%s", err, stderr)
	}
	var job cache.Job
	if err := json.Unmarshal([]byte(out), &job); err != nil || job.State != cache.StateDone {
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

	// A tag that does not exist fails its image; --wait exits non-zero.
	_, stderr, err = wharf("prefetch", "--server", server, "--token-file", token, "--wait", "harbor-a.example.com/proj/app:9.9")
	if err == nil || !strings.Contains(stderr, "failed    harbor-a.example.com/proj/app:9.9") || !strings.Contains(stderr, "ended failed") {
		t.Fatalf("missing tag: %v\n%s", err, stderr)
	}

	out, _, err = wharf("jobs", "--server", server, "--token-file", token)
	if err != nil || !strings.Contains(out, job.ID) || strings.Count(out, "\n") != 3 {
		t.Fatalf("wharf jobs: %v\n%s", err, out)
	}
}
