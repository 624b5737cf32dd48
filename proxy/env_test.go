package proxy_test

import (
	"bytes"
	"cmp"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/wharf-registry/wharf/audit"
	"github.com/wharf-registry/wharf/auth"
	"github.com/wharf-registry/wharf/cache"
	"github.com/wharf-registry/wharf/cluster"
	"github.com/wharf-registry/wharf/replicate"
	"github.com/wharf-registry/wharf/route"
	"github.com/wharf-registry/wharf/server"
	"github.com/wharf-registry/wharf/storage"
	"github.com/wharf-registry/wharf/upstream"
	"github.com/wharf-registry/wharf/upstream/upstreamtest"
)

// spec configures one upstream of a test Wharf.
type spec struct {
	name      string
	reg       *upstreamtest.Registry
	url       string // overrides reg.URL
	aliases   []string
	def       bool
	ttl       time.Duration
	negTTL    time.Duration
	stale     time.Duration // revalidate timeout
	user      string
	password  string
	maxFills  int           // fills at once from this upstream; 0: no bound
	fillGrace time.Duration // an unread fill is cancelled after this
	wait      time.Duration // longest wait for an upstream or fill slot
	maxConc   int           // upstream requests at once
	eager     bool          // start an image's blob fills with its manifest
	headers   time.Duration // upstream response header and idle timeouts; 0: 2s and 3s
}

// env is a Wharf handler in front of real registries.
type env struct {
	*httptest.Server
	store *storage.Store
	cache *cache.Cache
	jobs  *replicate.Jobs
	rules *replicate.Rules
	srv   *server.Server
	reg   *prometheus.Registry
	fleet *cluster.Cluster // nil: not in one
	// apiAuth is sent as Authorization on /api/ requests that set none.
	apiAuth string
}

func newEnv(t testing.TB, root string, specs ...spec) *env {
	t.Helper()
	return newEnvWith(t, root, cache.Config{}, specs...)
}

// newEnvWith takes cache settings (MaxSize, Pins...); Upstreams and
// Registerer are filled in.
func newEnvWith(t testing.TB, root string, cfg cache.Config, specs ...spec) *env {
	t.Helper()
	return newEnvAPI(t, root, cfg, "", specs...)
}

// newEnvAPI also sets the API token, and resumes the jobs the store holds
// as wharf serve does.
func newEnvAPI(t testing.TB, root string, cfg cache.Config, token string, specs ...spec) *env {
	t.Helper()
	return newEnvStore(t, root, storage.Options{}, cfg, token, specs...)
}

// newEnvStore also takes the store's options (MinFree, a Statfs to fill
// the disk with).
func newEnvStore(t testing.TB, root string, sopts storage.Options, cfg cache.Config, token string, specs ...spec) *env {
	t.Helper()
	return newEnvFull(t, root, sopts, cfg, replicate.Config{}, token, nil, nil, specs...)
}

// newEnvAccess is a Wharf whose access is decided by ac.
func newEnvAccess(t testing.TB, ac auth.Config, specs ...spec) *env {
	t.Helper()
	return newEnvFull(t, t.TempDir(), storage.Options{}, cache.Config{}, replicate.Config{}, "", &ac, nil, specs...)
}

func newEnvFull(t testing.TB, root string, sopts storage.Options, cfg cache.Config, jcfg replicate.Config, token string, ac *auth.Config, rules []replicate.Rule, specs ...spec) *env {
	t.Helper()
	return newEnvOpts(t, root, envOpts{sopts: sopts, cfg: cfg, jcfg: jcfg, token: token, ac: ac, rules: rules}, specs...)
}

// envOpts is everything a test Wharf can be given.
type envOpts struct {
	sopts storage.Options
	cfg   cache.Config
	jcfg  replicate.Config
	token string
	ac    *auth.Config
	rules []replicate.Rule
	ln    net.Listener    // where it listens; nil: a new loopback port
	fleet *cluster.Config // its place in a fleet (Advertise is filled in); nil: none
	audit *audit.Log      // nil: none
}

