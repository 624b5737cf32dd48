//go:build e2e

package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wharf-registry/wharf/replicate"
	"github.com/wharf-registry/wharf/upstream/upstreamtest"
)

// largeJob is a Wharf between a source holding a few small images and an
// open target, and a list file of n tag@digest references to them.
type largeJob struct {
	src, dst *upstreamtest.Registry
	cfg      string
	token    string
	list     string
	digests  []string
}

func newLargeJob(t *testing.T, n int) *largeJob {
	t.Helper()
	j := &largeJob{src: upstreamtest.New(t), dst: upstreamtest.New(t)}
	for i := range 4 {
		img := j.src.PushImage(t, "proj/app", "", uint64(80+i), 1, 512, amd64)
		j.digests = append(j.digests, img.Manifest.Digest.String())
	}
	dir := t.TempDir()
	var list strings.Builder
	for i := range n {
		fmt.Fprintf(&list, "harbor-a.example.com/proj/app:t%05d@%s\n", i, j.digests[i%len(j.digests)])
	}
	j.list = filepath.Join(dir, "list.txt")
	j.token = filepath.Join(dir, "token")
	os.WriteFile(j.list, []byte(list.String()), 0o644)
	os.WriteFile(j.token, []byte("large-token-0123456789\n"), 0o600)
	j.cfg = fmt.Sprintf(`listen: "127.0.0.1:0"
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
    insecure: true
api:
  token_file: %s
prefetch:
  concurrency: 16
`, filepath.Join(dir, "store"), j.src.URL, j.dst.URL, j.token)
	return j
}

// job reads a job's record through the API, waiting up to wait for its end.
func (j *largeJob) job(t *testing.T, addr, id, wait string) replicate.Job {
	t.Helper()
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, "http://"+addr+"/api/v1/jobs/"+id+"?wait="+wait, nil)
	req.Header.Set("Authorization", "Bearer large-token-0123456789")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var job replicate.Job
	if err := json.NewDecoder(resp.Body).Decode(&job); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("job %s: %d %v", id, resp.StatusCode, err)
	}
	return job
}

// exact asserts a finished job of n images ended state, every image counted.
func exact(t *testing.T, job replicate.Job, state replicate.State, n int) {
	t.Helper()
	if job.State != state || job.Finished == nil || job.Images != n ||
		job.Done+job.Failed+job.Cancelled != n || job.Queued+job.Running != 0 || job.Error != "" {
		t.Fatalf("job %s: %s, %+v", job.ID, job.State, job)
	}
}

// 10,000 tag@digest references without a target: accepted, stored whole,
// run, and --wait returns with every image done.
func TestPrefetchTenThousandImages(t *testing.T) {
	t.Parallel()
	const n = 10_000
	j := newLargeJob(t, n)
	server := "http://" + startWharf(t, j.cfg).addr
	out, stderr, err := wharf(t, "prefetch", "--server", server, "--token-file", j.token, "-f", j.list, "--wait", "--output", "json")
	if err != nil {
		t.Fatalf("prefetch --wait: %v\n%.2000s", err, stderr)
	}
	var job replicate.Job
	if err := json.Unmarshal([]byte(out), &job); err != nil {
		t.Fatal(err)
	}
	exact(t, job, replicate.StateDone, n)
	if job.Done != n || strings.Count(stderr, "\ndone      ") != n {
		t.Fatalf("%d done; %d image lines", job.Done, strings.Count(stderr, "\ndone      "))
	}
	// Every image resolved by digest: one GET per distinct manifest, and
	// the blobs of the four images once each.
	if m, b := j.src.Count(http.MethodGet, "manifest"), j.src.Count(http.MethodGet, "blob"); m != 4 || b != 8 {
		t.Fatalf("source: %d manifest GETs, %d blob GETs; want 4 and 8", m, b)
	}
	out, _, err = wharf(t, "jobs", "--server", server, "--token-file", j.token, "--failed", job.ID)
	if err != nil || strings.Count(out, "\n") != 1 || !strings.HasPrefix(out, "job "+job.ID+" done: 10000 of 10000 images done") {
		t.Fatalf("wharf jobs --failed: %v\n%s", err, out)
	}
}

