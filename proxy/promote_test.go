package proxy_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/wharf-registry/wharf/audit"
	"github.com/wharf-registry/wharf/cache"
	"github.com/wharf-registry/wharf/replicate"
	"github.com/wharf-registry/wharf/storage"
	"github.com/wharf-registry/wharf/upstream"
	"github.com/wharf-registry/wharf/upstream/upstreamtest"
)

const srcHost = "harbor-a.example.com"

// promotion is a Wharf in front of a source registry ("Harbor A") with a
// push target behind basic auth ("Harbor B").
type promotion struct {
	*env
	rules    []replicate.Rule // replication rules of the Wharf
	src, dst *upstreamtest.Registry
	app      upstreamtest.Image // proj/app:1.0
	multi    upstreamtest.Index // proj/multi:v1, amd64 and arm64
	tool     upstreamtest.Image // proj/tool:2.0, shares app's first layer
}

func newPromotion(t *testing.T, root string, cfg cache.Config, jcfg replicate.Config, token string, chunk int64) *promotion {
	t.Helper()
	src := upstreamtest.New(t)
	dst := upstreamtest.New(t, upstreamtest.WithBasicAuth("robot", "s3cret"))
	return newPromotionOn(t, src, dst, root, cfg, jcfg, token, chunk)
}

func newPromotionOn(t *testing.T, src, dst *upstreamtest.Registry, root string, cfg cache.Config, jcfg replicate.Config, token string, chunk int64, rules ...replicate.Rule) *promotion {
	t.Helper()
	target, err := upstream.New(upstream.Config{Name: "harbor-b", URL: dst.URL, Insecure: true,
		Username: "robot", Password: "s3cret", ChunkSize: chunk, Push: true}, nil)
	if err != nil {
		t.Fatal(err)
	}
	jcfg.Targets = map[string]replicate.Target{"harbor-b": target}
	jcfg.RetryBackoff = 5 * time.Millisecond
	p := &promotion{src: src, dst: dst, rules: rules}
	p.env = newEnvFull(t, root, storage.Options{}, cfg, jcfg, token, nil, p.rules, spec{name: srcHost, reg: src, def: true, ttl: time.Hour})
	return p
}

// seed pushes the three source images.
func (p *promotion) seed(t *testing.T) {
	t.Helper()
	p.app = p.src.PushImage(t, "proj/app", "1.0", 11, 2, 40<<10, amd64)
	a := p.src.PushImage(t, "proj/multi", "", 12, 2, 20<<10, amd64)
	b := p.src.PushImage(t, "proj/multi", "", 13, 2, 20<<10, ocispec.Platform{OS: "linux", Architecture: "arm64"})
	p.multi = p.src.PushIndex(t, "proj/multi", "v1", a, b)
	own, _ := upstreamtest.Layer(14, 30<<10)
	p.src.PushBlob(t, "proj/tool", p.app.Layers[0])
	p.tool = p.src.PushLayers(t, "proj/tool", "2.0", []upstreamtest.Blob{p.app.Layers[0], own}, nil, amd64)
	p.src.Reset()
	p.dst.Reset()
}

var promoteAll = `{"images": ["harbor-a.example.com/proj/app:1.0", "harbor-a.example.com/proj/multi:v1", "harbor-a.example.com/proj/tool:2.0"],
	"push_to": "harbor-b", "rename": [{"from": "harbor-a.example.com/proj/", "to": "proj-b/"}]}`

// submit posts a job and returns its id.
func (e *env) submit(t *testing.T, contentType, query, body string, hdr ...string) string {
	t.Helper()
	r := e.send(t, http.MethodPost, "/api/v1/prefetch"+query, contentType, body, hdr...)
	if r.status != http.StatusAccepted {
		t.Fatalf("prefetch: %d %s", r.status, r.body)
	}
	var job replicate.Job
	if err := json.Unmarshal(r.body, &job); err != nil {
		t.Fatal(err)
	}
	if loc := r.header.Get("Location"); loc != "/api/v1/jobs/"+job.ID {
		t.Fatalf("Location %q for job %s", loc, job.ID)
	}
	return job.ID
}

// report is a job's record with all its images.
type report struct {
	replicate.Job
	Images []replicate.Image
}

// wait returns the job's report once it has finished.
func (e *env) wait(t *testing.T, id string, hdr ...string) report {
	t.Helper()
	r := e.send(t, http.MethodGet, "/api/v1/jobs/"+id+"?wait=2m", "", "", hdr...)
	if r.status != http.StatusOK {
		t.Fatalf("job %s: %d %s", id, r.status, r.body)
	}
	var job replicate.Job
	if err := json.Unmarshal(r.body, &job); err != nil {
		t.Fatal(err)
	}
	if job.Finished == nil {
		t.Fatalf("job %s not finished: %s", id, r.body)
	}
	return report{Job: job, Images: e.images(t, id, "", 0, hdr...)}
}

// images reads a job's images (in state, if set) page by page, n at a time
// (0: the server's default), following the Link header.
func (e *env) images(t *testing.T, id string, state replicate.State, n int, hdr ...string) []replicate.Image {
	t.Helper()
	path := "/api/v1/jobs/" + id + "/images?state=" + string(state)
	if n > 0 {
		path += fmt.Sprintf("&n=%d", n)
	}
	var all []replicate.Image
	for path != "" {
		r := e.send(t, http.MethodGet, path, "", "", hdr...)
		if r.status != http.StatusOK {
			t.Fatalf("GET %s: %d %s", path, r.status, r.body)
		}
		var page struct{ Images []replicate.Image }
		if err := json.Unmarshal(r.body, &page); err != nil {
			t.Fatal(err)
		}
		all = append(all, page.Images...)
		path = ""
		if link := r.header.Get("Link"); link != "" {
			path = link[strings.Index(link, "<")+1 : strings.Index(link, ">")]
		}
	}
	return all
}

