//go:build e2e

package e2e

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	cdplog "github.com/chromedp/cdproto/log"
	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"

	"github.com/wharf-registry/wharf/upstream/upstreamtest"
)

// browser is a headless Chromium tab signed in as one user, recording
// every console error, uncaught exception and failed load of the page.
type browser struct {
	ctx  context.Context
	mu   sync.Mutex
	errs []string
}

func newBrowser(t *testing.T, user string) *browser {
	t.Helper()
	chromium := tool(t, "chromium")
	opts := append(slices.Clone(chromedp.DefaultExecAllocatorOptions[:]), chromedp.ExecPath(chromium), chromedp.NoSandbox,
		chromedp.Flag("headless", "new"), chromedp.DisableGPU, chromedp.UserDataDir(t.TempDir()))
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(actx)
	t.Cleanup(func() { cancel(); cancelAlloc() })
	b := &browser{ctx: ctx}
	err := chromedp.Listen(ctx, func(ev any) {
		var msg string
		switch e := ev.(type) {
		case *runtime.EventConsoleAPICalled:
			if e.Type == runtime.ConsoleAPICalledTypeError {
				for _, a := range e.Args {
					msg += string(a.Value) + " "
				}
			}
		case *runtime.EventExceptionThrown:
			msg = "exception: " + e.ExceptionDetails.Text
		case *cdplog.EventEntryAdded:
			if e.Entry.Level == cdplog.EntryLevelError {
				msg = e.Entry.Text + " " + e.Entry.URL
			}
		}
		if msg != "" {
			b.mu.Lock()
			b.errs = append(b.errs, msg)
			b.mu.Unlock()
		}
	})
	if err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	auth := base64.StdEncoding.EncodeToString([]byte(user + ":" + user + "-pw"))
	ctx30, cancel30 := context.WithTimeout(ctx, 60*time.Second)
	defer cancel30()
	for _, err := range []error{
		call(ctx30, runtime.Enable, cdp.Empty{}),
		call(ctx30, cdplog.Enable, cdp.Empty{}),
		call(ctx30, network.Enable, network.EnableParams{}),
		call(ctx30, network.SetExtraHTTPHeaders, network.SetExtraHTTPHeadersParams{Headers: network.Headers{"Authorization": "Basic " + auth}}),
	} {
		if err != nil {
			t.Fatalf("start chromium: %v", err)
		}
	}
	return b
}

// open loads url and waits for the page's first full refresh.
func (b *browser) open(t *testing.T, url string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 30*time.Second)
	defer cancel()
	if err := chromedp.Do(ctx, chromedp.Navigate(url), chromedp.WaitReady(`body[data-refreshes]`)); err != nil {
		t.Fatalf("load %s: %v", url, err)
	}
}

// eval runs js in the page and decodes its value into out.
func (b *browser) eval(t *testing.T, js string, out any) {
	t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 10*time.Second)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[json.RawMessage](js))
	if err != nil {
		t.Fatalf("evaluate %s: %v", js, err)
	}
	if err := json.Unmarshal(v, out); err != nil {
		t.Fatalf("evaluate %s: %s: %v", js, v, err)
	}
}

// call runs one protocol command whose result does not matter.
func call[P, R any](ctx context.Context, cmd cdp.Command[P, R], params P) error {
	_, err := chromedp.Call(ctx, cmd, params)
	return err
}

// refreshes is how many times the page has redrawn its sections.
func (b *browser) refreshes(t *testing.T) int {
	var n string
	b.eval(t, `document.body.dataset.refreshes || "0"`, &n)
	var i int
	fmt.Sscan(n, &i)
	return i
}

// settled waits for a redraw that began after now, so what it shows was
// read after the caller's last change.
func (b *browser) settled(t *testing.T) {
	t.Helper()
	n := b.refreshes(t)
	waitFor(t, "two more refreshes of the page", func() bool { return b.refreshes(t) >= n+2 })
}

func (b *browser) noErrors(t *testing.T) {
	t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.errs) > 0 {
		t.Fatalf("the page logged errors:\n%s", strings.Join(b.errs, "\n"))
	}
}

// getJSON reads an API answer as user.
func getJSON(t *testing.T, base, user, path string, out any) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, base+path, nil)
	req.SetBasicAuth(user, user+"-pw")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s as %s: %d %s", path, user, resp.StatusCode, body)
	}
	if err := json.Unmarshal(body, out); err != nil {
		t.Fatal(err)
	}
}