// 10,000 references pushed to a target, with kill -9 half way: the restarted
// Wharf resumes the job with every image and ends it done, every tag on the
// target.
func TestPrefetchTenThousandImagesSurviveKill(t *testing.T) {
	t.Parallel()
	const n = 10_000
	j := newLargeJob(t, n)
	w := startWharf(t, j.cfg)
	out, stderr, err := wharf(t, "prefetch", "--server", "http://"+w.addr, "--token-file", j.token, "-f", j.list,
		"--push-to", "harbor-b", "--rename", "harbor-a.example.com/proj/=proj-b/")
	if err != nil {
		t.Fatalf("prefetch: %v %s", err, stderr)
	}
	id := strings.TrimSpace(out)
	deadline := time.Now().Add(2 * time.Minute)
	for job := j.job(t, w.addr, id, "0s"); job.Done < n/5; job = j.job(t, w.addr, id, "0s") {
		if job.Finished != nil || time.Now().After(deadline) {
			t.Fatalf("job did not get to a fifth of its images: %+v", job)
		}
		time.Sleep(50 * time.Millisecond) // polling another process
	}
	w.kill(t)

	w = startWharf(t, j.cfg)
	job := j.job(t, w.addr, id, "5m")
	exact(t, job, replicate.StateDone, n)
	resp, body := j.dst.Get(t, http.MethodGet, "/v2/proj-b/app/tags/list?n=20000")
	var tags struct{ Tags []string }
	if err := json.Unmarshal(body, &tags); err != nil || resp.StatusCode != http.StatusOK || len(tags.Tags) != n {
		t.Fatalf("target tags: %d, %d tags, %v", resp.StatusCode, len(tags.Tags), err)
	}
	resp, _ = j.dst.Get(t, http.MethodGet, "/v2/proj-b/app/manifests/t09999")
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Docker-Content-Digest") != j.digests[9999%4] {
		t.Fatalf("last tag on the target: %d %s", resp.StatusCode, resp.Header.Get("Docker-Content-Digest"))
	}
}

// A list file of 50,000 references is accepted, stored and run; cancelling
// the job ends it cancelled, every image accounted for, and the cancel
// holds across a restart.
func TestPrefetchFiftyThousandImagesCancel(t *testing.T) {
	t.Parallel()
	const n = 50_000
	j := newLargeJob(t, n)
	w := startWharf(t, j.cfg)
	out, stderr, err := wharf(t, "prefetch", "--server", "http://"+w.addr, "--token-file", j.token, "-f", j.list, "--push-to", "harbor-b")
	if err != nil {
		t.Fatalf("prefetch: %v %s", err, stderr)
	}
	id := strings.TrimSpace(out)
	deadline := time.Now().Add(2 * time.Minute)
	for job := j.job(t, w.addr, id, "0s"); job.Done < 100; job = j.job(t, w.addr, id, "0s") {
		if job.Finished != nil || time.Now().After(deadline) {
			t.Fatalf("the job did not get going: %+v", job)
		}
		time.Sleep(50 * time.Millisecond) // polling another process
	}
	out, stderr, err = wharf(t, "jobs", "--server", "http://"+w.addr, "--token-file", j.token, "--cancel", "--output", "json", id)
	var shown struct {
		Job    replicate.Job
		Images []replicate.Image
	}
	if err != nil || json.Unmarshal([]byte(out), &shown) != nil {
		t.Fatalf("cancel: %v %.500s %s", err, out, stderr)
	}
	exact(t, shown.Job, replicate.StateCancelled, n)
	if len(shown.Images) != n || shown.Job.Cancelled == 0 || shown.Job.Done < 100 {
		t.Fatalf("cancelled job shows %d images, %d cancelled", len(shown.Images), shown.Job.Cancelled)
	}
	counts := map[replicate.State]int{}
	for _, img := range shown.Images {
		counts[img.State]++
	}
	if counts[replicate.StateDone] != shown.Job.Done || counts[replicate.StateCancelled] != shown.Job.Cancelled {
		t.Fatalf("images %v, record %+v", counts, shown.Job.Tally)
	}
	w.kill(t)
	w = startWharf(t, j.cfg)
	exact(t, j.job(t, w.addr, id, "0s"), replicate.StateCancelled, n)
}