// onTarget asserts the target serves exactly m under repo:ref.
func onTarget(t *testing.T, dst *upstreamtest.Registry, repo, ref string, m upstreamtest.Blob) {
	t.Helper()
	resp, body := dst.Get(t, http.MethodGet, "/v2/"+repo+"/manifests/"+ref)
	if resp.StatusCode != http.StatusOK || !bytes.Equal(body, m.Data) || resp.Header.Get("Docker-Content-Digest") != m.Digest.String() {
		t.Fatalf("target %s:%s: %d, digest %s, want %s", repo, ref, resp.StatusCode, resp.Header.Get("Docker-Content-Digest"), m.Digest)
	}
}

type sums struct{ pushed, skipped, mounted int }

func totals(job report) sums {
	var s sums
	for _, img := range job.Images {
		s.pushed += img.BlobsPushed
		s.skipped += img.BlobsSkipped
		s.mounted += img.BlobsMounted
	}
	return s
}

// A list of tags, one a multi-arch index, lands on the target under the
// renamed repositories with every digest unchanged, each blob fetched once
// from the source and sent once to the target (a layer shared across
// repositories is mounted). The same job again moves nothing.
func TestPrefetchPushesExactTags(t *testing.T) {
	t.Parallel()
	var trail logBuffer
	p := newPromotion(t, t.TempDir(), cache.Config{}, replicate.Config{Audit: audit.New(&trail)}, "", 0)
	p.seed(t)
	id := p.submit(t, "application/json", "", promoteAll)
	job := p.wait(t, id)
	if job.State != replicate.StateDone {
		t.Fatalf("job %s, want done: %+v", job.State, job.Images)
	}
	var pushes []string
	for _, a := range jsonLines(t, &trail) {
		if a["action"] == "push" {
			pushes = append(pushes, fmt.Sprint(a["target"], " ", a["repository"], ":", a["reference"], "@", a["digest"], " ", a["result"], " ", a["job"] == id))
		}
	}
	if want := []string{
		"harbor-b proj-b/app:1.0@" + p.app.Manifest.Digest.String() + " pushed true",
		"harbor-b proj-b/multi:v1@" + p.multi.Manifest.Digest.String() + " pushed true",
		"harbor-b proj-b/tool:2.0@" + p.tool.Manifest.Digest.String() + " pushed true",
	}; !sameLines(pushes, want) {
		t.Fatalf("audit of the pushes:\n%q\nwant\n%q", pushes, want)
	}
	want := []struct {
		target string
		digest string
	}{{"proj-b/app:1.0", p.app.Manifest.Digest.String()}, {"proj-b/multi:v1", p.multi.Manifest.Digest.String()}, {"proj-b/tool:2.0", p.tool.Manifest.Digest.String()}}
	for i, img := range job.Images {
		if img.State != replicate.StateDone || img.Target != want[i].target || img.Digest.String() != want[i].digest {
			t.Errorf("image %d: %s %s %s, want done %s %s", i, img.State, img.Target, img.Digest, want[i].target, want[i].digest)
		}
	}
	onTarget(t, p.dst, "proj-b/app", "1.0", p.app.Manifest)
	onTarget(t, p.dst, "proj-b/multi", "v1", p.multi.Manifest)
	for _, child := range p.multi.Images {
		onTarget(t, p.dst, "proj-b/multi", child.Manifest.Digest.String(), child.Manifest)
	}
	onTarget(t, p.dst, "proj-b/tool", "2.0", p.tool.Manifest)
	for _, b := range p.tool.Blobs() {
		if resp, _ := p.dst.Get(t, http.MethodGet, "/v2/proj-b/tool/blobs/"+b.Digest.String()); resp.StatusCode != http.StatusOK {
			t.Fatalf("target lacks tool blob %s: %d", b.Digest, resp.StatusCode)
		}
	}

	// 3 + 6 + 2 distinct blobs: each fetched once and uploaded once; the
	// layer tool shares with app is mounted.
	if n := p.src.Count(http.MethodGet, "blob"); n != 11 {
		t.Errorf("source blob GETs: %d, want 11", n)
	}
	if s := totals(job); s != (sums{pushed: 11, mounted: 1}) {
		t.Errorf("blobs %+v, want 11 pushed, 1 mounted", s)
	}
	if n := p.dst.Count(http.MethodPut, "upload"); n != 11 {
		t.Errorf("target upload PUTs: %d, want 11", n)
	}
	if n := p.dst.Count(http.MethodPut, "manifest"); n != 5 {
		t.Errorf("target manifest PUTs: %d, want 5", n)
	}
	if n := metric(t, p.env, "wharf_push_blobs_total"); n != 12 {
		t.Errorf("wharf_push_blobs_total %v, want 12", n)
	}
	if n, want := metric(t, p.env, "wharf_prefetch_images_total"), 3.0; n != want {
		t.Errorf("wharf_prefetch_images_total %v, want %v", n, want)
	}
	for _, img := range job.Images {
		if img.BytesDone != img.BytesTotal || img.BytesFetched+img.BytesCached != img.BytesTotal || img.BytesFetched == 0 {
			t.Errorf("%s: %d of %d bytes done, %d fetched, %d cached", img.Source, img.BytesDone, img.BytesTotal, img.BytesFetched, img.BytesCached)
		}
	}

	p.src.Reset()
	p.dst.Reset()
	again := p.wait(t, p.submit(t, "application/json", "", promoteAll))
	if again.State != replicate.StateDone || totals(again) != (sums{skipped: 12}) {
		t.Fatalf("second job: %s %+v, want done with 12 skipped", again.State, totals(again))
	}
	for _, img := range again.Images {
		if img.BytesFetched != 0 || img.BytesCached != img.BytesTotal || img.BytesPushed != 0 {
			t.Errorf("second job, %s: %d fetched, %d cached of %d, %d pushed", img.Source, img.BytesFetched, img.BytesCached, img.BytesTotal, img.BytesPushed)
		}
	}
	// Nothing from the source but the referrers lists of its 5 manifests
	// (distribution has no referrers API, and its 404 is remembered for
	// negative_ttl, 0 here): every tag list is cached.
	wantCounts(t, p.src, map[string]int{"GET referrers": 5})
	for _, kind := range []string{"upload", "manifest"} {
		if n := p.dst.Count(http.MethodPut, kind) + p.dst.Count(http.MethodPost, kind); n != 0 {
			t.Errorf("second job: %d target %s writes", n, kind)
		}
	}
}

