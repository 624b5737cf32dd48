package proxy_test

import (
	"encoding/json"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/wharf-registry/wharf/cache"
	"github.com/wharf-registry/wharf/replicate"
	"github.com/wharf-registry/wharf/route"
	"github.com/wharf-registry/wharf/upstream/upstreamtest"
)

// ruleJobs lists the jobs of a rule, oldest first.
func ruleJobs(t *testing.T, e *env, rule string) []replicate.Job {
	t.Helper()
	jobs, err := e.jobs.List()
	if err != nil {
		t.Fatal(err)
	}
	var out []replicate.Job
	for _, j := range jobs {
		if j.Rule == rule {
			out = append(out, j)
		}
	}
	return out
}

// waitRuleJobs polls, bounded, until rule has n jobs, and waits for the
// last to end.
func waitRuleJobs(t *testing.T, p *promotion, rule string, n int) replicate.Job {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for len(ruleJobs(t, p.env, rule)) < n {
		if time.Now().After(deadline) {
			t.Fatalf("rule %s: %d jobs within 10s, want %d", rule, len(ruleJobs(t, p.env, rule)), n)
		}
		time.Sleep(10 * time.Millisecond) // polling the rule's batching goroutine
	}
	jobs := ruleJobs(t, p.env, rule)
	if len(jobs) != n {
		t.Fatalf("rule %s: %d jobs, want %d", rule, len(jobs), n)
	}
	p.wait(t, jobs[n-1].ID)
	job, _ := p.env.jobs.Job(jobs[n-1].ID)
	return job
}

func mustRegexp(t *testing.T, expr string) func(string) bool {
	f, err := route.Regexp(expr)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// on_pull: a tag matching the rule is pushed within seconds of a client
// pulling it, once however many clients pull; a tag moved upstream is
// pushed again after revalidation; a tag the filter refuses is not.
func TestReplicationOnPull(t *testing.T) {
	t.Parallel()
	clk := &clock{t: time.Unix(1_800_000_000, 0)}
	// The target is behind a token service, as Harbor is.
	src, dst := upstreamtest.New(t), upstreamtest.New(t, upstreamtest.WithTokenAuth("robot", "s3cret"))
	rule := replicate.Rule{Name: "services-to-b", Sources: []string{"harbor-a.example.com/proj/*"}, Tags: mustRegexp(t, `^v?[0-9]+\.`),
		Target: "harbor-b", Rename: []replicate.Rename{{From: "harbor-a.example.com/proj/", To: "proj-b/"}}, OnPull: true}
	p := newPromotionOn(t, src, dst, t.TempDir(), cache.Config{Now: clk.now}, replicate.Config{}, "", 0, rule)
	p.seed(t)
	src.PushManifest(t, "proj/app", "latest", p.app.MediaType, p.app.Manifest)

	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() { p.getAll(t, 1, "/v2/proj/app/manifests/1.0", p.app.Manifest.Data) })
	}
	wg.Wait()
	p.get(t, "/v2/proj/app/manifests/latest", p.app.Manifest.Data, p.app.Manifest.Digest.String()) // not a version
	job := waitRuleJobs(t, p, "services-to-b", 1)
	if job.State != replicate.StateDone || job.Images != 1 || job.PushTo != "harbor-b" {
		t.Fatalf("on_pull job: %+v", job)
	}
	onTarget(t, dst, "proj-b/app", "1.0", p.app.Manifest)
	if r, _ := dst.Get(t, "GET", "/v2/proj-b/app/manifests/latest"); r.StatusCode != 404 {
		t.Fatalf("latest, refused by the tag filter, reached the target: %d", r.StatusCode)
	}
	if n := authorizedPuts(dst); n != 1 {
		t.Fatalf("%d manifest PUTs on the target, want 1", n)
	}
	if dst.Count(http.MethodGet, "token") == 0 {
		t.Fatal("the target's token service was never asked")
	}

	// Pulled again, unchanged: nothing to do.
	p.get(t, "/v2/proj/app/manifests/1.0", p.app.Manifest.Data, p.app.Manifest.Digest.String())
	// Moved upstream: seen on revalidation once tag_ttl has passed, pushed again.
	for _, b := range p.tool.Blobs() {
		src.PushBlob(t, "proj/app", b)
	}
	src.PushManifest(t, "proj/app", "1.0", p.tool.MediaType, p.tool.Manifest)
	clk.add(2 * time.Hour)
	p.get(t, "/v2/proj/app/manifests/1.0", p.tool.Manifest.Data, p.tool.Manifest.Digest.String())
	job = waitRuleJobs(t, p, "services-to-b", 2)
	if job.State != replicate.StateDone || job.Images != 1 {
		t.Fatalf("moved tag job: %+v", job)
	}
	onTarget(t, dst, "proj-b/app", "1.0", p.tool.Manifest)

	// The status: two runs, nothing pending, the last done.
	var status struct{ Rules []replicate.RuleStatus }
	r := p.do(t, "GET", "/api/v1/replication")
	if r.status != 200 || json.Unmarshal(r.body, &status) != nil || len(status.Rules) != 1 {
		t.Fatalf("status: %d %s", r.status, r.body)
	}
	s := status.Rules[0]
	if s.Name != "services-to-b" || s.Runs != 2 || s.Pending != 0 || s.LastRun == nil || s.LastRun.State != string(replicate.StateDone) ||
		s.LastRun.Trigger != "on_pull" || s.LastRun.Job != job.ID || s.Failures != 0 {
		t.Fatalf("status %+v", s)
	}
	if metric(t, p.env, "wharf_replication_runs_total") != 2 {
		t.Fatalf("wharf_replication_runs_total %v", metric(t, p.env, "wharf_replication_runs_total"))
	}
}