func newEnvOpts(t testing.TB, root string, o envOpts, specs ...spec) *env {
	t.Helper()
	sopts, cfg, jcfg, token, ac, rules := o.sopts, o.cfg, o.jcfg, o.token, o.ac, o.rules
	ts := httptest.NewUnstartedServer(nil)
	if o.ln != nil {
		ts.Listener.Close()
		ts.Listener = o.ln
	}
	store, err := storage.Open(root, sopts)
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	um := upstream.NewMetrics(reg)
	log := cmp.Or(cfg.Logger, slog.New(slog.NewTextHandler(io.Discard, nil)))
	scfg := server.Config{Jobs: jcfg, Rules: rules, RuleBatch: 50 * time.Millisecond, Auth: ac, APIToken: token, Registry: reg, Logger: log, Audit: cmp.Or(o.audit, o.jcfg.Audit)}
	for _, s := range specs {
		u := s.url
		if u == "" {
			u = s.reg.URL
		}
		c, err := upstream.New(upstream.Config{Name: s.name, URL: u, Insecure: true, Username: s.user, Password: s.password,
			DialTimeout: time.Second, ResponseHeaderTimeout: cmp.Or(s.headers, 2*time.Second), IdleTimeout: cmp.Or(s.headers, 3*time.Second),
			MaxConcurrent: s.maxConc, WaitTimeout: s.wait, Logger: log}, um)
		if err != nil {
			t.Fatal(err)
		}
		cfg.Upstreams = append(cfg.Upstreams, cache.Upstream{Name: s.name, Source: c, TagTTL: s.ttl, NegativeTTL: s.negTTL, RevalidateTimeout: s.stale,
			MaxFills: s.maxFills, FillGrace: s.fillGrace, WaitTimeout: s.wait, EagerFill: s.eager, Private: s.user != "" || s.password != ""})
		scfg.Upstreams = append(scfg.Upstreams, route.Upstream{Name: s.name, Aliases: s.aliases, Default: s.def, Hosts: []string{strings.TrimPrefix(u, "http://")}})
		scfg.Status = append(scfg.Status, func() any { return c.Health() })
	}
	scfg.Cache = cfg
	if o.fleet != nil { // see cluster_test.go
		fc := *o.fleet
		fc.Advertise, fc.Registerer, fc.Logger = "http://"+ts.Listener.Addr().String(), reg, log
		fleet, err := cluster.New(fc)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(fleet.Close)
		scfg.Fleet = fleet
	}
	srv, err := server.New(store, scfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	ts.Config.Handler = srv.Handler
	ts.Start()
	e := &env{Server: ts, store: store, cache: srv.Cache, jobs: srv.Jobs, rules: srv.Rules, srv: srv, reg: reg, fleet: scfg.Fleet}
	t.Cleanup(e.close)
	return e
}

func (e *env) close() {
	if e.store == nil {
		return
	}
	e.Server.Close()
	e.srv.Close(context.Background())
	e.store.Close()
	e.store = nil
}

// response is a fully read answer.
type response struct {
	status int
	header http.Header
	body   []byte
}

func (e *env) do(t *testing.T, method, path string, hdr ...string) response {
	t.Helper()
	return e.send(t, method, path, "", "", hdr...)
}

// send is do with a body. A "Host" pair among hdr becomes the request's
// Host, as a client addressing Wharf by that name would send it.
func (e *env) send(t *testing.T, method, path, contentType, body string, hdr ...string) response {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, e.URL+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		if hdr[i] == "Host" {
			req.Host = hdr[i+1]
		} else {
			req.Header.Set(hdr[i], hdr[i+1])
		}
	}
	e.authorize(req)
	resp, err := e.Client().Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: read body: %v", method, path, err)
	}
	return response{status: resp.StatusCode, header: resp.Header, body: b}
}

// get asserts a 200 whose body is exactly want and whose digest header is
// dgst.
func (e *env) get(t *testing.T, path string, want []byte, dgst string) response {
	t.Helper()
	r := e.do(t, http.MethodGet, path)
	if r.status != http.StatusOK {
		t.Fatalf("GET %s: status %d, body %s", path, r.status, r.body)
	}
	if string(r.body) != string(want) {
		t.Fatalf("GET %s: body differs (%d bytes, want %d)", path, len(r.body), len(want))
	}
	if got := r.header.Get("Docker-Content-Digest"); got != dgst {
		t.Fatalf("GET %s: Docker-Content-Digest %q, want %q", path, got, dgst)
	}
	return r
}

// wantError asserts status and OCI error code.
func wantError(t *testing.T, r response, status int, code string) {
	t.Helper()
	if r.status != status || !strings.Contains(string(r.body), `"code":"`+code+`"`) {
		t.Fatalf("got %d %s, want %d %s", r.status, r.body, status, code)
	}
	if ct := r.header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Fatalf("error Content-Type %q", ct)
	}
}

// wantCounts asserts exact upstream traffic by method and kind.
func wantCounts(t *testing.T, reg *upstreamtest.Registry, want map[string]int) {
	t.Helper()
	got := map[string]int{}
	for _, r := range reg.Requests() {
		got[r.Method+" "+r.Kind()]++
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("upstream %s: %d requests, want %d (all: %v)", k, got[k], v, got)
		}
	}
	total := 0
	for _, v := range want {
		total += v
	}
	if n := reg.Total(); n != total {
		t.Errorf("upstream saw %d requests, want %d: %v", n, total, got)
	}
}

// metric sums the series of the named counter or gauge that carry the
// given label name/value pairs (all of them, with none).
func metric(t *testing.T, e *env, name string, labels ...string) float64 {
	t.Helper()
	mfs, err := e.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	sum := 0.0
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	series:
		for _, m := range mf.GetMetric() {
			for i := 0; i+1 < len(labels); i += 2 {
				if !slices.ContainsFunc(m.GetLabel(), func(l *dto.LabelPair) bool {
					return l.GetName() == labels[i] && l.GetValue() == labels[i+1]
				}) {
					continue series
				}
			}
			sum += m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
	}
	return sum
}

// getAll GETs path from n clients at once; each must receive exactly want
// (errors are reported here, from the test's goroutine).
func (e *env) getAll(t *testing.T, n int, path string, want []byte) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for range n {
		wg.Go(func() {
			resp, err := e.Client().Get(e.URL + path)
			if err != nil {
				errs <- err
				return
			}
			got, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil || resp.StatusCode != 200 || !bytes.Equal(got, want) {
				errs <- fmt.Errorf("GET %s: %d, %d of %d bytes, %v", path, resp.StatusCode, len(got), len(want), err)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func (e *env) authorize(req *http.Request) {
	if e.apiAuth != "" && strings.HasPrefix(req.URL.Path, "/api/") && req.Header.Get("Authorization") == "" {
		req.Header.Set("Authorization", e.apiAuth)
	}
}
