package proxy_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/wharf-registry/wharf/api"
	"github.com/wharf-registry/wharf/replicate"
	"github.com/wharf-registry/wharf/storage"
	"github.com/wharf-registry/wharf/storage/s3test"
	"github.com/wharf-registry/wharf/upstream"
	"github.com/wharf-registry/wharf/upstream/upstreamtest"
)

// The fleet as one service: whichever replica a call lands on, jobs,
// pins, rules and tags give the same answer.

// fleetPromotion is n replicas on one bucket in front of a source
// registry ("Harbor A") with a push target ("Harbor B"), each with rules.
type fleetPromotion struct {
	replicas []*env
	bucket   *s3test.Server
	src, dst *upstreamtest.Registry
}

func newFleetPromotion(t *testing.T, n int, rules ...replicate.Rule) *fleetPromotion {
	t.Helper()
	f := &fleetPromotion{bucket: s3test.Start(t), src: upstreamtest.New(t), dst: upstreamtest.New(t, upstreamtest.WithBasicAuth("robot", "s3cret"))}
	f.replicas = fleetOf(t, n, nil, func(i int, o *envOpts) *env {
		target, err := upstream.New(upstream.Config{Name: "harbor-b", URL: f.dst.URL, Insecure: true, Username: "robot", Password: "s3cret", Push: true}, nil)
		if err != nil {
			t.Fatal(err)
		}
		o.jcfg = replicate.Config{Targets: map[string]replicate.Target{"harbor-b": target}, RetryBackoff: 5 * time.Millisecond}
		o.rules = rules
		r, err := storage.OpenBucket(t.Context(), "s3", f.bucket.Params())
		if err != nil {
			t.Fatal(err)
		}
		o.sopts.Bucket = r
		return newEnvOpts(t, t.TempDir(), *o, spec{name: srcHost, reg: f.src, def: true, ttl: time.Hour, negTTL: time.Hour})
	})
	for _, e := range f.replicas {
		settle(func() int { return n - len(e.fleet.Live()) }, 0)
	}
	return f
}