// Blobs the target already holds are not sent again.
func TestPrefetchSendsOnlyMissingBlobs(t *testing.T) {
	t.Parallel()
	p := newPromotion(t, t.TempDir(), cache.Config{}, replicate.Config{}, "", 0)
	p.seed(t)
	p.dst.PushBlob(t, "proj-b/app", p.app.Config)
	p.dst.PushBlob(t, "proj-b/app", p.app.Layers[0])
	p.dst.Reset()
	// The reference names no registry (the default upstream serves it);
	// the rename still applies to its routed form.
	job := p.wait(t, p.submit(t, "application/json", "", `{"images": ["proj/app:1.0"], "push_to": "harbor-b",
		"rename": [{"from": "harbor-a.example.com/proj/", "to": "proj-b/"}]}`))
	if job.State != replicate.StateDone || totals(job) != (sums{pushed: 1, skipped: 2}) {
		t.Fatalf("job %s %+v, want done with 1 pushed and 2 skipped", job.State, totals(job))
	}
	if n := p.dst.Count(http.MethodPost, "upload"); n != 1 {
		t.Errorf("target uploads: %d, want 1", n)
	}
	onTarget(t, p.dst, "proj-b/app", "1.0", p.app.Manifest)
	// The skipped blobs are cached all the same.
	if n := p.src.Count(http.MethodGet, "blob"); n != 3 {
		t.Errorf("source blob GETs: %d, want 3", n)
	}
}

// One image's manifest failing on the target leaves the others done and
// the job partial, with the reason; a server error is retried first. The
// failing tag never appears on the target.
func TestPrefetchPartialWhenTargetFailsOneManifest(t *testing.T) {
	t.Parallel()
	p := newPromotion(t, t.TempDir(), cache.Config{}, replicate.Config{RetryFor: map[string]time.Duration{"harbor-b": 2 * time.Second}}, "", 0)
	p.seed(t)
	p.dst.SetHook(func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method == http.MethodPut && r.URL.Path == "/v2/proj-b/tool/manifests/2.0" {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusInternalServerError)
			w.Write([]byte(`{"errors":[{"code":"UNKNOWN","message":"disk on fire"}]}`))
			return true
		}
		return false
	})
	job := p.wait(t, p.submit(t, "application/json", "", promoteAll))
	if job.State != replicate.StatePartial {
		t.Fatalf("job %s, want partial", job.State)
	}
	for _, img := range job.Images {
		failed := img.Repository == "proj/tool"
		if failed != (img.State == replicate.StateFailed) || (!failed && img.State != replicate.StateDone) {
			t.Errorf("%s: %s (%s)", img.Source, img.State, img.Error)
		}
		if failed && (!strings.Contains(img.Error, "500") || !strings.Contains(img.Error, "disk on fire") || !strings.Contains(img.Error, "proj-b/tool:2.0") ||
			!strings.Contains(img.Error, "target harbor-b was unavailable for 2s (its retry_for)")) {
			t.Errorf("reason %q lacks the status, message, reference or retry_for", img.Error)
		}
	}
	puts := 0
	for _, r := range p.dst.Requests() {
		if r.Method == http.MethodPut && r.Path == "/v2/proj-b/tool/manifests/2.0" {
			puts++
		}
	}
	if puts < 2 {
		t.Errorf("failing manifest PUT %d times: not asked again within its retry_for", puts)
	}
	p.dst.SetHook(nil)
	if resp, _ := p.dst.Get(t, http.MethodGet, "/v2/proj-b/tool/manifests/2.0"); resp.StatusCode != http.StatusNotFound {
		t.Errorf("failed tag on the target: %d", resp.StatusCode)
	}
	onTarget(t, p.dst, "proj-b/app", "1.0", p.app.Manifest)
}

