package replicate

import (
	"bytes"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/wharf-registry/wharf/cache"
)

func push(tag, to string) JobSpec {
	return JobSpec{PushTo: "b", Images: []ImageRef{{Source: "src/proj/app:" + tag, Upstream: "src", Repo: "proj/app", Ref: tag, TargetRepo: to}}}
}

// An image lands on the target byte for byte under the renamed
// repository: every blob before the tag, each once; the same job again
// sends nothing; into another repository, blobs are mounted.
func TestPromoteCopiesBlobsThenTheTag(t *testing.T) {
	src, dst := newMemRegistry(), newMemRegistry()
	img := src.image("proj/app", "1.0", 1, 3)
	jobs := jobsOver(t, src, dst)

	job, images := runJob(t, jobs, push("1.0", "copy/app"))
	if job.State != StateDone || images[0].BlobsPushed != 4 || images[0].Digest != img.Digest {
		t.Fatalf("job %s, image %+v", job.State, images[0])
	}
	d, body, _, ok := dst.resolve("copy/app", "1.0")
	_, want, _, _ := src.resolve("proj/app", "1.0")
	if !ok || d != img.Digest || !bytes.Equal(body, want) {
		t.Fatalf("target's copy/app:1.0: %s, want %s", d, img.Digest)
	}
	tagAt := slices.IndexFunc(dst.calls, func(c string) bool { return strings.HasPrefix(c, "PushManifest copy/app 1.0") })
	lastBlob := -1
	for i, c := range dst.calls {
		if strings.HasPrefix(c, "PushBlob ") {
			lastBlob = i
		}
	}
	if tagAt < 0 || lastBlob > tagAt || dst.count("PushBlob") != 4 {
		t.Fatalf("target calls %v", dst.calls)
	}

	again, images := runJob(t, jobs, push("1.0", "copy/app"))
	if again.State != StateDone || images[0].BlobsSkipped != 4 || dst.count("PushBlob") != 4 {
		t.Fatalf("again: %s, %+v, %d blob pushes", again.State, images[0], dst.count("PushBlob"))
	}

	other, images := runJob(t, jobs, push("1.0", "other/app"))
	if other.State != StateDone || images[0].BlobsMounted != 4 {
		t.Fatalf("into another repository: %s, %+v", other.State, images[0])
	}
	for _, c := range dst.calls {
		if strings.HasPrefix(c, "PushBlob other/app") && !strings.HasSuffix(c, " copy/app") {
			t.Fatalf("a blob was not mounted from copy/app: %s", c)
		}
	}
}

// An index goes after its children, each by digest: the target never
// holds a tag whose content is missing.
func TestPromoteIndexChildrenFirst(t *testing.T) {
	src, dst := newMemRegistry(), newMemRegistry()
	a, b := src.image("proj/app", "", 2, 1), src.image("proj/app", "", 3, 1)
	idx := src.index("proj/app", "multi", a, b)
	job, _ := runJob(t, jobsOver(t, src, dst), push("multi", "proj/app"))
	if job.State != StateDone {
		t.Fatalf("job %s", job.State)
	}
	var manifests []string
	for _, c := range dst.calls {
		if strings.HasPrefix(c, "PushManifest ") {
			manifests = append(manifests, strings.TrimPrefix(c, "PushManifest proj/app "))
		}
	}
	if len(manifests) != 3 || manifests[2] != "multi" || !slices.Contains(manifests[:2], a.Digest.String()) || !slices.Contains(manifests[:2], b.Digest.String()) {
		t.Fatalf("manifests pushed %v, want both children, then multi (%s)", manifests, idx)
	}
}