// Pins set by one replica's job are every replica's: listed by each,
// spared by gc (the bucket hears of them within a second, whether or not
// the config pins anything), and unpinned from any.
func TestFleetPinsAreShared(t *testing.T) {
	f := newFleetPromotion(t, 2)
	img := f.src.PushImage(t, "proj/app", "1.0", 21, 2, 20<<10, amd64)
	a, b := f.replicas[0], f.replicas[1]
	job := a.wait(t, a.submit(t, "application/json", "", `{"images": ["proj/app:1.0"], "pin": true}`))
	if job.State != replicate.StateDone {
		t.Fatalf("job %s", job.State)
	}
	want := `{"pins":[{"upstream":"harbor-a.example.com","repository":"proj/app","reference":"1.0","digest":"` + img.Manifest.Digest.String() + `"}]}`
	for _, e := range f.replicas {
		if r := e.do(t, http.MethodGet, "/api/v1/pins"); r.status != http.StatusOK || string(r.body) != want {
			t.Fatalf("pins on %s: %d %s", e.URL, r.status, r.body)
		}
	}
	bucket, err := storage.OpenBucket(t.Context(), "s3", f.bucket.Params())
	if err != nil {
		t.Fatal(err)
	}
	pinned := settle(func() int {
		res, err := bucket.GC(t.Context(), storage.GCPolicy{PinsAge: time.Hour, Dry: true}, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		return len(img.Blobs()) + 1 - res.Pinned
	}, 0)
	if pinned != 0 {
		t.Fatalf("gc spares %d fewer blobs than the pinned image has", pinned)
	}
	if r := b.do(t, http.MethodDelete, "/api/v1/pins?image=proj/app:1.0"); r.status != http.StatusNoContent {
		t.Fatalf("unpin on the other replica: %d %s", r.status, r.body)
	}
	for _, e := range f.replicas {
		if r := e.do(t, http.MethodGet, "/api/v1/pins"); r.status != http.StatusOK || string(r.body) != `{"pins":[]}` {
			t.Fatalf("pins on %s after unpin: %d %s", e.URL, r.status, r.body)
		}
	}
	wantError(t, a.do(t, http.MethodDelete, "/api/v1/pins?image=proj/app:1.0"), http.StatusNotFound, "PIN_UNKNOWN")
}

// A job taken by one replica answers on every other: its report (waited
// for), its pages of images, cancel, and the list of jobs, which every
// replica merges from all. A job whose replica is down is 503 with
// Retry-After on the others, never 404.
func TestFleetJobsFromAnyReplica(t *testing.T) {
	f := newFleetPromotion(t, 3)
	a, b, c := f.replicas[0], f.replicas[1], f.replicas[2]
	var refs []string
	for i := range 5 {
		f.src.PushImage(t, "proj/app", fmt.Sprint("v", i), uint64(40+i), 1, 10<<10, amd64)
		refs = append(refs, fmt.Sprintf("%q", "proj/app:v"+fmt.Sprint(i)))
	}
	id := a.submit(t, "application/json", "", `{"images": [`+strings.Join(refs, ",")+`]}`)
	job := b.wait(t, id) // waits on a, through b
	if job.State != replicate.StateDone || len(job.Images) != 5 {
		t.Fatalf("job through another replica: %s, %d images", job.State, len(job.Images))
	}
	if got := c.images(t, id, "", 2); len(got) != 5 || got[4].Index != 4 {
		t.Fatalf("pages of images through a third replica: %d images", len(got))
	}
	wantError(t, b.do(t, http.MethodGet, "/api/v1/jobs/0000000000000000nope"), http.StatusNotFound, "JOB_UNKNOWN")

	// One job on each replica: every replica lists all three.
	ids := []string{id, b.submit(t, "application/json", "", `{"images": ["proj/app:v0"]}`), c.submit(t, "application/json", "", `{"images": ["proj/app:v1"]}`)}
	for _, e := range f.replicas {
		for _, id := range ids[1:] {
			e.wait(t, id)
		}
	}
	for _, e := range f.replicas {
		r := e.do(t, http.MethodGet, "/api/v1/jobs")
		var list struct {
			Jobs []replicate.Job
		}
		if r.status != http.StatusOK || json.Unmarshal(r.body, &list) != nil || len(list.Jobs) != 3 {
			t.Fatalf("jobs on %s: %d %s", e.URL, r.status, r.body)
		}
		for i, j := range list.Jobs {
			if j.ID != ids[i] {
				t.Fatalf("jobs on %s, oldest first: %s is %d, want %s", e.URL, j.ID, i, ids[i])
			}
		}
	}

	// Cancel through another replica.
	f.src.PushImage(t, "proj/slow", "1", 50, 1, 10<<10, amd64)
	reached := make(chan struct{})
	var once sync.Once
	f.src.SetHook(func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/") {
			once.Do(func() { close(reached) })
			<-r.Context().Done()
			return true
		}
		return false
	})
	id = a.submit(t, "application/json", "", `{"images": ["proj/slow:1"]}`)
	<-reached
	r := c.do(t, http.MethodDelete, "/api/v1/jobs/"+id)
	var cancelled replicate.Job
	if r.status != http.StatusOK || json.Unmarshal(r.body, &cancelled) != nil || cancelled.State != replicate.StateCancelled {
		t.Fatalf("DELETE through another replica: %d %s", r.status, r.body)
	}
	f.src.SetHook(nil)

	// a stops: its jobs are somewhere the others cannot reach now.
	a.close()
	settle(func() int { return len(b.fleet.Live()) }, 2)
	r = b.do(t, http.MethodGet, "/api/v1/jobs/"+id)
	if r.status != http.StatusServiceUnavailable || r.header.Get("Retry-After") == "" || !strings.Contains(string(r.body), `"code":"UNAVAILABLE"`) {
		t.Fatalf("a job whose replica is down: %d %s %q", r.status, r.body, r.header.Get("Retry-After"))
	}
	r = b.do(t, http.MethodGet, "/api/v1/jobs")
	if !strings.Contains(string(r.body), `"unreachable":["`+a.URL+`"]`) {
		t.Fatalf("the list with a replica down: %d %s", r.status, r.body)
	}
}

