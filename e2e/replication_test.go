//go:build e2e

package e2e

import (
	"bytes"
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/wharf-registry/wharf/replicate"
	"github.com/wharf-registry/wharf/upstream/upstreamtest"
)

// A rule's run, started with wharf replicate RULE --now, is killed with -9
// half way: after the restart the job resumes and finishes, and the rule
// then knows both tags are on the target (a second run has nothing new).
func TestReplicationRunSurvivesKill(t *testing.T) {
	t.Parallel()
	src := upstreamtest.New(t)
	app := src.PushImage(t, "proj/app", "1.2", 75, 1, 32<<10, amd64)
	src.PushManifest(t, "proj/app", "1.3", app.MediaType, app.Manifest)
	src.PushManifest(t, "proj/app", "2.0", app.MediaType, app.Manifest)
	dst := upstreamtest.New(t, upstreamtest.WithBasicAuth("robot$push", "s3cret"))
	reached := holdPut(dst, "/v2/proj-b/app/manifests/1.3")
	cfg, token := promoteConfig(t, src, dst)
	cfg += `replication:
  - name: app-to-b
    sources: [harbor-a.example.com/proj/app]
    semver: '>=1.2 <2'
    target: harbor-b
    rename: {harbor-a.example.com/proj/: proj-b/}
    schedule: '@every 24h'
`
	w := startWharf(t, cfg)
	out, stderr, err := wharf(t, "replicate", "--server", "http://"+w.addr, "--token-file", token, "app-to-b", "--now")
	if err != nil {
		t.Fatalf("replicate --now: %v %s", err, stderr)
	}
	id := strings.TrimSpace(out)
	<-reached
	w.kill(t)
	dst.SetHook(nil)

	w = startWharf(t, cfg)
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, "http://"+w.addr+"/api/v1/jobs/"+id+"?wait=2m", nil)
	req.Header.Set("Authorization", "Bearer e2e-token-0123456789")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var job replicate.Job
	if err := json.NewDecoder(resp.Body).Decode(&job); err != nil || job.State != replicate.StateDone || job.Rule != "app-to-b" || job.Images != 2 {
		t.Fatalf("resumed rule job: %v %+v", err, job)
	}
	for _, tag := range []string{"1.2", "1.3"} {
		resp, body := dst.Get(t, http.MethodGet, "/v2/proj-b/app/manifests/"+tag)
		if resp.StatusCode != http.StatusOK || !bytes.Equal(body, app.Manifest.Data) {
			t.Fatalf("target proj-b/app:%s: %d", tag, resp.StatusCode)
		}
	}
	if resp, _ := dst.Get(t, http.MethodGet, "/v2/proj-b/app/manifests/2.0"); resp.StatusCode != http.StatusNotFound {
		t.Fatalf("2.0, out of range, is on the target: %d", resp.StatusCode)
	}
	if _, stderr, err := wharf(t, "replicate", "--server", "http://"+w.addr, "--token-file", token, "app-to-b", "--now"); err != nil || !strings.Contains(stderr, "nothing new") {
		t.Fatalf("second run: %v %s", err, stderr)
	}
	out, _, err = wharf(t, "replicate", "--server", "http://"+w.addr, "--token-file", token)
	if err != nil || !strings.Contains(out, "app-to-b") || !strings.Contains(out, "harbor-b") || !strings.Contains(out, "nothing new") {
		t.Fatalf("wharf replicate:\n%s %v", out, err)
	}
}
