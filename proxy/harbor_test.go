package proxy_test

import (
	"bytes"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wharf-registry/wharf/cache"
	"github.com/wharf-registry/wharf/replicate"
	"github.com/wharf-registry/wharf/upstream/upstreamtest"
)

// What a Harbor target refuses is spelled out per image, and the other
// images of the job go on: an immutable tag (412), a project that does not
// exist, an account without push rights (403, or a token without the push
// scope), refused credentials, a redirect to another host (which gets no
// credentials), a spent quota.
func TestHarborRefusalsAreSpelledOut(t *testing.T) {
	t.Parallel()
	elsewhere := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusUnauthorized)
	}))
	t.Cleanup(elsewhere.Close)
	harbor := func(status int, code, msg string) func(http.ResponseWriter) {
		return func(w http.ResponseWriter) {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(status)
			w.Write([]byte(`{"errors":[{"code":"` + code + `","message":"` + msg + `"}]}`))
		}
	}
	for _, c := range []struct {
		name  string
		match func(*http.Request) bool
		reply func(http.ResponseWriter)
		want  string
	}{
		{"immutable tag", func(r *http.Request) bool {
			return r.Method == "PUT" && strings.HasSuffix(r.URL.Path, "/proj-b/app/manifests/1.0")
		},
			harbor(412, "PRECONDITION", "Failed to process request due to 'app:1.0' configured as immutable."), "tag 1.0 is immutable on harbor-b"},
		{"no project", func(r *http.Request) bool {
			return r.Method == "POST" && strings.Contains(r.URL.Path, "/proj-b/app/blobs/uploads")
		},
			harbor(404, "NOT_FOUND", "project proj-b not found"), "project proj-b does not exist on harbor-b: create it first"},
		{"no push right", func(r *http.Request) bool {
			return r.Method == "POST" && strings.Contains(r.URL.Path, "/proj-b/app/blobs/uploads")
		},
			harbor(403, "DENIED", "requested access to the resource is denied"), "may not push to proj-b/app: give it push rights on project proj-b"},
		{"wrong password", func(r *http.Request) bool {
			return r.Method == "POST" && strings.Contains(r.URL.Path, "/proj-b/app/blobs/uploads")
		},
			harbor(401, "UNAUTHORIZED", "unauthorized: authentication required"), "Wharf's credentials for target harbor-b are refused"},
		{"a token without push", func(r *http.Request) bool {
			return r.Method == "POST" && strings.Contains(r.URL.Path, "/proj-b/app/blobs/uploads")
		},
			harbor(401, "UNAUTHORIZED", "unauthorized to access repository: proj-b/app, action: push: unauthorized to access repository: proj-b/app, action: push"), "may not push to proj-b/app: give it push rights"},
		{"a redirect to another host", func(r *http.Request) bool {
			return r.Method == "POST" && strings.Contains(r.URL.Path, "/proj-b/app/blobs/uploads")
		},
			func(w http.ResponseWriter) {
				w.Header().Set("Location", elsewhere.URL+"/v2/proj-b/app/blobs/uploads/")
				w.WriteHeader(http.StatusTemporaryRedirect)
			}, "target harbor-b redirected the request to another host, which refused it"},
		{"quota", func(r *http.Request) bool {
			return r.Method == "PUT" && strings.Contains(r.URL.Path, "/proj-b/app/blobs/uploads")
		},
			harbor(403, "DENIED", "adding 40.0 KiB of storage resource, which when updated to current usage of 10 GiB will exceed the configured upper limit of 10 GiB."), "the storage quota of project proj-b on harbor-b is spent"},
	} {
		t.Run(c.name, func(t *testing.T) {
			p := newPromotion(t, t.TempDir(), cache.Config{}, replicate.Config{}, "", 0)
			p.seed(t)
			p.dst.SetHook(func(w http.ResponseWriter, r *http.Request) bool {
				if !c.match(r) {
					return false
				}
				c.reply(w)
				return true
			})
			job := p.wait(t, p.submit(t, "application/json", "", promoteAll))
			if job.State != replicate.StatePartial || job.Images[0].State != replicate.StateFailed ||
				job.Images[1].State != replicate.StateDone || job.Images[2].State != replicate.StateDone {
				t.Fatalf("job %s, images %s %s %s", job.State, job.Images[0].State, job.Images[1].State, job.Images[2].State)
			}
			if !strings.Contains(job.Images[0].Error, c.want) {
				t.Fatalf("error %q, want it to say %q", job.Images[0].Error, c.want)
			}
		})
	}
}

// "Replicate what we use": from_cache copies exactly the cached tags its
// pattern matches, nothing upstream has that nobody pulled.
func TestPrefetchFromCache(t *testing.T) {
	t.Parallel()
	p := newPromotion(t, t.TempDir(), cache.Config{}, replicate.Config{}, "", 0)
	p.seed(t)
	for _, path := range []string{"/v2/proj/app/manifests/1.0", "/v2/proj/tool/manifests/2.0"} {
		if r := p.do(t, "GET", path); r.status != 200 {
			t.Fatalf("%s: %d", path, r.status)
		}
	}
	body := `{"from_cache": ["harbor-a.example.com/proj/*"], "push_to": "harbor-b", "rename": [{"from": "harbor-a.example.com/proj/", "to": "proj-b/"}]}`
	job := p.wait(t, p.submit(t, "application/json", "", body))
	var got []string
	for _, img := range job.Images {
		got = append(got, img.Source+" "+string(img.State))
	}
	if want := "harbor-a.example.com/proj/app:1.0 done,harbor-a.example.com/proj/tool:2.0 done"; strings.Join(got, ",") != want {
		t.Fatalf("from_cache copied %q, want %q", got, want)
	}
	onTarget(t, p.dst, "proj-b/app", "1.0", p.app.Manifest)
	onTarget(t, p.dst, "proj-b/tool", "2.0", p.tool.Manifest)
	if r, _ := p.dst.Get(t, "GET", "/v2/proj-b/multi/manifests/v1"); r.StatusCode != 404 {
		t.Fatalf("proj/multi, never pulled, is on the target: %d", r.StatusCode)
	}
	// A tag pattern narrows it; a pattern matching nothing is a bad request.
	job = p.wait(t, p.submit(t, "application/json", "", `{"from_cache": ["harbor-a.example.com/proj/tool:2.*"]}`))
	if len(job.Images) != 1 || job.Images[0].Source != "harbor-a.example.com/proj/tool:2.0" {
		t.Fatalf("tag pattern: %+v", job.Images)
	}
	r := p.send(t, "POST", "/api/v1/prefetch", "application/json", `{"from_cache": ["quay.io/*"]}`)
	wantError(t, r, 400, "INVALID")
}

