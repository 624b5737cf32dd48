package proxy_test

import (
	"encoding/json"
	"net/http"
	"os"
	"path"
	"strings"
	"testing"
	"time"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/wharf-registry/wharf/auth"
	"github.com/wharf-registry/wharf/cache"
	"github.com/wharf-registry/wharf/replicate"
	"github.com/wharf-registry/wharf/storage"
	"github.com/wharf-registry/wharf/storage/s3test"
	"github.com/wharf-registry/wharf/upstream"
	"github.com/wharf-registry/wharf/upstream/upstreamtest"
)

// isolation is a Wharf with a private upstream (harbor.internal, which
// Wharf logs in to) and a public one (docker.io, open to anyone); alice
// may pull harbor.internal/team-a/*, bob harbor.internal/team-b/*.
type isolation struct {
	*env
	pub, priv *upstreamtest.Registry
	secret    upstreamtest.Image // harbor.internal/team-b/secret:1.0, cached by bob's pull
}

func newIsolation(t *testing.T, more ...spec) *isolation {
	t.Helper()
	s := &isolation{pub: upstreamtest.New(t), priv: upstreamtest.New(t, upstreamtest.WithBasicAuth("wharf", "wharf-pw"))}
	s.secret = s.priv.PushImage(t, "team-b/secret", "1.0", 61, 2, 4<<10, amd64)
	s.env = s.replica(t, t.TempDir(), storage.Options{}, more...)
	s.pullSecret(t, s.env)
	return s
}

// replica is a Wharf of s's upstreams (and more), users and rules.
func (s *isolation) replica(t *testing.T, root string, sopts storage.Options, more ...spec) *env {
	specs := append([]spec{{name: "docker.io", reg: s.pub, ttl: time.Hour},
		{name: "harbor.internal", reg: s.priv, ttl: time.Hour, user: "wharf", password: "wharf-pw"}}, more...)
	return newEnvFull(t, root, sopts, cache.Config{}, replicate.Config{}, "", &auth.Config{
		Htpasswd:  htpasswd(t, "alice", "bob"),
		Anonymous: []string{"docker.io/*", "mirror.io/*"},
		Rules: []auth.Rule{
			{Users: []string{"alice"}, Pull: []string{"harbor.internal/team-a/*"}},
			{Users: []string{"bob"}, Pull: []string{"harbor.internal/team-b/*"}},
		},
	}, nil, specs...)
}

// pullSecret has bob pull the private image through e, every byte exact.
func (s *isolation) pullSecret(t *testing.T, e *env) {
	t.Helper()
	for _, b := range append([]upstreamtest.Blob{s.secret.Manifest}, s.secret.Blobs()...) {
		r := e.do(t, http.MethodGet, "/v2/harbor.internal/team-b/secret/"+kindOf(b, s.secret)+"/"+b.Digest.String(), "Authorization", basic("bob", "bob-pw"))
		if r.status != http.StatusOK || string(r.body) != string(b.Data) {
			t.Fatalf("bob's pull of %s: %d %s", b.Digest, r.status, r.body)
		}
	}
}

func kindOf(b upstreamtest.Blob, img upstreamtest.Image) string {
	if b.Digest == img.Manifest.Digest {
		return "manifests"
	}
	return "blobs"
}

// craft pushes to repo of reg an ordinary image manifest of its own
// config and layer, with extra fields naming digests it does not hold:
// distribution keeps the unknown fields, and a client of Wharf's must not
// gain anything by them.
func craft(t *testing.T, reg *upstreamtest.Registry, repo string, extra map[string]any) upstreamtest.Blob {
	t.Helper()
	cfg := upstreamtest.NewBlob([]byte(`{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}`))
	layer := upstreamtest.NewBlob([]byte("attacker's own layer"))
	reg.PushBlob(t, repo, cfg)
	reg.PushBlob(t, repo, layer)
	m := map[string]any{
		"schemaVersion": 2,
		"mediaType":     ocispec.MediaTypeImageManifest,
		"config":        ocispec.Descriptor{MediaType: ocispec.MediaTypeImageConfig, Digest: cfg.Digest, Size: int64(len(cfg.Data))},
		"layers":        []ocispec.Descriptor{{MediaType: ocispec.MediaTypeImageLayer, Digest: layer.Digest, Size: int64(len(layer.Data))}},
	}
	for k, v := range extra {
		m[k] = v
	}
	body, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	b := upstreamtest.NewBlob(body)
	reg.PushManifest(t, repo, "evil", ocispec.MediaTypeImageManifest, b)
	return b
}