// Bad input is refused whole, every problem listed, nothing started.
func TestPrefetchRejectsBadInput(t *testing.T) {
	t.Parallel()
	p := newPromotion(t, t.TempDir(), cache.Config{}, replicate.Config{}, "t0ken", 0)
	p.apiAuth = "Bearer t0ken" // text and YAML bodies need a credential
	for _, tc := range []struct {
		name, contentType, body string
		want                    []string // "item code" in order
	}{
		{"items", "application/json", `{"images": ["harbor-a.example.com/proj/app:1.0", "Not A Ref!", "quay.io/x/y:1", "harbor-a.example.com/proj/app:1.0"],
			"push_to": "harbor-c", "platforms": ["linux"]}`,
			[]string{"push_to INVALID", "platforms[0] INVALID", "images[1] NAME_INVALID", "images[2] NAME_UNKNOWN", "images[3] INVALID"}},
		{"empty", "application/json", `{"images": []}`, []string{"images INVALID"}},
		{"empty text", "text/plain", "# nothing\n\n", []string{"images INVALID"}},
		{"unknown field", "application/json", `{"imagez": ["a"]}`, []string{" INVALID"}},
		{"not json", "application/json", `images: [a]`, []string{" INVALID"}},
		{"content type", "application/xml", `<images/>`, []string{" INVALID"}},
		{"too large", "text/plain", strings.Repeat("harbor-a.example.com/proj/app:1.0\n", 500_000), []string{" INVALID"}},
		{"many problems", "text/plain", strings.Repeat("Bad!\n", 1000), manyProblems()},
		{"rename without target", "application/json", `{"images": ["proj/app:1.0"], "rename": [{"from": "a", "to": "b"}]}`, []string{"rename INVALID"}},
		{"bad rename", "application/json", `{"images": ["proj/app:1.0"], "push_to": "harbor-b", "rename": [{"from": "proj/", "to": "UP/"}]}`, []string{"images[0] NAME_INVALID"}},
		{"same target", "application/json", `{"images": ["proj/app:1.0", "proj/tool:1.0@sha256:` + strings.Repeat("ab", 32) + `"], "push_to": "harbor-b",
			"rename": [{"from": "harbor-a.example.com/proj/tool", "to": "proj/app"}]}`, []string{"images[1] INVALID"}},
		{"bad semver", "application/yaml", "harbor-a.example.com:\n  images-by-semver:\n    proj/app: 'one point oh'\n", []string{"harbor-a.example.com/proj/app INVALID"}},
		{"bad regex", "application/yaml", "harbor-a.example.com:\n  images-by-tag-regex:\n    proj/app: '(('\n", []string{"harbor-a.example.com/proj/app INVALID"}},
		{"sync credentials", "application/yaml", "harbor-a.example.com:\n  credentials: {username: a, password: b}\n  images:\n    proj/app: ['1.0']\n", []string{"harbor-a.example.com INVALID"}},
		{"sync tls-verify against the upstream", "application/yaml", "harbor-a.example.com:\n  tls-verify: true\n  images:\n    proj/app: ['1.0']\n", []string{"harbor-a.example.com INVALID"}},
		{"sync unknown registry", "application/yaml", "127.0.0.9:1:\n  images:\n    proj/app: ['1.0']\n", []string{"127.0.0.9:1 INVALID"}},
		{"sync unknown key", "application/yaml", "harbor-a.example.com:\n  tls-verify: false\n  image:\n    proj/app: ['1.0']\n", []string{" INVALID"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := p.send(t, http.MethodPost, "/api/v1/prefetch", tc.contentType, tc.body)
			if r.status != http.StatusBadRequest {
				t.Fatalf("%d %s", r.status, r.body)
			}
			var doc struct {
				Errors []struct {
					Code   string            `json:"code"`
					Detail map[string]string `json:"detail"`
				} `json:"errors"`
			}
			if err := json.Unmarshal(r.body, &doc); err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, e := range doc.Errors {
				got = append(got, e.Detail["item"]+" "+e.Code)
			}
			if strings.Join(got, ",") != strings.Join(tc.want, ",") {
				t.Fatalf("errors %q, want %q\n%s", got, tc.want, r.body)
			}
		})
	}
	r := p.do(t, http.MethodGet, "/api/v1/jobs")
	if r.status != http.StatusOK || string(r.body) != `{"jobs":[]}` {
		t.Fatalf("jobs after bad requests: %d %s", r.status, r.body)
	}
	if n := p.src.Total() + p.dst.Total(); n != 0 {
		t.Fatalf("bad requests caused %d registry requests", n)
	}
}

// manyProblems is what a list of 1000 bad references is told: the first
// 100, then how many more.
func manyProblems() []string {
	var want []string
	for i := range 100 {
		want = append(want, fmt.Sprintf("images[%d] NAME_INVALID", i))
	}
	return append(want, " INVALID")
}

// With api.token_file the API wants the token; without one it answers
// loopback clients only.
func TestPrefetchAPIAuth(t *testing.T) {
	t.Parallel()
	p := newPromotion(t, t.TempDir(), cache.Config{}, replicate.Config{}, "t0ken", 0)
	p.seed(t)
	body := `{"images": ["harbor-a.example.com/proj/app:1.0"]}`
	for _, hdr := range [][]string{nil, {"Authorization", "Bearer nope"}, {"Authorization", "Basic dDBrZW4="}} {
		r := p.send(t, http.MethodPost, "/api/v1/prefetch", "application/json", body, hdr...)
		wantError(t, r, http.StatusUnauthorized, "UNAUTHORIZED")
		if r.header.Get("WWW-Authenticate") == "" {
			t.Fatal("401 without a challenge")
		}
	}
	wantError(t, p.do(t, http.MethodGet, "/api/v1/jobs"), http.StatusUnauthorized, "UNAUTHORIZED")
	wantError(t, p.do(t, http.MethodGet, "/api/v1/upstreams"), http.StatusUnauthorized, "UNAUTHORIZED")
	if n := p.src.Total(); n != 0 {
		t.Fatalf("refused requests caused %d upstream requests", n)
	}
	auth := []string{"Authorization", "Bearer t0ken"}
	job := p.wait(t, p.submit(t, "application/json", "", body, auth...), auth...)
	if job.State != replicate.StateDone {
		t.Fatalf("job %s", job.State)
	}
	// The registry API stays open.
	p.get(t, "/v2/proj/app/manifests/1.0", p.app.Manifest.Data, p.app.Manifest.Digest.String())

	open := newPromotion(t, t.TempDir(), cache.Config{}, replicate.Config{}, "", 0)
	req, _ := http.NewRequest(http.MethodGet, "/api/v1/jobs", nil)
	req.RemoteAddr = "192.0.2.7:40000"
	rec := httptest.NewRecorder()
	open.Config.Handler.ServeHTTP(rec, req)
	if rec.Code != http.StatusForbidden || !strings.Contains(rec.Body.String(), "DENIED") {
		t.Fatalf("remote client without a token configured: %d %s", rec.Code, rec.Body)
	}
}