// A rule configured on every replica runs on one, its owner: one job and
// one manifest PUT per new tag however many replicas see it pulled and
// however many ticks pass; its status is the owner's from any replica;
// when the owner stops, another takes the rule and nothing is pushed
// twice.
func TestFleetRuleRunsOnce(t *testing.T) {
	rule := replicate.Rule{Name: "to-b", Sources: []string{"harbor-a.example.com/proj/*"}, Target: "harbor-b", OnPull: true, Schedule: "@every 1s"}
	f := newFleetPromotion(t, 3, rule)
	img := f.src.PushImage(t, "proj/app", "1.0", 61, 1, 10<<10, amd64)
	for _, e := range f.replicas {
		e.get(t, "/v2/proj/app/manifests/1.0", img.Manifest.Data, img.Manifest.Digest.String())
	}
	puts := func(tag string) int {
		n := 0
		for _, r := range f.dst.Requests() {
			if r.Method == http.MethodPut && strings.HasSuffix(r.Path, "/manifests/"+tag) {
				n++
			}
		}
		return n
	}
	ownerURL, _ := f.replicas[0].fleet.OwnerOf(api.RuleKey("to-b"))
	var owner *env
	var others []*env
	for _, e := range f.replicas {
		if e.fleet.Self() == ownerURL {
			owner = e
		} else {
			others = append(others, e)
		}
	}
	runs := func(e *env) int { return e.srv.Rules.Status()[0].Runs }
	settle(func() int { return 1 - puts("1.0") }, 0)
	after := runs(owner)
	settle(func() int { return after + 3 - runs(owner) }, 0) // three more ticks
	if puts("1.0") != 1 || runs(owner) < after+3 {
		t.Fatalf("%d manifest PUTs of 1.0 (want 1) over %d runs of the owner", puts("1.0"), runs(owner))
	}
	for _, e := range others {
		if n := runs(e); n != 0 {
			t.Fatalf("a replica that does not own the rule ran it %d times", n)
		}
	}
	var jobs []replicate.Job
	for _, e := range f.replicas {
		r := e.do(t, http.MethodGet, "/api/v1/jobs")
		var list struct{ Jobs []replicate.Job }
		if r.status != http.StatusOK || json.Unmarshal(r.body, &list) != nil {
			t.Fatalf("jobs: %d %s", r.status, r.body)
		}
		if jobs != nil && len(list.Jobs) != len(jobs) {
			t.Fatalf("replicas list %d and %d jobs", len(jobs), len(list.Jobs))
		}
		jobs = list.Jobs
		r = e.do(t, http.MethodGet, "/api/v1/replication")
		var status api.RuleList
		if r.status != http.StatusOK || json.Unmarshal(r.body, &status) != nil || len(status.Rules) != 1 ||
			status.Rules[0].Replica != ownerURL || status.Rules[0].Runs < after+3 {
			t.Fatalf("the rule's status on %s: %d %s", e.URL, r.status, r.body)
		}
	}
	if len(jobs) != 1 || jobs[0].Rule != "to-b" || jobs[0].Images != 1 {
		t.Fatalf("jobs of the fleet: %+v, want one of the rule's, of one image", jobs)
	}

	// The owner stops: another replica takes the rule, pushes the new tag
	// once and 1.0 not again.
	owner.close()
	for _, e := range others {
		settle(func() int { return len(e.fleet.Live()) }, 2)
	}
	img2 := f.src.PushImage(t, "proj/app", "1.1", 62, 1, 10<<10, amd64)
	deadline := time.Now().Add(20 * time.Second)
	for puts("1.1") == 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond) // polling the new owner's schedule, bounded
	}
	settle(func() int { return 1 - puts("1.1") }, 0)
	if puts("1.1") != 1 || puts("1.0") != 1 {
		t.Fatalf("after the owner stopped: %d PUTs of 1.1, %d of 1.0; want one each", puts("1.1"), puts("1.0"))
	}
	others[0].get(t, "/v2/proj/app/manifests/1.1", img2.Manifest.Data, img2.Manifest.Digest.String())
}