// descs describes every part of img, the manifest included.
func descs(img upstreamtest.Image) []ocispec.Descriptor {
	out := []ocispec.Descriptor{img.Descriptor()}
	for _, b := range img.Blobs() {
		out = append(out, ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayer, Digest: b.Digest, Size: int64(len(b.Data))})
	}
	return out
}

// wantRefused asserts that none of img's parts can be read under name by
// who (an Authorization value, "" for anonymous): GET, HEAD and Range.
func wantRefused(t *testing.T, e *env, name, who string, img upstreamtest.Image) {
	t.Helper()
	wantUnread(t, e, name, who, img)
	for _, b := range append(img.Blobs(), img.Manifest) {
		path := "/v2/" + name + "/" + kindOf(b, img) + "/" + b.Digest.String()
		var hdr []string
		if who != "" {
			hdr = []string{"Authorization", who}
		}
		if r := e.do(t, http.MethodHead, path, hdr...); r.status != http.StatusNotFound {
			t.Fatalf("HEAD %s: %d, want 404", path, r.status)
		}
	}
}

// wantUnread is wantRefused for GET and Range only: a HEAD of what is
// not stored here passes on what upstream says, which tells nothing of
// the bytes.
func wantUnread(t *testing.T, e *env, name, who string, img upstreamtest.Image) {
	t.Helper()
	for _, b := range append(img.Blobs(), img.Manifest) {
		k := kindOf(b, img)
		code := map[string]string{"blobs": "BLOB_UNKNOWN", "manifests": "MANIFEST_UNKNOWN"}[k]
		path := "/v2/" + name + "/" + k + "/" + b.Digest.String()
		var hdr []string
		if who != "" {
			hdr = []string{"Authorization", who}
		}
		wantError(t, e.do(t, http.MethodGet, path, hdr...), http.StatusNotFound, code)
		wantError(t, e.do(t, http.MethodGet, path, append(hdr, "Range", "bytes=0-9")...), http.StatusNotFound, code)
	}
}

// Attack 1: a pusher to a public repository lists private digests in a
// field an image manifest does not define. Wharf must not take them as
// members of the attacker's repository.
func TestPusherCannotUnlockPrivateContent(t *testing.T) {
	t.Parallel()
	s := newIsolation(t)
	evil := craft(t, s.pub, "evil/x", map[string]any{"blobs": descs(s.secret)})
	s.get(t, "/v2/docker.io/evil/x/manifests/evil", evil.Data, evil.Digest.String())
	wantRefused(t, s.env, "docker.io/evil/x", "", s.secret)
}

// Attack 1 within one upstream: alice may push to team-a and pull it; a
// manifest there naming team-b's digests must not open them to her.
func TestTeamPusherCannotReadAnotherTeam(t *testing.T) {
	t.Parallel()
	s := newIsolation(t)
	alice := basic("alice", "alice-pw")
	evil := craft(t, s.priv, "team-a/app", map[string]any{"blobs": descs(s.secret)})
	r := s.do(t, http.MethodGet, "/v2/harbor.internal/team-a/app/manifests/evil", "Authorization", alice)
	if r.status != http.StatusOK || string(r.body) != string(evil.Data) {
		t.Fatalf("alice's own manifest: %d %s", r.status, r.body)
	}
	wantRefused(t, s.env, "harbor.internal/team-a/app", alice, s.secret)
}