// A target failing for a moment is retried and the job ends done; one
// refusing for good fails the image with what to do about it.
func TestPromoteRetriesAndExplains(t *testing.T) {
	src, dst := newMemRegistry(), newMemRegistry()
	src.image("proj/app", "1.0", 4, 2)
	jobs := jobsOver(t, src, dst)
	dst.failNext["PushBlob"] = 2
	job, _ := runJob(t, jobs, push("1.0", "copy/app"))
	if job.State != StateDone {
		t.Fatalf("after two 503s: %s", job.State)
	}
	if _, ok := dst.holds("copy/app", digest.FromBytes(bytes.Repeat([]byte{4, 0}, 1000))); !ok {
		t.Fatal("the first layer is not on the target")
	}
	dst.failFinal["PushManifest"] = http.StatusForbidden
	job, images := runJob(t, jobs, push("1.0", "denied/app"))
	if job.State != StateFailed || !strings.Contains(images[0].Error, "may not push to denied/app") || dst.count("PushManifest") != 2 {
		t.Fatalf("a refusal: %s %q, %d manifest pushes", job.State, images[0].Error, dst.count("PushManifest"))
	}
}

// A rule's job that carries an older digest than the source's tag now
// resolves to (a stale on_pull batch, a run that raced a push) copies
// what the tag resolves to: the target's tag never goes back.
func TestPromoteNeverPushesAnOlderDigest(t *testing.T) {
	src, dst := newMemRegistry(), newMemRegistry()
	old := src.image("proj/app", "1.0", 1, 2)
	jobs := jobsOver(t, src, dst)
	job, images := runJob(t, jobs, push("1.0", "copy/app"))
	if job.State != StateDone || images[0].Digest != old.Digest {
		t.Fatalf("first push: %s %+v", job.State, images[0])
	}
	cur := src.image("proj/app", "1.0", 2, 2) // the tag moves on the source
	dst.image("copy/app", "", 2, 2)           // (the newer blobs need no copy)
	dst.tag("copy/app", "1.0", cur.Digest, ocispec.MediaTypeImageManifest)
	puts := dst.count("PushManifest")

	stale := JobSpec{PushTo: "b", Rule: "r", Images: []ImageRef{{Source: "src/proj/app:1.0", Upstream: "src", Repo: "proj/app",
		Ref: old.Digest.String(), Tag: "1.0", TargetRepo: "copy/app"}}}
	job, images = runJob(t, jobs, stale)
	if d, _, _, _ := dst.resolve("copy/app", "1.0"); job.State != StateDone || images[0].Digest != cur.Digest || d != cur.Digest {
		t.Fatalf("stale job: %s, image %s, target's tag %s; want %s everywhere", job.State, images[0].Digest, d, cur.Digest)
	}
	if n := dst.count("PushManifest"); n != puts {
		t.Fatalf("the stale job pushed %d manifests; the target had them all", n-puts)
	}

	// Asked for by hand, a job pushes what it was asked for.
	byHand := stale
	byHand.Rule = ""
	job, images = runJob(t, jobs, byHand)
	if d, _, _, _ := dst.resolve("copy/app", "1.0"); job.State != StateDone || images[0].Digest != old.Digest || d != old.Digest {
		t.Fatalf("by hand: %s, image %s, target's tag %s; want %s", job.State, images[0].Digest, d, old.Digest)
	}
}

// A target that is unavailable for longer than a few retries (an outage,
// a restart, an open circuit) fails no image while its retry_for lasts;
// past it, the image fails saying so.
func TestPushesRideOutATargetOutage(t *testing.T) {
	src, dst := newMemRegistry(), newMemRegistry()
	src.image("proj/app", "1.0", 5, 2)
	jobs := jobsOver(t, src, dst)
	dst.failNext["PushBlob"], dst.failNext["PushManifest"], dst.failNext["StatBlob"] = 9, 9, 9
	job, images := runJob(t, jobs, push("1.0", "copy/app"))
	if job.State != StateDone || dst.count("PushManifest") != 10 {
		t.Fatalf("after 9 failures of each call: %s %q, %d manifest pushes", job.State, images[0].Error, dst.count("PushManifest"))
	}

	jobs.retryFor = map[string]time.Duration{"b": 20 * time.Millisecond}
	dst.failFinal["PushManifest"] = http.StatusServiceUnavailable
	job, images = runJob(t, jobs, push("1.0", "other/app"))
	if job.State != StateFailed || !strings.Contains(images[0].Error, "target b was unavailable for") {
		t.Fatalf("past retry_for: %s %q", job.State, images[0].Error)
	}
}