// A tag is resolved by its owner for the fleet: one upstream request for
// a new tag however many replicas are asked, every replica serves its
// digest, an index's children are fetched once (through each digest's
// owner), and a tag upstream does not have is one answer everywhere.
func TestFleetTagsAgree(t *testing.T) {
	f := newFleetPromotion(t, 3)
	img := f.src.PushImage(t, "proj/app", "1.0", 71, 1, 10<<10, amd64)
	manifestCalls := func(path string) int {
		n := 0
		for _, r := range f.src.Requests() {
			if r.Kind() == "manifest" && r.Method != http.MethodPut && strings.HasSuffix(r.Path, path) {
				n++
			}
		}
		return n
	}
	for _, e := range f.replicas {
		if r := e.do(t, http.MethodHead, "/v2/proj/app/manifests/1.0"); r.status != http.StatusOK || r.header.Get("Docker-Content-Digest") != img.Manifest.Digest.String() {
			t.Fatalf("HEAD on %s: %d %s", e.URL, r.status, r.header.Get("Docker-Content-Digest"))
		}
	}
	for _, e := range f.replicas {
		e.get(t, "/v2/proj/app/manifests/1.0", img.Manifest.Data, img.Manifest.Digest.String())
	}
	if n, m := manifestCalls("/proj/app/manifests/1.0"), manifestCalls("/proj/app/manifests/"+img.Manifest.Digest.String()); n != 1 || m != 1 {
		t.Fatalf("upstream requests from three replicas: %d for the tag, %d for its manifest by digest; want the owner's HEAD, then its GET", n, m)
	}

	// The tag list: listed upstream once for the fleet, the same on
	// every replica (a tag pushed since shows nowhere until tag_ttl).
	for i, e := range f.replicas {
		if i == 1 {
			f.src.PushManifest(t, "proj/app", "1.1", img.MediaType, img.Manifest)
		}
		if r := e.do(t, http.MethodGet, "/v2/proj/app/tags/list"); r.status != http.StatusOK || string(r.body) != `{"name":"proj/app","tags":["1.0"]}` {
			t.Fatalf("tags on %s: %d %s", e.URL, r.status, r.body)
		}
	}
	if n := f.src.Count(http.MethodGet, "tags"); n != 1 {
		t.Fatalf("the fleet listed the tags upstream %d times, want once", n)
	}

	for _, e := range f.replicas {
		wantError(t, e.do(t, http.MethodGet, "/v2/proj/app/manifests/2.0"), http.StatusNotFound, "MANIFEST_UNKNOWN")
	}
	// Pushed since: every replica still answers as the owner remembers,
	// until its negative_ttl has passed; none has an answer of its own.
	f.src.PushManifest(t, "proj/app", "2.0", img.MediaType, img.Manifest)
	// An index and its children, each asked of every replica: upstream
	// serves each manifest once.
	x := f.src.PushImage(t, "proj/multi", "", 72, 1, 4<<10, amd64)
	y := f.src.PushImage(t, "proj/multi", "", 73, 1, 4<<10, ocispec.Platform{OS: "linux", Architecture: "arm64"})
	idx := f.src.PushIndex(t, "proj/multi", "v1", x, y)
	for _, e := range f.replicas {
		e.get(t, "/v2/proj/multi/manifests/v1", idx.Manifest.Data, idx.Manifest.Digest.String())
		for _, child := range []upstreamtest.Image{x, y} {
			e.get(t, "/v2/proj/multi/manifests/"+child.Manifest.Digest.String(), child.Manifest.Data, child.Manifest.Digest.String())
		}
	}
	for ref, d := range map[string]digest.Digest{"v1": idx.Manifest.Digest, x.Manifest.Digest.String(): x.Manifest.Digest, y.Manifest.Digest.String(): y.Manifest.Digest} {
		n := 0
		for _, r := range f.src.Requests() {
			if r.Kind() == "manifest" && r.Method == http.MethodGet && (r.Path == "/v2/proj/multi/manifests/"+ref || r.Path == "/v2/proj/multi/manifests/"+d.String()) {
				n++
			}
		}
		if n != 1 {
			t.Fatalf("manifest %s was fetched from upstream %d times by three replicas, want once", ref, n)
		}
	}

	for _, e := range f.replicas {
		wantError(t, e.do(t, http.MethodGet, "/v2/proj/app/manifests/2.0"), http.StatusNotFound, "MANIFEST_UNKNOWN")
	}
	if n := manifestCalls("/proj/app/manifests/2.0"); n != 1 {
		t.Fatalf("%d upstream requests for a missing tag from three replicas, want 1", n)
	}
}

