// Package proxy is Wharf's HTTP surface: the OCI Distribution read API,
// routing of each request to an upstream, OCI error mapping, request logs
// and metrics. The cache does the work; this package speaks HTTP.
package proxy

import (
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"

	"github.com/gorilla/mux"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/wharf-registry/wharf/auth"
	"github.com/wharf-registry/wharf/cache"
	"github.com/wharf-registry/wharf/cluster"
	"github.com/wharf-registry/wharf/replicate"
	"github.com/wharf-registry/wharf/route"
)

// Route tells the proxy which requests an upstream serves.
type Route struct {
	Name    string     // key matched against ?ns= and the path prefix
	Aliases []string   // other hosts that mean the same upstream
	Default bool       // serves requests that name no upstream
	Status  func() any // health for GET /api/v1/upstreams, JSON-encoded; nil: none
}

// Config holds the proxy's settings.
type Config struct {
	Routes   []Route
	Logger   *slog.Logger         // nil: slog.Default()
	Registry *prometheus.Registry // metrics are registered here and served on /metrics; nil: none
	// Auth decides who may pull what and use the API. nil: anyone may pull
	// anything, and the API needs APIToken, or without one answers
	// loopback clients only.
	Auth     *auth.Auth
	APIToken string // only read when Auth is nil
	// Jobs runs the prefetch jobs of /api/v1 (required).
	Jobs *replicate.Jobs
	// Rules are the replication rules /api/v1/replication shows and runs;
	// nil: none.
	Rules *replicate.Rules
	// PeerAuth admits the fleet's other replicas to the peer blob route
	// (cluster.BlobPath); nil: no fleet, no route.
	PeerAuth PeerAuth
}

type proxy struct {
	cache    *cache.Cache
	status   []func() any
	router   *route.Router
	log      *slog.Logger
	metrics  *metrics
	jobs     *replicate.Jobs
	rules    *replicate.Rules
	auth     *auth.Auth
	peerAuth PeerAuth
}

// New returns the HTTP handler for the registry API, /healthz and /metrics.
func New(c *cache.Cache, cfg Config) (http.Handler, error) {
	p := &proxy{cache: c, log: cfg.Logger, auth: cfg.Auth, jobs: cfg.Jobs, rules: cfg.Rules, peerAuth: cfg.PeerAuth}
	if p.log == nil {
		p.log = slog.Default()
	}
	if p.jobs == nil {
		return nil, errors.New("proxy: Config.Jobs is required")
	}
	if p.auth == nil {
		a, err := auth.New(auth.Config{Anonymous: []string{"*/*"}, Loopback: true, LoopbackAPI: cfg.APIToken == "", APIToken: cfg.APIToken, Logger: p.log})
		if err != nil {
			return nil, err
		}
		p.auth = a
	}
	var ups []route.Upstream
	for _, rt := range cfg.Routes {
		ups = append(ups, route.Upstream{Name: rt.Name, Aliases: rt.Aliases, Default: rt.Default})
		if rt.Status != nil {
			p.status = append(p.status, rt.Status)
		}
	}
	router, err := route.NewRouter(ups)
	if err != nil {
		return nil, fmt.Errorf("proxy: %w", err)
	}
	p.router = router
	var reg prometheus.Registerer
	if cfg.Registry != nil {
		reg = cfg.Registry
	}
	m, err := newMetrics(reg)
	if err != nil {
		return nil, err
	}
	p.metrics = m

	r := mux.NewRouter().SkipClean(true)
	r.NotFoundHandler = p.wrap("unknown", func(w http.ResponseWriter, r *http.Request) error {
		return ociError(http.StatusNotFound, errUnsupported, "no such endpoint")
	})
	// A route's other methods (the peer route's): an OCI error, not
	// gorilla's empty 405.
	r.MethodNotAllowedHandler = p.wrap("unknown", unsupported)
	// Routes are tried in order, the hot ones first, and matched without
	// regexps (see apiPath). Uploads come before blobs so that
	// /blobs/uploads/ is never read as a digest.
	r.MatcherFunc(apiPath("manifests", "reference")).Handler(p.read("manifest", p.manifest))
	r.MatcherFunc(uploadPath).Handler(p.wrap("upload", unsupported))
	r.MatcherFunc(apiPath("blobs", "digest")).Handler(p.read("blob", p.blob))
	r.MatcherFunc(apiPath("tags", "list")).Handler(p.read("tags", p.tags))
	r.MatcherFunc(apiPath("referrers", "digest")).Handler(p.read("referrers", p.referrers))
	r.Handle("/v2", p.read("base", p.base))
	r.Handle("/v2/", p.read("base", p.base))
	r.Handle("/v2/_catalog", p.read("catalog", p.catalog))
	// The API's rights: the one named here to enter; job routes also check
	// whose job it is.
	r.Handle("/api/v1/upstreams", p.api("status", auth.RightAdmin, p.upstreams, http.MethodGet))
	r.Handle("/api/v1/prefetch", p.api("prefetch", auth.RightPrefetch, p.prefetch, http.MethodPost))
	r.Handle("/api/v1/jobs", p.api("jobs", "", p.listJobs, http.MethodGet))
	r.Handle("/api/v1/jobs/{id}", p.api("job", "", p.job, http.MethodGet, http.MethodDelete))
	r.Handle("/api/v1/jobs/{id}/images", p.api("job-images", "", p.jobImages, http.MethodGet))
	r.Handle("/api/v1/pins", p.api("pins", auth.RightPins, p.pins, http.MethodGet, http.MethodDelete))
	r.Handle("/api/v1/replication", p.api("replication", auth.RightJobs, p.replication, http.MethodGet))
	r.Handle("/api/v1/replication/{rule}/run", p.api("replication-run", auth.RightPrefetch, p.replicate, http.MethodPost))
	if cfg.PeerAuth != nil {
		r.Handle(cluster.BlobPath+"{digest}", p.wrap("peer-blob", p.peerBlob)).Methods(http.MethodGet)
	}
	r.Handle("/healthz", p.wrap("healthz", func(w http.ResponseWriter, r *http.Request) error {
		// Degraded is still 200: a replica that serves what it holds and
		// passes misses through must not be restarted or taken out.
		msg := "ok\n"
		if why := p.cache.Degraded(r.Context()); why != "" {
			msg = "degraded: " + why + "\n"
		}
		_, err := w.Write([]byte(msg))
		return err
	}))
	if cfg.Registry != nil {
		r.Handle("/metrics", promhttp.HandlerFor(cfg.Registry, promhttp.HandlerOpts{}))
	}
	return r, nil
}