// A rule that names no configured upstream or target is refused, with
// what is configured.
func TestRuleNamesWhatIsConfigured(t *testing.T) {
	jobs := jobsOver(t, newMemRegistry(), newMemRegistry())
	for _, c := range []struct {
		rule Rule
		want string
	}{
		{Rule{Name: "r", Sources: []string{"127.0.0.1:15201/proj/app"}, Target: "b"}, `source "127.0.0.1:15201/proj/app" names no configured upstream (a source is <upstream>/<repository>, the upstream by its name; upstreams: src)`},
		{Rule{Name: "r", Sources: []string{"src/proj/*", "harbor-a/*"}, Target: "b"}, `source "harbor-a/*" names no configured upstream`},
		{Rule{Name: "r", Sources: []string{"src/proj/app"}, Target: "harbor-b"}, `no target "harbor-b" is configured (targets: b)`},
	} {
		if _, err := NewRules(jobs, []Rule{c.rule}, 0); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: %v, want it to say %s", c.rule, err, c.want)
		}
	}
	if _, err := NewRules(jobs, []Rule{{Name: "r", Sources: []string{"*/proj/app", "src/proj/*"}, Target: "b"}}, 0); err != nil {
		t.Errorf("a rule over what is configured: %v", err)
	}
}

// An on_pull tag seen but not yet run when Wharf stops (kill -9 included:
// it is saved as it is queued) is run by the next start.
func TestPendingTagsSurviveARestart(t *testing.T) {
	src, dst := newMemRegistry(), newMemRegistry()
	img := src.image("proj/app", "1.0", 6, 1)
	jobs := jobsOver(t, src, dst)
	rule := Rule{Name: "r", Sources: []string{"src/proj/*"}, Target: "b", OnPull: true}
	first, err := NewRules(jobs, []Rule{rule}, time.Hour) // its batch never flushes
	if err != nil {
		t.Fatal(err)
	}
	first.Start()
	first.onTag(cache.TagEvent{Upstream: "src", Repo: "proj/app", Tag: "1.0", Digest: img.Digest})
	if s := first.Status(); s[0].Pending != 1 {
		t.Fatalf("pending before the stop: %d", s[0].Pending)
	}
	first.Close()

	again, err := NewRules(jobs, []Rule{rule}, time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	again.Start()
	defer again.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if d, _, _, ok := dst.resolve("proj/app", "1.0"); ok && d == img.Digest {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the pending tag was not run after the restart")
		}
		time.Sleep(5 * time.Millisecond) // polling the rule's batch, bounded
	}
}

// Each trigger's last run is shown apart (a run of one hides no other's)
// and survives a restart.
func TestRuleRunsByTriggerSurviveARestart(t *testing.T) {
	src, dst := newMemRegistry(), newMemRegistry()
	img := src.image("proj/app", "1.0", 7, 1)
	jobs := jobsOver(t, src, dst)
	rule := Rule{Name: "r", Sources: []string{"src/proj/app"}, Target: "b", OnPull: true}
	first, err := NewRules(jobs, []Rule{rule}, time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	first.Start()
	first.onTag(cache.TagEvent{Upstream: "src", Repo: "proj/app", Tag: "1.0", Digest: img.Digest})
	deadline := time.Now().Add(10 * time.Second)
	for first.Status()[0].Runs == 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond) // polling the batch, bounded
	}
	if _, err := first.Run(t.Context(), "r"); err != nil { // nothing new by hand
		t.Fatal(err)
	}
	first.Close()

	again, err := NewRules(jobs, []Rule{rule}, time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	s := again.Status()[0]
	if len(s.LastRuns) != 2 || s.LastRuns[0].Trigger != "manual" || s.LastRuns[0].State != "nothing new" ||
		s.LastRuns[1].Trigger != "on_pull" || s.LastRuns[1].Images != 1 || s.LastRuns[1].Job == "" || s.LastRun == nil || s.LastRun.Trigger != "manual" {
		t.Fatalf("after a restart: %+v", s)
	}
}