// A job whose replica stops mid-job is taken over by another (its spec is
// in the bucket): asked through any replica it is 503 with Retry-After
// until then, never 404, and then it finishes and the target holds the
// image.
func TestFleetJobOutlivesItsReplica(t *testing.T) {
	f := newFleetPromotion(t, 3)
	a, b, c := f.replicas[0], f.replicas[1], f.replicas[2]
	img := f.src.PushImage(t, "proj/slow", "1", 81, 1, 10<<10, amd64)
	reached, release := make(chan struct{}), make(chan struct{})
	t.Cleanup(func() { close(release) })
	var once sync.Once
	f.dst.SetHook(func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method == http.MethodPut && strings.HasSuffix(r.URL.Path, "/manifests/1") {
			io.Copy(io.Discard, r.Body) // else the server never sees the client go
			once.Do(func() { close(reached) })
			select {
			case <-r.Context().Done():
			case <-release:
			}
			return true
		}
		return false
	})
	id := a.submit(t, "application/json", "", `{"images": ["proj/slow:1"], "push_to": "harbor-b"}`)
	<-reached
	// A spec someone with write access to the bucket but not the fleet's
	// secret made from the real one: never run. Its id falls to the same
	// replica as the real job's once a is gone, so the pass that takes the
	// real job over sees it too.
	doc, err := b.store.JobSpec(id)
	if err != nil {
		t.Fatalf("the job's spec is not in the bucket: %v", err)
	}
	owner := func(key string) string {
		best, score := "", uint64(0)
		for _, p := range []string{b.fleet.Self(), c.fleet.Self()} {
			h := sha256.Sum256([]byte(p + "\x00job\x00" + key))
			if s := binary.BigEndian.Uint64(h[:8]); best == "" || s > score {
				best, score = p, s
			}
		}
		return best
	}
	forged := ""
	for i := 0; forged == "" || owner(forged) != owner(id); i++ {
		forged = fmt.Sprintf("%s%04d", id[:len(id)-4], i)
	}
	if err := b.store.PutJobSpec(forged, bytes.ReplaceAll(doc, []byte(id), []byte(forged))); err != nil {
		t.Fatal(err)
	}
	a.close() // its job stays "running" in its index, to be resumed there
	f.dst.SetHook(nil)

	deadline := time.Now().Add(30 * time.Second)
	var r response
	for {
		r = b.do(t, http.MethodGet, "/api/v1/jobs/"+id+"?wait=5s")
		if r.status == http.StatusOK && strings.Contains(string(r.body), `"state":"done"`) {
			break
		}
		if r.status != http.StatusOK && (r.status != http.StatusServiceUnavailable || r.header.Get("Retry-After") == "") {
			t.Fatalf("a job whose replica stopped: %d %s", r.status, r.body)
		}
		if time.Now().After(deadline) {
			t.Fatalf("no replica took the job over within 30s: %d %s", r.status, r.body)
		}
		time.Sleep(50 * time.Millisecond) // polling another replica's adoption, bounded
	}
	if job := c.wait(t, id); job.State != replicate.StateDone || len(job.Images) != 1 || job.Images[0].Digest != img.Manifest.Digest {
		t.Fatalf("the job through the third replica: %s %+v", job.State, job.Images)
	}
	if resp, body := f.dst.Get(t, http.MethodGet, "/v2/proj/slow/manifests/1"); resp.StatusCode != http.StatusOK || digest.FromBytes(body) != img.Manifest.Digest {
		t.Fatalf("the target's proj/slow:1: %d", resp.StatusCode)
	}
	if r := b.do(t, http.MethodGet, "/api/v1/jobs/"+forged); r.status != http.StatusServiceUnavailable {
		t.Fatalf("a forged job spec in the bucket was run: %d %s", r.status, r.body)
	}
}

// The catalog is the fleet's: every replica lists what any holds.
func TestFleetCatalog(t *testing.T) {
	f := newFleetPromotion(t, 3)
	one := f.src.PushImage(t, "proj/one", "1", 85, 1, 4<<10, amd64)
	two := f.src.PushImage(t, "proj/two", "1", 86, 1, 4<<10, amd64)
	three := f.src.PushImage(t, "proj/three", "1", 87, 1, 4<<10, amd64)
	for i, img := range []upstreamtest.Image{one, two, three} {
		f.replicas[i].get(t, "/v2/"+img.Repo+"/manifests/1", img.Manifest.Data, img.Manifest.Digest.String())
	}
	want := `{"repositories":["proj/one","proj/three","proj/two"]}`
	for _, e := range f.replicas {
		if r := e.do(t, http.MethodGet, "/v2/_catalog"); r.status != http.StatusOK || string(r.body) != want {
			t.Fatalf("catalog on %s: %d %s, want %s", e.URL, r.status, r.body, want)
		}
	}
}