// Text lists and skopeo sync YAML work as they are; a regexp is matched
// against the tags upstream has now. Without a target the job only warms
// the cache.
func TestPrefetchTextAndSyncYAML(t *testing.T) {
	t.Parallel()
	p := newPromotion(t, t.TempDir(), cache.Config{}, replicate.Config{JobImages: 1}, "t0ken", 0)
	p.apiAuth = "Bearer t0ken" // text and YAML bodies need a credential
	p.seed(t)
	p.src.PushManifest(t, "proj/tool", "2.1", p.tool.MediaType, p.tool.Manifest)
	p.src.PushManifest(t, "proj/tool", "3.0", p.tool.MediaType, p.tool.Manifest)
	p.src.Reset()

	text := "# rollout 42\nharbor-a.example.com/proj/app:1.0   # the app\n\nproj/multi:v1\n"
	job := p.wait(t, p.submit(t, "text/plain", "?platform=linux/arm64", text))
	if job.State != replicate.StateDone || len(job.Images) != 2 || job.Images[1].Source != "proj/multi:v1" || job.Images[1].Upstream != srcHost {
		t.Fatalf("text job: %s %+v", job.State, job.Images)
	}
	// Only the arm64 child of the index: its manifest and 3 blobs, plus app's 3.
	if nc := job.Images[1].NotCopied; len(nc) != 1 || nc[0].Digest != p.multi.Images[0].Manifest.Digest || nc[0].Platform != "linux/amd64" {
		t.Fatalf("not copied: %+v", nc)
	}
	// For referrers: the referrers API (absent) of each of the 3 manifests
	// and the tag list of each of the 2 repositories.
	wantCounts(t, p.src, map[string]int{"GET manifest": 3, "GET blob": 6, "GET referrers": 3, "GET tags": 2})
	if job.Images[0].BytesFetched == 0 || job.Images[0].BytesCached != 0 {
		t.Errorf("app: fetched %d, cached %d", job.Images[0].BytesFetched, job.Images[0].BytesCached)
	}

	p.src.Reset()
	yml := `harbor-a.example.com:
  images:
    proj/app: ["1.0"]
  images-by-tag-regex:
    proj/tool: ^2\.
  tls-verify: false
`
	job = p.wait(t, p.submit(t, "application/yaml", "", yml))
	var got []string
	for _, img := range job.Images {
		got = append(got, img.Source)
	}
	if want := "harbor-a.example.com/proj/app:1.0 harbor-a.example.com/proj/tool:2.0 harbor-a.example.com/proj/tool:2.1"; strings.Join(got, " ") != want {
		t.Fatalf("yaml images %q, want %q", got, want)
	}
	if job.State != replicate.StateDone || job.Images[0].BytesCached == 0 || job.Images[0].BytesFetched != 0 {
		t.Fatalf("yaml job %s; app fetched %d cached %d", job.State, job.Images[0].BytesFetched, job.Images[0].BytesCached)
	}
	// One tag list, the two tool tags, tool's 2 blobs of its own; a
	// referrers request per image (one image at a time: concurrent ones
	// for the same digest would share one).
	wantCounts(t, p.src, map[string]int{"GET tags": 1, "GET manifest": 2, "GET blob": 2, "GET referrers": 3})

	// An empty tag list means every tag there is.
	p.src.Reset()
	job = p.wait(t, p.submit(t, "application/yaml", "", "harbor-a.example.com:\n  images:\n    proj/multi: []\n"))
	if job.State != replicate.StateDone || len(job.Images) != 1 || job.Images[0].Source != "harbor-a.example.com/proj/multi:v1" {
		t.Fatalf("all tags: %s %+v", job.State, job.Images)
	}
	// The amd64 child the arm64-only job left out, and its 3 blobs (the tag
	// list is the cached one); a referrers request per manifest.
	wantCounts(t, p.src, map[string]int{"GET manifest": 1, "GET blob": 3, "GET referrers": 3})

	// images-by-semver: the range read as skopeo reads it (tool has 2.0,
	// 2.1 and 3.0; latest and other words are no versions).
	job = p.wait(t, p.submit(t, "application/yaml", "", "harbor-a.example.com:\n  images-by-semver:\n    proj/tool: '>=2.1 <3'\n"))
	if job.State != replicate.StateDone || len(job.Images) != 1 || job.Images[0].Source != "harbor-a.example.com/proj/tool:2.1" {
		t.Fatalf("semver: %s %+v", job.State, job.Images)
	}
}

// A large blob goes in chunks; a chunk that fails is resumed from what the
// target holds.
func TestPrefetchChunkedUploadResumes(t *testing.T) {
	t.Parallel()
	p := newPromotion(t, t.TempDir(), cache.Config{}, replicate.Config{}, "", 64<<10)
	big := upstreamtest.NewBlob(upstreamtest.Random(21, 200<<10))
	img := p.src.PushLayers(t, "proj/big", "1", []upstreamtest.Blob{big}, nil, amd64)
	var patches atomic.Int32
	p.dst.SetHook(func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method == http.MethodPatch && patches.Add(1) == 2 {
			w.WriteHeader(http.StatusBadGateway)
			return true
		}
		return false
	})
	job := p.wait(t, p.submit(t, "application/json", "", `{"images": ["proj/big:1"], "push_to": "harbor-b"}`))
	if job.State != replicate.StateDone {
		t.Fatalf("job %s: %s", job.State, job.Images[0].Error)
	}
	if n := p.dst.Count(http.MethodPatch, "upload"); n != 5 {
		t.Errorf("PATCHes: %d, want 4 chunks and 1 retried", n)
	}
	if n := p.dst.Count(http.MethodGet, "upload"); n != 1 {
		t.Errorf("upload status checks: %d, want 1", n)
	}
	resp, body := p.dst.Get(t, http.MethodGet, "/v2/proj/big/blobs/"+big.Digest.String())
	if resp.StatusCode != http.StatusOK || !bytes.Equal(body, big.Data) {
		t.Fatalf("target blob: %d, %d bytes", resp.StatusCode, len(body))
	}
	onTarget(t, p.dst, "proj/big", "1", img.Manifest)
}

// A job cut off by a shutdown resumes at the next start: images already
// done are not redone, blobs already pushed are skipped, and the job ends
// done only when every image is on the target.
func TestPrefetchResumesAfterRestart(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	src := upstreamtest.New(t)
	dst := upstreamtest.New(t, upstreamtest.WithBasicAuth("robot", "s3cret"))
	p := newPromotionOn(t, src, dst, root, cache.Config{}, replicate.Config{JobImages: 1}, "", 0)
	p.seed(t)
	// Hold tool's manifest: by then app is done and tool's blobs are on
	// the target.
	reached := make(chan struct{})
	var once sync.Once
	dst.SetHook(func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method == http.MethodPut && r.URL.Path == "/v2/proj/tool/manifests/2.0" {
			io.Copy(io.Discard, r.Body) // so the server notices the client leave
			once.Do(func() { close(reached) })
			<-r.Context().Done()
			return true
		}
		return false
	})
	body := `{"images": ["proj/app:1.0", "proj/tool:2.0"], "push_to": "harbor-b"}`
	id := p.submit(t, "application/json", "", body)
	<-reached
	p.close() // a shutdown: the job stops as it stands
	dst.SetHook(nil)
	dst.Reset()

	p2 := newPromotionOn(t, src, dst, root, cache.Config{}, replicate.Config{}, "", 0)
	job := p2.wait(t, id)
	if job.State != replicate.StateDone {
		t.Fatalf("resumed job %s: %+v", job.State, job.Images)
	}
	app, tool := job.Images[0], job.Images[1]
	if app.BlobsPushed != 3 || tool.BlobsPushed != 0 || tool.BlobsSkipped != 3 || tool.BlobsMounted != 0 {
		t.Fatalf("app pushed %d; tool pushed %d, skipped %d, mounted %d", app.BlobsPushed, tool.BlobsPushed, tool.BlobsSkipped, tool.BlobsMounted)
	}
	for _, r := range dst.Requests() {
		if strings.HasPrefix(r.Path, "/v2/proj/app/") {
			t.Fatalf("resumed job touched the done image: %s %s", r.Method, r.Path)
		}
	}
	onTarget(t, dst, "proj/app", "1.0", p.app.Manifest)
	onTarget(t, dst, "proj/tool", "2.0", p.tool.Manifest)
}