// A finished job's failed images run again, exactly those, as a new job
// that names the old one; a job with nothing failed has nothing to retry.
func TestRetryFailedImages(t *testing.T) {
	t.Parallel()
	p := newPromotion(t, t.TempDir(), cache.Config{}, replicate.Config{}, "", 0)
	p.seed(t)
	p.dst.SetHook(func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method == http.MethodPut && strings.HasSuffix(r.URL.Path, "/proj-b/tool/manifests/2.0") {
			w.WriteHeader(http.StatusForbidden)
			return true
		}
		return false
	})
	id := p.submit(t, "application/json", "", promoteAll)
	if job := p.wait(t, id); job.State != replicate.StatePartial || job.Failed != 1 {
		t.Fatalf("first run: %s, %d failed", job.State, job.Failed)
	}
	p.dst.SetHook(nil) // the right is granted
	r := p.send(t, http.MethodPost, "/api/v1/jobs/"+id+"/retry", "application/json", "{}")
	var again replicate.Job
	if r.status != http.StatusAccepted || json.Unmarshal(r.body, &again) != nil || again.RetryOf != id || again.Images != 1 ||
		r.header.Get("Location") != "/api/v1/jobs/"+again.ID {
		t.Fatalf("retry: %d %s", r.status, r.body)
	}
	job := p.wait(t, again.ID)
	if job.State != replicate.StateDone || len(job.Images) != 1 || job.Images[0].Source != "harbor-a.example.com/proj/tool:2.0" {
		t.Fatalf("the retry: %s %+v", job.State, job.Images)
	}
	onTarget(t, p.dst, "proj-b/tool", "2.0", p.tool.Manifest)
	wantError(t, p.send(t, http.MethodPost, "/api/v1/jobs/"+again.ID+"/retry", "application/json", "{}"), http.StatusConflict, "NOTHING_TO_RETRY")
	wantError(t, p.send(t, http.MethodPost, "/api/v1/jobs/0000000000000000nope/retry", "application/json", "{}"), http.StatusNotFound, "JOB_UNKNOWN")
}

// logBuffer is a log destination tests read while Wharf writes.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}
func (b *logBuffer) String() string { b.mu.Lock(); defer b.mu.Unlock(); return b.buf.String() }

// At start each rule's target is asked, pushing nothing, whether Wharf may
// push where the rule pushes; a refusal is logged with what to do, and
// Wharf serves all the same.
func TestTargetsAreCheckedAtStart(t *testing.T) {
	t.Parallel()
	src, dst := upstreamtest.New(t), upstreamtest.New(t, upstreamtest.WithBasicAuth("robot", "s3cret"))
	dst.SetHook(func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method == http.MethodPost && strings.HasPrefix(r.URL.Path, "/v2/denied-b/") {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusForbidden)
			io.WriteString(w, `{"errors":[{"code":"DENIED","message":"requested access to the resource is denied"}]}`)
			return true
		}
		return false
	})
	logs := &logBuffer{}
	log := slog.New(slog.NewTextHandler(logs, nil))
	ok := replicate.Rule{Name: "to-b", Sources: []string{"harbor-a.example.com/proj/*"}, Target: "harbor-b",
		Rename: []replicate.Rename{{From: "harbor-a.example.com/proj/", To: "proj-b/"}}, OnPull: true}
	denied := replicate.Rule{Name: "to-denied", Sources: []string{"harbor-a.example.com/proj/app"}, Target: "harbor-b",
		Rename: []replicate.Rename{{From: "harbor-a.example.com/proj/", To: "denied-b/"}}, OnPull: true}
	p := newPromotionOn(t, src, dst, t.TempDir(), cache.Config{Logger: log}, replicate.Config{}, "", 0, ok, denied)
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(logs.String(), "to-denied") || !strings.Contains(logs.String(), "rule=to-b") {
		if time.Now().After(deadline) {
			t.Fatalf("no target check logged:\n%s", logs)
		}
		time.Sleep(10 * time.Millisecond) // polling the log, bounded
	}
	out := logs.String()
	if !strings.Contains(out, `msg="a replication rule's target takes pushes" rule=to-b target=harbor-b repository=proj-b/wharf-check`) ||
		!strings.Contains(out, `rule=to-denied target=harbor-b repository=denied-b/app error="the account Wharf pushes to harbor-b with may not push to denied-b/app`) {
		t.Fatalf("target checks:\n%s", out)
	}
	for _, r := range dst.Requests() {
		if r.Method == http.MethodPut || r.Method == http.MethodPatch {
			t.Fatalf("the check pushed: %s %s", r.Method, r.Path)
		}
	}
	p.seed(t)
	p.get(t, "/v2/proj/app/manifests/1.0", p.app.Manifest.Data, p.app.Manifest.Digest.String()) // serving all the same
}