// yesMan answers every HEAD of a blob or manifest 200, as a hostile,
// compromised or merely permissive upstream might.
func yesMan(w http.ResponseWriter, r *http.Request) bool {
	if r.Method != http.MethodHead || !(strings.Contains(r.URL.Path, "/blobs/") || strings.Contains(r.URL.Path, "/manifests/")) {
		return false
	}
	w.Header().Set("Docker-Content-Digest", path.Base(r.URL.Path))
	w.Header().Set("Content-Length", "100")
	w.WriteHeader(http.StatusOK)
	return true
}

// Attack 3: one upstream's HEAD does not open what only another, private
// upstream served.
func TestUpstreamCannotVouchForAnother(t *testing.T) {
	t.Parallel()
	s := newIsolation(t)
	s.pub.SetHook(yesMan)
	wantRefused(t, s.env, "docker.io/any/repo", "", s.secret)
	// And bob, who may read the private image, still reads it.
	s.priv.Reset()
	r := s.do(t, http.MethodGet, "/v2/harbor.internal/team-b/secret/blobs/"+s.secret.Layers[0].Digest.String(), "Authorization", basic("bob", "bob-pw"))
	if r.status != http.StatusOK || string(r.body) != string(s.secret.Layers[0].Data) || s.priv.Total() != 0 {
		t.Fatalf("bob's layer: %d, %d upstream requests", r.status, s.priv.Total())
	}
}

// An upstream that really holds private content proves it by serving the
// bytes, once; from then on the store serves them there too.
func TestAnotherUpstreamProvesWhatItHolds(t *testing.T) {
	t.Parallel()
	mirror := upstreamtest.New(t)
	s := newIsolation(t, spec{name: "mirror.io", reg: mirror, ttl: time.Hour})
	layer := s.secret.Layers[0]
	mirror.PushBlob(t, "copy/secret", layer)
	mirror.Reset()
	s.get(t, "/v2/mirror.io/copy/secret/blobs/"+layer.Digest.String(), layer.Data, layer.Digest.String())
	wantCounts(t, mirror, map[string]int{"GET blob": 1})
	mirror.Reset()
	s.get(t, "/v2/mirror.io/copy/secret/blobs/"+layer.Digest.String(), layer.Data, layer.Digest.String())
	wantCounts(t, mirror, map[string]int{})
	if got := metric(t, s.env, "wharf_upstream_proofs_total", "result", "served"); got != 1 {
		t.Fatalf("wharf_upstream_proofs_total{result=served} %v, want 1", got)
	}
}

// Content a public upstream served is public: another upstream's HEAD is
// enough to serve it there, as before.
func TestPublicContentNeedsOnlyAHead(t *testing.T) {
	t.Parallel()
	mirror := upstreamtest.New(t)
	s := newIsolation(t, spec{name: "mirror.io", reg: mirror, ttl: time.Hour})
	img := s.pub.PushImage(t, "library/alpine", "1.0", 62, 1, 4<<10, amd64)
	pull(t, s.env, "docker.io/library/alpine", img, "")
	mirror.PushBlob(t, "library/alpine", img.Layers[0])
	mirror.Reset()
	s.get(t, "/v2/mirror.io/library/alpine/blobs/"+img.Layers[0].Digest.String(), img.Layers[0].Data, img.Layers[0].Digest.String())
	wantCounts(t, mirror, map[string]int{"HEAD blob": 1})
}

// A blob is not a manifest: a config a manifest of the repository lists
// is not served as a manifest where upstream has no such manifest.
func TestConfigIsNotServedAsManifest(t *testing.T) {
	t.Parallel()
	s := newIsolation(t)
	r := s.do(t, http.MethodGet, "/v2/harbor.internal/team-b/secret/manifests/"+s.secret.Config.Digest.String(), "Authorization", basic("bob", "bob-pw"))
	wantError(t, r, http.StatusNotFound, "MANIFEST_UNKNOWN")
}