// DELETE stops a running job; it ends cancelled and stays so.
func TestPrefetchCancel(t *testing.T) {
	t.Parallel()
	p := newPromotion(t, t.TempDir(), cache.Config{}, replicate.Config{}, "", 0)
	p.seed(t)
	reached := make(chan struct{})
	var once sync.Once
	p.dst.SetHook(func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method == http.MethodPut && strings.Contains(r.URL.Path, "/blobs/uploads/") {
			io.Copy(io.Discard, r.Body) // so the server notices the client leave
			once.Do(func() { close(reached) })
			<-r.Context().Done()
			return true
		}
		return false
	})
	id := p.submit(t, "application/json", "", promoteAll)
	<-reached
	r := p.send(t, http.MethodDelete, "/api/v1/jobs/"+id, "", "")
	var job replicate.Job
	if r.status != http.StatusOK || json.Unmarshal(r.body, &job) != nil || job.State != replicate.StateCancelled {
		t.Fatalf("DELETE: %d %s", r.status, r.body)
	}
	rep := p.wait(t, id)
	if rep.State != replicate.StateCancelled || rep.Cancelled+rep.Done != 3 || rep.Queued+rep.Running+rep.Failed != 0 {
		t.Fatalf("after cancel: %s %+v", rep.State, rep.Tally)
	}
	wantError(t, p.do(t, http.MethodGet, "/api/v1/jobs/nope"), http.StatusNotFound, "JOB_UNKNOWN")
}

// pin: true keeps a prefetched image through eviction until it is unpinned.
func TestPrefetchPins(t *testing.T) {
	t.Parallel()
	p := newPromotion(t, t.TempDir(), cache.Config{MaxSize: 400 << 10, HighWater: 0.9, LowWater: 0.5}, replicate.Config{}, "", 0)
	p.seed(t)
	job := p.wait(t, p.submit(t, "application/json", "", `{"images": ["proj/app:1.0"], "pin": true}`))
	if job.State != replicate.StateDone {
		t.Fatalf("job %s", job.State)
	}
	r := p.do(t, http.MethodGet, "/api/v1/pins")
	want := `{"pins":[{"upstream":"harbor-a.example.com","repository":"proj/app","reference":"1.0","digest":"` + p.app.Manifest.Digest.String() + `"}]}`
	if r.status != http.StatusOK || string(r.body) != want {
		t.Fatalf("pins: %d %s", r.status, r.body)
	}
	for i := range 6 { // 6 × 100 KiB of other images overflow 400 KiB
		img := p.src.PushImage(t, "proj/filler", fmt.Sprint("x", i), uint64(30+i), 1, 100<<10, amd64)
		pull(t, p.env, "proj/filler", img, "")
	}
	p.cache.Close(t.Context()) // let eviction passes finish
	if n := metric(t, p.env, "wharf_evictions_total"); n == 0 {
		t.Fatal("nothing evicted")
	}
	for _, b := range p.app.Blobs() {
		if _, err := p.store.Blob(b.Digest); err != nil {
			t.Fatalf("pinned blob %s evicted", b.Digest)
		}
	}
	if r := p.send(t, http.MethodDelete, "/api/v1/pins?image=proj/app:1.0", "", ""); r.status != http.StatusNoContent {
		t.Fatalf("unpin: %d %s", r.status, r.body)
	}
	wantError(t, p.send(t, http.MethodDelete, "/api/v1/pins?image=proj/app:1.0", "", ""), http.StatusNotFound, "PIN_UNKNOWN")
}