// A scheduled rule lists the tags upstream and pushes those its semver
// range takes that are new or moved, and only those; a rule run by hand
// does the same, and then has nothing new.
func TestReplicationRunPicksUpNewTags(t *testing.T) {
	t.Parallel()
	src, dst := upstreamtest.New(t), upstreamtest.New(t, upstreamtest.WithBasicAuth("robot", "s3cret"))
	in, err := route.Semver(">=1.2 <2")
	if err != nil {
		t.Fatal(err)
	}
	scheduled := replicate.Rule{Name: "app-1x", Sources: []string{"harbor-a.example.com/proj/app"}, Tags: in, Target: "harbor-b",
		Rename: []replicate.Rename{{From: "harbor-a.example.com/proj/", To: "proj-b/"}}, Schedule: "@every 1s"}
	manual := scheduled
	manual.Name, manual.Schedule = "app-1x-by-hand", ""
	p := newPromotionOn(t, src, dst, t.TempDir(), cache.Config{}, replicate.Config{}, "", 0, scheduled, manual)
	p.seed(t)
	for _, tag := range []string{"1.2", "1.5.1", "2.0", "v1.1"} {
		src.PushManifest(t, "proj/app", tag, p.app.MediaType, p.app.Manifest)
	}
	tags := func(job replicate.Job) string {
		images, _, err := p.env.jobs.Images(job.ID, nil, -1, 10)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, img := range images {
			out = append(out, img.Tag)
		}
		return strings.Join(out, " ")
	}
	// The schedule's first run (every second) takes 1.2 and 1.5.1.
	job := waitRuleJobs(t, p, "app-1x", 1)
	if job.State != replicate.StateDone || tags(job) != "1.2 1.5.1" {
		t.Fatalf("first scheduled run: %s %q", job.State, tags(job))
	}
	onTarget(t, dst, "proj-b/app", "1.5.1", p.app.Manifest)
	// A new tag in range: a later scheduled run pushes it alone.
	src.PushManifest(t, "proj/app", "1.7", p.app.MediaType, p.app.Manifest)
	job = waitRuleJobs(t, p, "app-1x", 2)
	if job.State != replicate.StateDone || tags(job) != "1.7" {
		t.Fatalf("second scheduled run: %s %q", job.State, tags(job))
	}
	onTarget(t, dst, "proj-b/app", "1.7", p.app.Manifest)

	// By hand: the rule's own first run takes all three, the second nothing.
	r := p.send(t, "POST", "/api/v1/replication/app-1x-by-hand/run", "application/json", "{}")
	var run struct{ Job replicate.Job }
	if r.status != 202 || json.Unmarshal(r.body, &run) != nil || run.Job.Images != 3 || run.Job.Rule != "app-1x-by-hand" {
		t.Fatalf("manual run: %d %s", r.status, r.body)
	}
	if job := p.wait(t, run.Job.ID); job.State != replicate.StateDone {
		t.Fatalf("manual run's job %s", job.State)
	}
	r = p.send(t, "POST", "/api/v1/replication/app-1x-by-hand/run", "application/json", "{}")
	if r.status != 200 || !strings.Contains(string(r.body), `"nothing new"`) {
		t.Fatalf("second manual run: %d %s", r.status, r.body)
	}
	wantError(t, p.send(t, "POST", "/api/v1/replication/nope/run", "application/json", "{}"), 404, "RULE_UNKNOWN")
}

// authorizedPuts counts the manifest PUTs a target took: with its token,
// not the first try a token challenge answers.
func authorizedPuts(reg *upstreamtest.Registry) int {
	n := 0
	for _, r := range reg.Requests() {
		if r.Method == http.MethodPut && r.Kind() == "manifest" && strings.HasPrefix(r.Authorization, "Bearer ") {
			n++
		}
	}
	return n
}