// Attack 3 across a fleet: the bucket keeps who served each blob, so a
// replica that never saw the private pull still refuses it under another
// upstream's word, and still serves it to those who may read it, from
// the bucket.
func TestBucketKeepsWhoServedABlob(t *testing.T) {
	s3 := s3test.Start(t)
	s := &isolation{pub: upstreamtest.New(t), priv: upstreamtest.New(t, upstreamtest.WithBasicAuth("wharf", "wharf-pw"))}
	s.secret = s.priv.PushImage(t, "team-b/secret", "1.0", 61, 2, 4<<10, amd64)
	replica := func() *env {
		r, err := storage.OpenBucket(t.Context(), "s3", s3.Params())
		if err != nil {
			t.Fatal(err)
		}
		return s.replica(t, t.TempDir(), storage.Options{Bucket: r})
	}
	first := replica()
	s.pullSecret(t, first)
	filled(t, first)
	for _, b := range append(s.secret.Blobs(), s.secret.Manifest) {
		if _, err := os.Stat(s3.ObjectFile("/wharf/sources/sha256/" + b.Digest.Encoded() + "/harbor.internal")); err != nil {
			t.Fatalf("the bucket does not say who served %s: %v", b.Digest, err)
		}
	}
	s.pub.SetHook(yesMan)
	second := replica()
	wantUnread(t, second, "docker.io/any/repo", "", s.secret)
	s.priv.Reset()
	s.pullSecret(t, second)
	// The manifest twice: this replica's first request to the private
	// upstream learns it wants Basic credentials. No blob.
	wantCounts(t, s.priv, map[string]int{"GET manifest": 2})
}

// pushRights is a Wharf with a source (harbor-a.example.com, the default)
// and a push target harbor-b: ci may pull proj/* and push to proj-b/* of
// harbor-b; warm may only start jobs that warm the cache; ops has the jobs
// right; root is admin. The rule to-b pushes proj/app, and team-x/secret
// (which does not exist), to harbor-b's proj-b/.
func pushRights(t *testing.T) (*env, *upstreamtest.Registry, upstreamtest.Image) {
	t.Helper()
	src, dst := upstreamtest.New(t), upstreamtest.New(t, upstreamtest.WithBasicAuth("robot", "s3cret"))
	img := src.PushImage(t, "proj/app", "1.0", 63, 1, 4<<10, amd64)
	target, err := upstream.New(upstream.Config{Name: "harbor-b", URL: dst.URL, Insecure: true, Username: "robot", Password: "s3cret", Push: true}, nil)
	if err != nil {
		t.Fatal(err)
	}
	rule := replicate.Rule{Name: "to-b", Sources: []string{"harbor-a.example.com/proj/app", "harbor-a.example.com/team-x/secret"}, Target: "harbor-b",
		Rename: []replicate.Rename{{From: "harbor-a.example.com/proj/", To: "proj-b/"}}}
	e := newEnvFull(t, t.TempDir(), storage.Options{}, cache.Config{}, replicate.Config{Targets: map[string]replicate.Target{"harbor-b": target}, RetryBackoff: time.Millisecond}, "",
		&auth.Config{
			Htpasswd: htpasswd(t, "ci", "warm", "ops", "root"),
			Rules: []auth.Rule{
				{Users: []string{"ci"}, Pull: []string{"harbor-a.example.com/proj/*"}, Push: []string{"harbor-b/proj-b/*"}, API: []string{auth.RightPrefetch}},
				{Users: []string{"warm"}, Pull: []string{"harbor-a.example.com/proj/*"}, API: []string{auth.RightPrefetch}},
				{Users: []string{"ops"}, API: []string{auth.RightJobs}},
				{Users: []string{"root"}, API: []string{auth.RightAdmin}},
			},
		}, []replicate.Rule{rule}, spec{name: srcHost, reg: src, def: true, ttl: time.Hour})
	return e, src, img
}

