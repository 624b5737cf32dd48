// Package proxy is Wharf's registry surface: the OCI Distribution read
// API under /v2/, routing of each request to an upstream, the peer route
// of a fleet, /healthz and /metrics. The cache does the work; this package
// speaks HTTP (through httpx, which the API under /api/ shares).
package proxy

import (
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"

	"github.com/distribution/distribution/v3/registry/api/errcode"
	"github.com/gorilla/mux"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/wharf-registry/wharf/audit"
	"github.com/wharf-registry/wharf/auth"
	"github.com/wharf-registry/wharf/cache"
	"github.com/wharf-registry/wharf/cluster"
	"github.com/wharf-registry/wharf/httpx"
	"github.com/wharf-registry/wharf/route"
)

// Config holds the proxy's settings.
type Config struct {
	Router *route.Router // which upstream a request means (required)
	Auth   *auth.Auth    // who may pull what (required)
	// API serves everything under /api/ (package api); nil: no API.
	API      http.Handler
	Logger   *slog.Logger         // nil: slog.Default()
	Registry *prometheus.Registry // served on /metrics; nil: none
	// Metrics count every request, the API's too (required).
	Metrics *httpx.Metrics
	// Fleet is this replica's cluster: it admits the other replicas to
	// the peer routes and says what troubles the fleet. nil: no fleet, no
	// peer routes.
	Fleet *cluster.Cluster
	// Ready reports whether this replica takes work (it has started and
	// is not stopping); /healthz answers 503 otherwise. nil: always.
	Ready func() bool
	// Audit records every manifest and blob GET; nil: none.
	Audit *audit.Log
}

type proxy struct {
	cache   *cache.Cache
	router  *route.Router
	log     *slog.Logger
	http    *httpx.Metrics
	metrics *metrics
	auth    *auth.Auth
	fleet   *cluster.Cluster
	audit   *audit.Log
}

// New returns the HTTP handler for the registry API, the peer route,
// /healthz and /metrics, with cfg.API under /api/.
func New(c *cache.Cache, cfg Config) (http.Handler, error) {
	if cfg.Router == nil || cfg.Auth == nil || cfg.Metrics == nil {
		return nil, errors.New("proxy: Router, Auth and Metrics are required")
	}
	p := &proxy{cache: c, router: cfg.Router, log: cfg.Logger, http: cfg.Metrics, auth: cfg.Auth, fleet: cfg.Fleet, audit: cfg.Audit}
	if p.log == nil {
		p.log = slog.Default()
	}
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
		return httpx.OCIError(http.StatusNotFound, errcode.ErrorCodeUnsupported, "no such endpoint")
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
	if cfg.API != nil {
		r.PathPrefix("/api/").Handler(cfg.API)
		r.PathPrefix("/ui").Handler(cfg.API) // the status page
	}
	if cfg.Fleet != nil {
		r.Handle(cluster.BlobPath+"{digest}", p.wrap("peer-blob", p.peerBlob)).Methods(http.MethodGet)
		r.Handle(cluster.TagPath, p.wrap("peer-tag", p.peerTag)).Methods(http.MethodGet, http.MethodHead)
		r.Handle(cluster.TagsPath, p.wrap("peer-tags", p.peerTags)).Methods(http.MethodGet)
		r.Handle(cluster.ReposPath, p.wrap("peer-repositories", p.peerRepositories)).Methods(http.MethodGet)
		r.Handle(cluster.PingPath, http.HandlerFunc(cfg.Fleet.ServePing)).Methods(http.MethodGet)
	}
	r.Handle("/healthz", p.wrap("healthz", p.healthz(cfg.Ready)))
	r.Handle("/livez", p.wrap("livez", func(w http.ResponseWriter, r *http.Request) error {
		_, err := io.WriteString(w, "ok\n")
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
		r, err := httpx.Authenticate(p.auth, r)
		if err != nil {
			return err
		}
		err = h(w, r)
		if p.audit != nil && r.Method == http.MethodGet && (route == "manifest" || route == "blob") {
			p.auditPull(w, r, route, err)
		}
		return err
	})
}

// auditPull records a manifest or blob GET: who, what, and the answer
// (refusals too: they are what a security team looks for).
func (p *proxy) auditPull(w http.ResponseWriter, r *http.Request, kind string, err error) {
	id := httpx.Identity(r.Context())
	addr := r.RemoteAddr
	if host, _, err := net.SplitHostPort(addr); err == nil {
		addr = host
	}
	rec := audit.Record{Action: audit.Pull, User: id.User, Address: addr, Repository: mux.Vars(r)["name"], Kind: kind,
		Digest: w.Header().Get("Docker-Content-Digest")}
	if id.Token {
		rec.User = "api-token"
	}
	if kind == "manifest" {
		rec.Reference = mux.Vars(r)["reference"]
	} else {
		rec.Reference = mux.Vars(r)["digest"]
	}
	rec.Result, rec.Upstream = cache.ReportOf(r.Context()).Result()
	if rw, ok := w.(*httpx.Recorder); ok {
		rec.Status = rw.Status()
	}
	if err != nil {
		rec.Status, rec.Error = httpx.ToHTTP(err, errcode.ErrorCodeNameUnknown).Status, err.Error()
		if rec.Result == "" {
			rec.Result = "refused"
		}
	}
	p.audit.Write(rec)
}

func unsupported(w http.ResponseWriter, r *http.Request) error {
	return httpx.OCIError(http.StatusMethodNotAllowed, errcode.ErrorCodeUnsupported, "wharf is a read-only mirror: "+r.Method+" is not supported")
}

// base answers the version check. An anonymous caller who may pull
// nothing is asked to log in, which is how `docker login` learns it must.
func (p *proxy) base(w http.ResponseWriter, r *http.Request) error {
	if p.auth.MustLogIn(httpx.Identity(r.Context())) {
		return httpx.Unauthorized(p.auth, "authentication required")
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", "2")
	if r.Method == http.MethodHead {
		return nil
	}
	_, err := w.Write([]byte("{}"))
	return err
}