// A target that hands out bearer tokens, as Harbor does: one token per
// target repository, for pull and push, serves every request there, and the
// password only ever reaches the token service.
func TestPrefetchPushesWithBearerTokens(t *testing.T) {
	t.Parallel()
	src, dst := upstreamtest.New(t), upstreamtest.New(t)
	ts := newTokenServer(t, "robot", "s3cret")
	dst.SetHook(func(w http.ResponseWriter, r *http.Request) bool {
		repo := strings.TrimPrefix(r.URL.Path, "/v2/")
		repo = repo[:max(strings.Index(repo, "/manifests/"), strings.Index(repo, "/blobs/"), 0)]
		want := "repository:" + repo + ":pull,push"
		if scope, ok := ts.scopeOf(strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")); ok && slices.Contains(strings.Fields(scope), want) {
			return false
		}
		io.Copy(io.Discard, r.Body)
		w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer realm="%s/token",service="harbor-b",scope="%s"`, ts.URL, want))
		w.WriteHeader(http.StatusUnauthorized)
		return true
	})
	p := newPromotionOn(t, src, dst, t.TempDir(), cache.Config{}, replicate.Config{}, "", 0)
	p.seed(t)
	job := p.wait(t, p.submit(t, "application/json", "", promoteAll))
	if job.State != replicate.StateDone {
		for _, img := range job.Images {
			t.Log(img.Source, img.State, img.Error)
		}
		t.Fatalf("job %s", job.State)
	}
	dst.SetHook(nil)
	onTarget(t, dst, "proj-b/app", "1.0", p.app.Manifest)
	onTarget(t, dst, "proj-b/multi", "v1", p.multi.Manifest)
	onTarget(t, dst, "proj-b/tool", "2.0", p.tool.Manifest)
	// Concurrent first requests may each fetch a token; the scopes asked
	// for are push scopes, and tool's also covers the layer it mounts.
	ts.mu.Lock()
	scopes := map[string]bool{}
	for _, c := range ts.calls {
		scopes[c] = true
	}
	ts.mu.Unlock()
	for _, repo := range []string{"app", "multi", "tool"} {
		if !scopes["repository:proj-b/"+repo+":pull,push"] {
			t.Errorf("no push token for proj-b/%s: %q", repo, slices.Sorted(maps.Keys(scopes)))
		}
	}
	if len(scopes) != 4 {
		t.Errorf("token scopes: %q, want 3 push scopes and one mount's", slices.Sorted(maps.Keys(scopes)))
	}
	for _, req := range dst.Requests() {
		if strings.HasPrefix(req.Authorization, "Basic") {
			t.Fatalf("target received the password: %+v", req)
		}
	}
}

// Finished jobs beyond KeepJobs are forgotten, oldest first.
func TestPrefetchForgetsOldJobs(t *testing.T) {
	t.Parallel()
	p := newPromotion(t, t.TempDir(), cache.Config{}, replicate.Config{KeepJobs: 2}, "", 0)
	p.seed(t)
	var ids []string
	for range 4 {
		id := p.submit(t, "application/json", "", `{"images": ["proj/app:1.0"]}`)
		p.wait(t, id)
		ids = append(ids, id)
	}
	var list struct{ Jobs []struct{ ID string } }
	r := p.do(t, http.MethodGet, "/api/v1/jobs")
	if err := json.Unmarshal(r.body, &list); err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, j := range list.Jobs {
		got = append(got, j.ID)
	}
	// The fourth submit found three finished jobs and forgot the oldest.
	if strings.Join(got, ",") != strings.Join(ids[1:], ",") {
		t.Fatalf("jobs %q of %q", got, ids)
	}
	wantError(t, p.do(t, http.MethodGet, "/api/v1/jobs/"+ids[0]), http.StatusNotFound, "JOB_UNKNOWN")
}

// With a platform filter the index is still copied verbatim. A target that
// insists on every child of an index being present, as distribution and
// Harbor do by default, refuses it: the image fails and says why, and the
// tag never appears there.
func TestPrefetchPlatformFilterOnACompleteIndexTarget(t *testing.T) {
	t.Parallel()
	p := newPromotion(t, t.TempDir(), cache.Config{}, replicate.Config{}, "", 0)
	p.seed(t)
	job := p.wait(t, p.submit(t, "application/json", "", `{"images": ["proj/multi:v1"], "platforms": ["linux/amd64"], "push_to": "harbor-b"}`))
	img := job.Images[0]
	if job.State != replicate.StateFailed || len(img.NotCopied) != 1 || img.NotCopied[0].Platform != "linux/arm64" {
		t.Fatalf("job %s, not copied %+v", job.State, img.NotCopied)
	}
	if !strings.Contains(img.Error, "400") || !strings.Contains(img.Error, "1 children left out by the platform filter") {
		t.Fatalf("reason: %s", img.Error)
	}
	// The amd64 child and its blobs made it; the arm64 ones were never fetched.
	onTarget(t, p.dst, "proj/multi", p.multi.Images[0].Manifest.Digest.String(), p.multi.Images[0].Manifest)
	if resp, _ := p.dst.Get(t, http.MethodGet, "/v2/proj/multi/manifests/v1"); resp.StatusCode != http.StatusNotFound {
		t.Fatalf("tag on the target: %d", resp.StatusCode)
	}
	if n := p.src.Count(http.MethodGet, "blob"); n != 3 {
		t.Fatalf("source blob GETs: %d, want the amd64 image's 3", n)
	}
}

// All jobs together copy at most JobTransfers blobs at once, leaving the
// rest of an upstream's request slots to pulling clients.
func TestPrefetchBoundsTransfers(t *testing.T) {
	t.Parallel()
	p := newPromotion(t, t.TempDir(), cache.Config{}, replicate.Config{JobTransfers: 2}, "", 0)
	p.seed(t)
	var mu sync.Mutex
	inflight, peak := 0, 0
	entered, release := make(chan struct{}, 64), make(chan struct{}, 64)
	p.src.SetHook(func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method != http.MethodGet || !strings.Contains(r.URL.Path, "/blobs/") {
			return false
		}
		mu.Lock()
		inflight++
		peak = max(peak, inflight)
		mu.Unlock()
		entered <- struct{}{}
		select {
		case <-release:
		case <-r.Context().Done():
		}
		mu.Lock()
		inflight--
		mu.Unlock()
		return false
	})
	id := p.submit(t, "application/json", "", `{"images": ["proj/app:1.0", "proj/multi:v1", "proj/tool:2.0"]}`)
	for range 11 { // one blob let through as each arrives
		<-entered
		release <- struct{}{}
	}
	if job := p.wait(t, id); job.State != replicate.StateDone {
		t.Fatalf("job %s", job.State)
	}
	if peak > 2 {
		t.Fatalf("%d blob fetches at once, want at most 2", peak)
	}
}

// A job of 50,000 references is accepted and stored whole; its images are
// read a page at a time; cancelling it accounts for every one.
func TestPrefetchFiftyThousandReferences(t *testing.T) {
	t.Parallel()
	p := newPromotion(t, t.TempDir(), cache.Config{}, replicate.Config{JobImages: 1}, "t0ken", 0)
	p.apiAuth = "Bearer t0ken" // text and YAML bodies need a credential
	p.seed(t)
	const n = 50_000
	var list strings.Builder
	for i := range n {
		fmt.Fprintf(&list, "proj/app:t%05d@%s\n", i, p.app.Manifest.Digest)
	}
	id := p.submit(t, "text/plain", "?push_to=harbor-b", list.String())
	r := p.do(t, http.MethodGet, "/api/v1/jobs/"+id+"/images?n=3&last=49990")
	var page struct{ Images []replicate.Image }
	if r.status != http.StatusOK || json.Unmarshal(r.body, &page) != nil || len(page.Images) != 3 ||
		page.Images[0].Index != 49991 || page.Images[2].Target != "proj/app:t49993" {
		t.Fatalf("page after 49990: %d %s", r.status, r.body)
	}
	if link := r.header.Get("Link"); link != `</api/v1/jobs/`+id+`/images?last=49993&n=3>; rel="next"` {
		t.Fatalf("Link %q", link)
	}
	r = p.send(t, http.MethodDelete, "/api/v1/jobs/"+id, "", "")
	var job replicate.Job
	if r.status != http.StatusOK || json.Unmarshal(r.body, &job) != nil {
		t.Fatalf("cancel: %d %.300s", r.status, r.body)
	}
	if job.State != replicate.StateCancelled || job.Images != n || job.Done+job.Cancelled != n || job.Cancelled == 0 {
		t.Fatalf("cancelled job: %s %+v", job.State, job.Tally)
	}
	if got := len(p.images(t, id, replicate.StateCancelled, 0)); got != job.Cancelled {
		t.Fatalf("%d images read back cancelled, the record says %d", got, job.Cancelled)
	}
	// The list of jobs reads records only.
	r = p.do(t, http.MethodGet, "/api/v1/jobs")
	if r.status != http.StatusOK || len(r.body) > 2000 || !strings.Contains(string(r.body), `"images":50000`) {
		t.Fatalf("jobs: %d %.500s", r.status, r.body)
	}
}

// A job whose state the index cannot take (the disk filled up) stops and
// fails where everyone sees it: its state, its error, the metric. Nothing
// it did goes unrecorded as done.
func TestJobFailsWhenItsStateCannotBeSaved(t *testing.T) {
	t.Parallel()
	var free atomic.Int64
	free.Store(1 << 40)
	sopts := storage.Options{MinFree: 64 << 20, Statfs: func() (uint64, uint64, error) { return uint64(free.Load()), 1 << 41, nil }}
	src := upstreamtest.New(t)
	dst := upstreamtest.New(t, upstreamtest.WithBasicAuth("robot", "s3cret"))
	target, err := upstream.New(upstream.Config{Name: "harbor-b", URL: dst.URL, Insecure: true, Username: "robot", Password: "s3cret", Push: true}, nil)
	if err != nil {
		t.Fatal(err)
	}
	e := newEnvFull(t, t.TempDir(), sopts, cache.Config{}, replicate.Config{JobImages: 1, Targets: map[string]replicate.Target{"harbor-b": target}}, "", nil, nil,
		spec{name: srcHost, reg: src, def: true, ttl: time.Hour})
	p := &promotion{env: e, src: src, dst: dst}
	p.seed(t)
	// The disk fills while the second image's manifest goes to the target.
	reached, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	dst.SetHook(func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method == http.MethodPut && r.URL.Path == "/v2/proj/multi/manifests/v1" {
			once.Do(func() { close(reached) })
			<-release
		}
		return false
	})
	id := p.submit(t, "application/json", "", `{"images": ["proj/app:1.0", "proj/multi:v1", "proj/tool:2.0"], "push_to": "harbor-b"}`)
	<-reached
	free.Store(1 << 20) // under half the index's reserve
	close(release)
	r := p.send(t, http.MethodGet, "/api/v1/jobs/"+id+"?wait=1m", "", "")
	var job replicate.Job
	if r.status != http.StatusOK || json.Unmarshal(r.body, &job) != nil {
		t.Fatalf("job: %d %s", r.status, r.body)
	}
	if job.State != replicate.StateFailed || !strings.Contains(job.Error, "could not be saved") || job.Finished == nil {
		t.Fatalf("job %s, error %q", job.State, job.Error)
	}
	if job.Done+job.Failed+job.Cancelled != 3 || job.Done > 2 || job.Failed == 0 {
		t.Fatalf("images not all accounted for: %+v", job.Tally)
	}
	if n := metric(t, p.env, "wharf_prefetch_job_save_failures_total"); n == 0 {
		t.Fatal("save failures not counted")
	}
	// The refused job shows in the list too.
	if r := p.do(t, http.MethodGet, "/api/v1/jobs"); !strings.Contains(string(r.body), `"state":"failed"`) {
		t.Fatalf("jobs: %s", r.body)
	}
	// A new job the index cannot take is refused, nothing started.
	r = p.send(t, http.MethodPost, "/api/v1/prefetch", "application/json", `{"images": ["proj/app:1.0"]}`)
	wantError(t, r, http.StatusServiceUnavailable, "UNAVAILABLE")
	free.Store(1 << 40)
}

// A sync file as skopeo writes it, keyed by the registry's host with
// tls-verify as the upstream is reached, runs unchanged; one with a key
// skopeo does not know says which, on which line.
func TestSkopeoSyncFileRunsUnchanged(t *testing.T) {
	t.Parallel()
	p := newPromotion(t, t.TempDir(), cache.Config{}, replicate.Config{}, "", 0)
	p.seed(t)
	host := strings.TrimPrefix(p.src.URL, "http://")
	sync := func(yml string) string { b, _ := json.Marshal(map[string]string{"sync": yml}); return string(b) }
	job := p.wait(t, p.submit(t, "application/json", "", sync(host+":\n  tls-verify: false\n  images:\n    proj/app: ['1.0']\n")))
	if job.State != replicate.StateDone || len(job.Images) != 1 || job.Images[0].Upstream != srcHost || job.Images[0].Repository != "proj/app" {
		t.Fatalf("a skopeo sync file keyed by host: %s %+v", job.State, job.Images)
	}
	r := p.send(t, http.MethodPost, "/api/v1/prefetch", "application/json", sync(host+":\n  tls-verify: false\n  images:\n    proj/app: ['1.0']\n  image:\n    proj/tool: ['2.0']\n"))
	if r.status != http.StatusBadRequest || !strings.Contains(string(r.body), `line 5: unknown key \"image\" (a registry takes images,`) {
		t.Fatalf("an unknown key: %d %s", r.status, r.body)
	}
}