// Referrers are replicated state: a cosign signature and an SBOM added to
// an image after a rule pushed it reach the target when the image is next
// revalidated (on_pull), and another added later with the rule's next run
// (a schedule's or by hand), which has nothing new after that.
func TestSignaturesAddedLaterAreReplicated(t *testing.T) {
	t.Parallel()
	clk := &clock{t: time.Unix(1_800_000_000, 0)}
	src, dst := upstreamtest.New(t), upstreamtest.New(t, upstreamtest.WithBasicAuth("robot", "s3cret"))
	rule := replicate.Rule{Name: "app-to-b", Sources: []string{"harbor-a.example.com/proj/app"}, Target: "harbor-b",
		Rename: []replicate.Rename{{From: "harbor-a.example.com/proj/", To: "proj-b/"}}, OnPull: true}
	p := newPromotionOn(t, src, dst, t.TempDir(), cache.Config{Now: clk.now}, replicate.Config{}, "", 0, rule)
	p.seed(t)
	p.get(t, "/v2/proj/app/manifests/1.0", p.app.Manifest.Data, p.app.Manifest.Digest.String())
	if job := waitRuleJobs(t, p, "app-to-b", 1); job.State != replicate.StateDone {
		t.Fatalf("first push: %s", job.State)
	}
	onTarget(t, dst, "proj-b/app", "1.0", p.app.Manifest)

	subject := ocispec.Descriptor{MediaType: p.app.MediaType, Digest: p.app.Manifest.Digest, Size: int64(len(p.app.Manifest.Data))}
	sigTag := "sha256-" + p.app.Manifest.Digest.Encoded() + ".sig"
	sig, _ := src.PushArtifact(t, "proj/app", sigTag, "application/vnd.dev.cosign.simplesigning.v1+json", nil, []byte("cosign"))
	sbom, sbomDesc := src.PushArtifact(t, "proj/app", "", "application/spdx+json", &subject, []byte(`{"spdxVersion":"SPDX-2.3"}`))
	src.PushReferrersTag(t, "proj/app", p.app.Manifest.Digest, sbomDesc) // the source has no referrers API
	clk.add(2 * time.Hour)                                               // past tag_ttl: the next pull revalidates 1.0, unmoved
	p.get(t, "/v2/proj/app/manifests/1.0", p.app.Manifest.Data, p.app.Manifest.Digest.String())
	if job := waitRuleJobs(t, p, "app-to-b", 2); job.State != replicate.StateDone || job.Images != 1 {
		t.Fatalf("the push of the new referrers: %+v", job)
	}
	onTarget(t, dst, "proj-b/app", sigTag, sig)
	onTarget(t, dst, "proj-b/app", sbom.Digest.String(), sbom)

	att, _ := src.PushArtifact(t, "proj/app", "sha256-"+p.app.Manifest.Digest.Encoded()+".att", "application/vnd.dsse.envelope.v1+json", nil, []byte("attested"))
	clk.add(2 * time.Hour)
	// A dry run says what a run would push, and why, pushing nothing.
	r := p.send(t, http.MethodPost, "/api/v1/replication/app-to-b/run?dry_run=true", "application/json", "{}")
	want := `{"rule":"app-to-b","state":"dry run","would_push":[{"source":"harbor-a.example.com/proj/app:1.0","target":"harbor-b/proj-b/app:1.0","digest":"` +
		p.app.Manifest.Digest.String() + `","why":"referrers"}]}`
	if r.status != http.StatusOK || strings.TrimSpace(string(r.body)) != want {
		t.Fatalf("dry run: %d %s, want %s", r.status, r.body, want)
	}
	if resp, _ := dst.Get(t, http.MethodGet, "/v2/proj-b/app/manifests/sha256-"+p.app.Manifest.Digest.Encoded()+".att"); resp.StatusCode != http.StatusNotFound {
		t.Fatalf("a dry run pushed: %d", resp.StatusCode)
	}
	r = p.send(t, http.MethodPost, "/api/v1/replication/app-to-b/run", "application/json", "{}")
	var run struct{ Job replicate.Job }
	if r.status != http.StatusAccepted || json.Unmarshal(r.body, &run) != nil || run.Job.Images != 1 {
		t.Fatalf("a run after an attestation was added: %d %s", r.status, r.body)
	}
	if job := p.wait(t, run.Job.ID); job.State != replicate.StateDone {
		t.Fatalf("its job: %s", job.State)
	}
	onTarget(t, dst, "proj-b/app", "sha256-"+p.app.Manifest.Digest.Encoded()+".att", att)
	r = p.send(t, http.MethodPost, "/api/v1/replication/app-to-b/run", "application/json", "{}")
	if r.status != http.StatusOK || !strings.Contains(string(r.body), `"nothing new"`) {
		t.Fatalf("the next run: %d %s", r.status, r.body)
	}
}