// The status page in a real browser: it loads without a console error,
// shows the figures the API shows, follows a job's progress as it
// happens, and shows a user without rights only what that user may see.
func TestStatusPageInABrowser(t *testing.T) {
	fast := upstreamtest.New(t)
	app := fast.PushImage(t, "library/app", "1.0", 71, 2, 32<<10, amd64)
	slow := upstreamtest.New(t, upstreamtest.WithBandwidth(200<<10))
	slow.PushImage(t, "library/big", "1.0", 72, 2, 512<<10, amd64)
	dst := upstreamtest.New(t)
	dir := t.TempDir()
	htpasswd := filepath.Join(dir, "htpasswd")
	writeHtpasswd(t, htpasswd, "admin", "viewer")
	w := startWharf(t, fmt.Sprintf(`listen: "127.0.0.1:0"
storage: {root: %s}
upstreams:
  - {name: docker.io, url: %s, default: true, insecure: true}
  - {name: slow.example, url: %s, insecure: true}
targets:
  - {name: harbor-b, url: %s, insecure: true}
auth:
  htpasswd: %s
  rules:
    - {users: [admin], api: [admin]}
    - {users: [viewer], pull: [docker.io/library/app]}
replication:
  - {name: app-to-b, sources: [docker.io/library/app], target: harbor-b, schedule: "@every 1h"}
`, filepath.Join(dir, "data"), fast.URL, slow.URL, dst.URL, htpasswd))
	base := "http://" + w.addr

	// The viewer pulls the image: one manifest GET, its blobs.
	pull := func(path string) {
		req, _ := http.NewRequest(http.MethodGet, base+path, nil)
		req.SetBasicAuth("viewer", "viewer-pw")
		req.Header.Set("Accept", ocispecManifest)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("GET %s: %d", path, resp.StatusCode)
		}
	}
	pull("/v2/library/app/manifests/1.0")
	for _, b := range app.Blobs() {
		pull("/v2/library/app/blobs/" + b.Digest.String())
	}

	// Without credentials the page asks for them, as a browser expects.
	resp, err := http.Get(base + "/ui/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized || !strings.HasPrefix(resp.Header.Get("Www-Authenticate"), "Basic ") {
		t.Fatalf("GET /ui/ without credentials: %d %q", resp.StatusCode, resp.Header.Get("Www-Authenticate"))
	}

	admin := newBrowser(t, "admin")
	admin.open(t, base+"/ui/")
	admin.settled(t)
	var api struct {
		Replicas []struct {
			SizeBytes int64 `json:"size_bytes"`
			Blobs     int64 `json:"blobs"`
		} `json:"replicas"`
		Minutes []struct{ Hits, Misses int64 } `json:"minutes"`
	}
	getJSON(t, base, "admin", "/api/v1/cache", &api)
	var hits, misses int64
	for _, m := range api.Minutes {
		hits, misses = hits+m.Hits, misses+m.Misses
	}
	// Hit or miss depends on whether the manifest's eager fills were
	// first; every read counts as one or the other.
	if hits+misses < int64(1+len(app.Blobs())) || misses == 0 {
		t.Fatalf("the API counts %d hits and %d misses for %d reads", hits, misses, 1+len(app.Blobs()))
	}
	var shown struct {
		Size, Blobs, Hits, Misses string
		Upstreams, Targets, Rules []string
		TopPulls                  string
	}
	admin.eval(t, `({
		Size: document.querySelector('#cache [data-field=size_bytes]').dataset.value,
		Blobs: document.querySelector('#cache [data-field=blobs]').dataset.value,
		Hits: document.querySelector('#hit-ratio').dataset.hits,
		Misses: document.querySelector('#hit-ratio').dataset.misses,
		Upstreams: [...document.querySelectorAll('#upstreams tr[data-name]')].map(r => r.dataset.name + ' ' + r.querySelector('[data-field=state]').textContent),
		Targets: [...document.querySelectorAll('#targets tr[data-name]')].map(r => r.dataset.name + ' ' + r.querySelector('[data-field=state]').textContent),
		Rules: [...document.querySelectorAll('#rules tr[data-rule]')].map(r => r.dataset.rule),
		TopPulls: document.querySelector('#top-pulls').textContent,
	})`, &shown)
	if shown.Size != fmt.Sprint(api.Replicas[0].SizeBytes) || shown.Blobs != fmt.Sprint(api.Replicas[0].Blobs) ||
		shown.Hits != fmt.Sprint(hits) || shown.Misses != fmt.Sprint(misses) {
		t.Fatalf("the page shows size %s, %s blobs, %s hits, %s misses; the API %+v, %d hits, %d misses", shown.Size, shown.Blobs, shown.Hits, shown.Misses, api.Replicas, hits, misses)
	}
	if want := []string{"docker.io healthy", "slow.example healthy"}; !slices.Equal(shown.Upstreams, want) {
		t.Fatalf("upstreams on the page: %q, want %q", shown.Upstreams, want)
	}
	if want := []string{"harbor-b healthy"}; !slices.Equal(shown.Targets, want) {
		t.Fatalf("targets on the page: %q, want %q", shown.Targets, want)
	}
	if want := []string{"app-to-b"}; !slices.Equal(shown.Rules, want) {
		t.Fatalf("rules on the page: %q, want %q", shown.Rules, want)
	}
	if !strings.Contains(shown.TopPulls, "docker.io/library/app1") {
		t.Fatalf("most pulled: %q", shown.TopPulls)
	}

	// A job over a slow link: the open page shows it part-way, then done,
	// without being reloaded.
	job := struct{ ID string }{submit(t, base, `{"images": ["slow.example/library/big:1.0"]}`)}
	var seen []string // each distinct state of the job's row, in order
	waitFor(t, "the job done on the page", func() bool {
		var row string
		admin.eval(t, fmt.Sprintf(`(() => { const r = document.querySelector('#jobs tr[data-job=%q]');
			if (!r) return "";
			const d = r.querySelector('[data-field=images_done]').dataset;
			return r.querySelector('[data-field=state]').textContent + " " + (Number(d.bytesDone) > 0 && Number(d.bytesDone) < Number(d.bytesTotal) ? "part" : d.bytesDone == d.bytesTotal ? "all" : "none"); })()`, job.ID), &row)
		if row != "" && (len(seen) == 0 || seen[len(seen)-1] != row) {
			seen = append(seen, row)
		}
		return row == "done all"
	})
	if !slices.Contains(seen, "running part") {
		t.Fatalf("the page never showed the job part-way: %q", seen)
	}

	// The page's own buttons: cancel a running job, retry a failed one's
	// images. (The API refuses cross-site changes; these are same-origin.)
	slow.PushImage(t, "library/big2", "1.0", 73, 2, 512<<10, amd64)
	running := submit(t, base, `{"images": ["slow.example/library/big2:1.0"]}`)
	failed := submit(t, base, `{"images": ["slow.example/library/missing:1.0"]}`)
	click := func(act, id string) {
		t.Helper()
		waitFor(t, act+" button of job "+id, func() bool {
			var ok bool
			admin.eval(t, fmt.Sprintf(`(() => { const b = document.querySelector('button[data-act=%q][data-job=%q]'); if (b) b.click(); return !!b; })()`, act, id), &ok)
			return ok
		})
	}
	click("cancel", running)
	waitFor(t, "the job cancelled", func() bool {
		var j struct{ State string }
		getJSON(t, base, "admin", "/api/v1/jobs/"+running, &j)
		return j.State == "cancelled"
	})
	waitFor(t, "the job failed", func() bool {
		var j struct{ State string }
		getJSON(t, base, "admin", "/api/v1/jobs/"+failed, &j)
		return j.State == "failed"
	})
	click("retry", failed)
	waitFor(t, "a retry of the failed job", func() bool {
		var list struct {
			Jobs []struct {
				RetryOf string `json:"retry_of"`
			}
		}
		getJSON(t, base, "admin", "/api/v1/jobs", &list)
		return slices.ContainsFunc(list.Jobs, func(j struct {
			RetryOf string `json:"retry_of"`
		}) bool {
			return j.RetryOf == failed
		})
	})
	admin.noErrors(t)

	// The viewer: no API rights, pull rights on one repository.
	viewer := newBrowser(t, "viewer")
	viewer.open(t, base+"/ui/")
	viewer.settled(t)
	var sections map[string]string
	viewer.eval(t, `Object.fromEntries([...document.querySelectorAll('section')].map(s => [s.id, s.querySelector('.body').dataset.state]))`, &sections)
	if want := map[string]string{"cache": "ok", "upstreams": "denied", "targets": "denied", "jobs": "denied", "rules": "denied"}; fmt.Sprint(sections) != fmt.Sprint(want) {
		t.Fatalf("the viewer's sections: %v, want %v", sections, want)
	}
	var top string
	viewer.eval(t, `document.querySelector('#top-bytes').textContent`, &top)
	if !strings.Contains(top, "docker.io/library/app") || strings.Contains(top, "big") {
		t.Fatalf("the viewer's top repositories: %q", top)
	}
	viewer.noErrors(t)

	// Another site's page cannot make the browser act: a form's POST with
	// the viewer's (or anyone's) cached credentials is refused.
	req, _ := http.NewRequest(http.MethodPost, base+"/api/v1/jobs/"+job.ID+"/retry", nil)
	req.SetBasicAuth("admin", "admin-pw")
	req.Header.Set("Origin", "https://evil.example")
	req.Header.Set("Sec-Fetch-Site", "cross-site")
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Fatalf("a cross-site POST: %d, want 403", resp.StatusCode)
	}
}

const ocispecManifest = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.v2+json"

// submit starts a prefetch job as admin and returns its ID.
func submit(t *testing.T, base, body string) string {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, base+"/api/v1/prefetch", strings.NewReader(body))
	req.SetBasicAuth("admin", "admin-pw")
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var job struct{ ID string }
	json.NewDecoder(resp.Body).Decode(&job)
	if resp.StatusCode != http.StatusAccepted || job.ID == "" {
		t.Fatalf("prefetch %s: %d", body, resp.StatusCode)
	}
	return job.ID
}