// apiPath matches /v2/<name>/<kind>/<last>, where last has no slash, and
// sets the vars "name" and key. Like the regexp /v2/(.+)/kind/([^/]+) it
// takes the last /kind/ in the path, but costs a string search instead of
// a backtracking match on every request. For "tags" the last element must
// be "list".
func apiPath(kind, key string) mux.MatcherFunc {
	sep := "/" + kind + "/"
	return func(r *http.Request, m *mux.RouteMatch) bool {
		rest, ok := strings.CutPrefix(r.URL.Path, "/v2/")
		i := strings.LastIndex(rest, sep)
		if !ok || i <= 0 {
			return false
		}
		last := rest[i+len(sep):]
		if last == "" || strings.Contains(last, "/") || (kind == "tags" && last != "list") {
			return false
		}
		if m.Vars == nil {
			m.Vars = map[string]string{}
		}
		m.Vars["name"], m.Vars[key] = rest[:i], last
		return true
	}
}

// uploadPath matches the blob upload endpoints, /v2/<name>/blobs/uploads[/...].
func uploadPath(r *http.Request, m *mux.RouteMatch) bool {
	rest, ok := strings.CutPrefix(r.URL.Path, "/v2/")
	i := strings.LastIndex(rest, "/blobs/uploads")
	if !ok || i <= 0 {
		return false
	}
	tail := rest[i+len("/blobs/uploads"):]
	return tail == "" || tail[0] == '/'
}

// read admits GET and HEAD; every write a client tries on a mirror is
// answered 405 UNSUPPORTED. The caller is authenticated here; what it may
// pull is checked where the request is routed (resolve).
func (p *proxy) read(route string, h func(http.ResponseWriter, *http.Request) error) http.Handler {
	return p.wrap(route, func(w http.ResponseWriter, r *http.Request) error {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			return unsupported(w, r)
		}
		r, err := p.authenticate(r)
		if err != nil {
			return err
		}
		return h(w, r)
	})
}

func unsupported(w http.ResponseWriter, r *http.Request) error {
	return ociError(http.StatusMethodNotAllowed, errUnsupported, "wharf is a read-only mirror: "+r.Method+" is not supported")
}

// upstreams reports each upstream's health: circuit state, failures, rate
// limits. Read-only and free of secrets.
func (p *proxy) upstreams(w http.ResponseWriter, r *http.Request) error {
	list := make([]any, 0, len(p.status))
	for _, s := range p.status {
		list = append(list, s())
	}
	return writeJSON(w, r, map[string]any{"upstreams": list})
}

// base answers the version check. An anonymous caller who may pull
// nothing is asked to log in, which is how `docker login` learns it must.
func (p *proxy) base(w http.ResponseWriter, r *http.Request) error {
	if p.auth.MustLogIn(identity(r.Context())) {
		return p.unauthorized("authentication required")
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", "2")
	if r.Method == http.MethodHead {
		return nil
	}
	_, err := w.Write([]byte("{}"))
	return err
}
