package api_test

import (
	"bytes"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/wharf-registry/wharf/api"
	"github.com/wharf-registry/wharf/cache"
	"github.com/wharf-registry/wharf/replicate"
	"github.com/wharf-registry/wharf/route"
	"github.com/wharf-registry/wharf/server"
	"github.com/wharf-registry/wharf/storage"
	"github.com/wharf-registry/wharf/upstream"
	"github.com/wharf-registry/wharf/upstream/upstreamtest"
)

// call sends v (nil: no body) and decodes the answer into out strictly: a
// field the wire types do not name is a broken contract.
func call(t *testing.T, srv *httptest.Server, method, path string, v, out any, want int) http.Header {
	t.Helper()
	var body io.Reader
	if v != nil {
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		body = bytes.NewReader(b)
	}
	req, _ := http.NewRequestWithContext(t.Context(), method, srv.URL+path, body)
	req.Header.Set("Content-Type", "application/json")
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != want {
		t.Fatalf("%s %s: %d %s, want %d", method, path, resp.StatusCode, raw, want)
	}
	if out != nil {
		dec := json.NewDecoder(bytes.NewReader(raw))
		dec.DisallowUnknownFields()
		if err := dec.Decode(out); err != nil {
			t.Fatalf("%s %s: %v in %s", method, path, err, raw)
		}
	}
	return resp.Header
}

// Every request and answer type of the API, through the real server, as
// the CLI sends and reads them.
func TestWireTypesRoundTrip(t *testing.T) {
	src, dst := upstreamtest.New(t), upstreamtest.New(t)
	img := src.PushImage(t, "proj/app", "1.0", 91, 1, 2<<10, ocispec.Platform{OS: "linux", Architecture: "amd64"})
	store, err := storage.Open(t.TempDir(), storage.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	from, err := upstream.New(upstream.Config{Name: "a.example", URL: src.URL, Insecure: true}, nil)
	if err != nil {
		t.Fatal(err)
	}
	to, err := upstream.New(upstream.Config{Name: "b", URL: dst.URL, Insecure: true, Push: true}, nil)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := server.New(store, server.Config{
		Cache:     cache.Config{Upstreams: []cache.Upstream{{Name: "a.example", Source: from, TagTTL: time.Hour}}},
		Upstreams: []route.Upstream{{Name: "a.example", Default: true}},
		Status:    []func() any{func() any { return from.Health() }},
		Jobs:      replicate.Config{Targets: map[string]replicate.Target{"b": to}},
		Rules:     []replicate.Rule{{Name: "to-b", Sources: []string{"a.example/proj/app"}, Target: "b"}},
		APIToken:  "", // loopback holds the API
		Registry:  prometheus.NewRegistry(),
		Logger:    slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv.Handler)
	t.Cleanup(func() { hs.Close(); srv.Close(t.Context()) })

	var job api.Job
	hdr := call(t, hs, http.MethodPost, "/api/v1/prefetch", api.PrefetchRequest{Images: []string{"proj/app:1.0"}, PushTo: "b", Pin: true,
		Rename: []api.Rename{{From: "a.example/proj/", To: "copy/"}}}, &job, http.StatusAccepted)
	if hdr.Get("Location") != "/api/v1/jobs/"+job.ID || job.State != api.StateQueued || job.Images != 1 || job.PushTo != "b" {
		t.Fatalf("submitted: %+v", job)
	}
	call(t, hs, http.MethodGet, "/api/v1/jobs/"+job.ID+"?wait=1m", nil, &job, http.StatusOK)
	if job.State != api.StateDone || job.Done != 1 {
		t.Fatalf("job: %+v", job)
	}
	var list api.JobList
	call(t, hs, http.MethodGet, "/api/v1/jobs", nil, &list, http.StatusOK)
	var page api.ImagePage
	call(t, hs, http.MethodGet, "/api/v1/jobs/"+job.ID+"/images", nil, &page, http.StatusOK)
	if len(list.Jobs) != 1 || len(page.Images) != 1 || page.Images[0].TargetRepo != "copy/app" || page.Images[0].Digest != img.Manifest.Digest {
		t.Fatalf("jobs %+v, images %+v", list, page)
	}
	var pins api.PinList
	call(t, hs, http.MethodGet, "/api/v1/pins", nil, &pins, http.StatusOK)
	if len(pins.Pins) != 1 || pins.Pins[0].Digest != img.Manifest.Digest {
		t.Fatalf("pins %+v", pins)
	}
	var run api.RuleRun
	call(t, hs, http.MethodPost, "/api/v1/replication/to-b/run", struct{}{}, &run, http.StatusAccepted)
	var rules api.RuleList
	call(t, hs, http.MethodGet, "/api/v1/replication", nil, &rules, http.StatusOK)
	if run.Job == nil || len(rules.Rules) != 1 || rules.Rules[0].LastRun == nil || rules.Rules[0].LastRun.Job != run.Job.ID {
		t.Fatalf("run %+v, rules %+v", run, rules)
	}
	var ups api.UpstreamList
	call(t, hs, http.MethodGet, "/api/v1/upstreams", nil, &ups, http.StatusOK)
	if len(ups.Upstreams) != 1 {
		t.Fatalf("upstreams %+v", ups)
	}
}