// Attack 8: the prefetch right warms the cache; pushing needs a push
// pattern on that target repository (or admin), and running a rule by
// hand needs push rights on its target.
func TestPushNeedsPushRights(t *testing.T) {
	t.Parallel()
	e, _, _ := pushRights(t)
	ci, warm, root := basic("ci", "ci-pw"), basic("warm", "warm-pw"), basic("root", "root-pw")
	push := func(to string) string {
		return `{"images": ["harbor-a.example.com/proj/app:1.0"], "push_to": "harbor-b", "rename": [{"from": "harbor-a.example.com/proj/", "to": "` + to + `"}]}`
	}
	for _, c := range []struct {
		who, body string
		want      int
	}{
		{ci, push("proj-b/"), http.StatusAccepted},
		{ci, push("prod/critical-"), http.StatusForbidden},
		{warm, push("proj-b/"), http.StatusForbidden},
		{warm, `{"images": ["harbor-a.example.com/proj/app:1.0"]}`, http.StatusAccepted},
		{root, push("prod/critical-"), http.StatusAccepted},
	} {
		r := e.send(t, http.MethodPost, "/api/v1/prefetch", "application/json", c.body, "Authorization", c.who)
		if r.status != c.want {
			t.Fatalf("%s: %d %s, want %d", c.body, r.status, r.body, c.want)
		}
		if c.want == http.StatusForbidden {
			wantError(t, r, http.StatusForbidden, "DENIED")
		}
	}
	wantError(t, e.send(t, http.MethodPost, "/api/v1/replication/to-b/run", "application/json", "{}", "Authorization", warm), http.StatusForbidden, "DENIED")
	if r := e.send(t, http.MethodPost, "/api/v1/replication/to-b/run", "application/json", "{}", "Authorization", ci); r.status != http.StatusAccepted && r.status != http.StatusOK {
		t.Fatalf("ci runs the rule it may push for: %d %s", r.status, r.body)
	}
}

// Attack 8: a job's owner reads why an image failed without learning
// where the upstream is.
func TestJobErrorsNameNoUpstream(t *testing.T) {
	t.Parallel()
	e, src, _ := pushRights(t)
	src.SetHook(fault(all, http.StatusInternalServerError, nil, `{"errors":[{"code":"UNKNOWN","message":"backend `+src.Host()+` is down"}]}`))
	ci := basic("ci", "ci-pw")
	job := e.wait(t, e.submit(t, "application/json", "", `{"images": ["harbor-a.example.com/proj/app:1.0"]}`, "Authorization", ci), "Authorization", ci)
	if job.State != replicate.StateFailed || len(job.Images) != 1 || job.Images[0].Error == "" {
		t.Fatalf("job %s, images %+v", job.State, job.Images)
	}
	msg := job.Images[0].Error
	host, _, _ := strings.Cut(src.Host(), ":")
	if strings.Contains(msg, host) || strings.Contains(msg, "http://") || !strings.Contains(msg, "500") {
		t.Fatalf("the image's error: %q", msg)
	}
}

// Attack 8: a rule run by hand by a user who may push for it names no
// repository of the rule the user may not pull (team-x/secret, which could
// not be listed), whether the run starts a job or has nothing new.
func TestRuleRunNamesOnlyWhatTheCallerMaySee(t *testing.T) {
	t.Parallel()
	e, _, _ := pushRights(t)
	ci, root := basic("ci", "ci-pw"), basic("root", "root-pw")
	r := e.send(t, http.MethodPost, "/api/v1/replication/to-b/run", "application/json", "{}", "Authorization", ci)
	if r.status != http.StatusAccepted || strings.Contains(string(r.body), "team-x") || strings.Contains(string(r.body), "problems") {
		t.Fatalf("ci's run: %d %s", r.status, r.body)
	}
	var run struct{ Job replicate.Job }
	if err := json.Unmarshal(r.body, &run); err != nil {
		t.Fatal(err)
	}
	e.wait(t, run.Job.ID, "Authorization", root)
	// Nothing new, and a repository that cannot be listed.
	r = e.send(t, http.MethodPost, "/api/v1/replication/to-b/run", "application/json", "{}", "Authorization", ci)
	wantError(t, r, http.StatusNotFound, "NAME_UNKNOWN")
	if strings.Contains(string(r.body), "team-x") {
		t.Fatalf("ci told of team-x: %s", r.body)
	}
	wantError(t, e.send(t, http.MethodPost, "/api/v1/replication/to-b/run", "application/json", "{}", "Authorization", root), http.StatusNotFound, "NAME_UNKNOWN")
}
