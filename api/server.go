// Package api is Wharf's own API under /api/v1: prefetch jobs (their
// bodies: JSON, text lists, skopeo sync YAML), replication rules, pins and
// upstream health. It can make Wharf fetch and push a lot of data, so
// every route needs a right (see access.go): a user's, the token's, or
// loopback's when Wharf has neither. Its wire types (types.go) are what
// the CLI sends and decodes.
package api

import (
	"errors"
	"log/slog"
	"net/http"

	"github.com/distribution/distribution/v3/registry/api/errcode"
	"github.com/gorilla/mux"

	"github.com/wharf-registry/wharf/auth"
	"github.com/wharf-registry/wharf/cache"
	"github.com/wharf-registry/wharf/httpx"
	"github.com/wharf-registry/wharf/replicate"
	"github.com/wharf-registry/wharf/route"
)

// Config is what the API serves and who may use it.
type Config struct {
	Cache  *cache.Cache     // tag lists, for list expansion and from_cache
	Jobs   *replicate.Jobs  // required
	Rules  *replicate.Rules // nil: none
	Auth   *auth.Auth       // required
	Router *route.Router    // how references name an upstream, as pulls do
	// Status reports each upstream's health for GET /api/v1/upstreams,
	// and TargetStatus each push target's for GET /api/v1/targets,
	// JSON-encoded.
	Status       []func() any
	TargetStatus []func() any
	Logger       *slog.Logger
	Metrics      *httpx.Metrics
	// Fleet is the other replicas, which answer for their jobs and rules
	// (see fleet.go); nil: none.
	Fleet Fleet
	// Version is shown on the status page.
	Version string
}

type api struct {
	cache        *cache.Cache
	jobs         *replicate.Jobs
	rules        *replicate.Rules
	auth         *auth.Auth
	router       *route.Router
	status       []func() any
	targetStatus []func() any
	version      string
	log          *slog.Logger
	metrics      *httpx.Metrics
	fleet        Fleet
}

// New returns the handler of every /api/v1 route.
func New(cfg Config) (http.Handler, error) {
	if cfg.Jobs == nil || cfg.Auth == nil || cfg.Router == nil || cfg.Metrics == nil {
		return nil, errors.New("api: Jobs, Auth, Router and Metrics are required")
	}
	a := &api{cache: cfg.Cache, jobs: cfg.Jobs, rules: cfg.Rules, auth: cfg.Auth, router: cfg.Router,
		status: cfg.Status, targetStatus: cfg.TargetStatus, log: cfg.Logger, metrics: cfg.Metrics, fleet: cfg.Fleet, version: cfg.Version}
	if a.log == nil {
		a.log = slog.Default()
	}
	if a.fleet != nil && a.rules != nil {
		a.rules.SetOwners(ruleOwners{a})
	}
	r := mux.NewRouter().SkipClean(true)
	r.NotFoundHandler = httpx.Wrap(a.log, a.metrics, "unknown", errcode.ErrorCodeNameUnknown, func(w http.ResponseWriter, r *http.Request) error {
		return httpx.OCIError(http.StatusNotFound, errcode.ErrorCodeUnsupported, "no such endpoint")
	})
	// The rights: the one named here to enter; job routes also check
	// whose job it is.
	r.Handle("/api/v1/upstreams", a.route("status", auth.RightAdmin, a.upstreams, http.MethodGet))
	r.Handle("/api/v1/targets", a.route("targets", auth.RightAdmin, a.targets, http.MethodGet))
	r.Handle("/api/v1/cache", a.route("cache", "", a.cacheStatus, http.MethodGet))
	r.Handle("/api/v1/me", a.route("me", "", a.me, http.MethodGet))
	r.PathPrefix("/ui/").Handler(a.route("ui", "", a.ui, http.MethodGet))
	r.Handle("/ui", http.RedirectHandler("/ui/", http.StatusMovedPermanently))
	r.Handle("/api/v1/prefetch", a.route("prefetch", auth.RightPrefetch, a.prefetch, http.MethodPost))
	r.Handle("/api/v1/jobs", a.route("jobs", "", a.listJobs, http.MethodGet))
	r.Handle("/api/v1/jobs/{id}", a.route("job", "", a.job, http.MethodGet, http.MethodDelete))
	r.Handle("/api/v1/jobs/{id}/images", a.route("job-images", "", a.jobImages, http.MethodGet))
	r.Handle("/api/v1/jobs/{id}/retry", a.route("job-retry", "", a.retryJob, http.MethodPost))
	r.Handle("/api/v1/pins", a.route("pins", auth.RightPins, a.pins, http.MethodGet, http.MethodDelete))
	r.Handle("/api/v1/replication", a.route("replication", auth.RightJobs, a.replication, http.MethodGet))
	r.Handle("/api/v1/replication/{rule}/run", a.route("replication-run", auth.RightPrefetch, a.replicate, http.MethodPost))
	r.Handle("/api/v1/replication/{rule}/pending", a.route("replication-pending", "", a.pending, http.MethodPost)) // peers only
	return r, nil
}

// upstreams reports each upstream's health: circuit state, failures, rate
// limits. Read-only and free of secrets.
func (a *api) upstreams(w http.ResponseWriter, r *http.Request) error {
	list := make([]any, 0, len(a.status))
	for _, s := range a.status {
		list = append(list, s())
	}
	return httpx.WriteJSON(w, r, UpstreamList{Upstreams: list})
}

// targets reports each push target's health: its circuit, last error and
// rate-limit headroom, as this replica sees them.
func (a *api) targets(w http.ResponseWriter, r *http.Request) error {
	list := make([]any, 0, len(a.targetStatus))
	for _, s := range a.targetStatus {
		list = append(list, s())
	}
	return httpx.WriteJSON(w, r, TargetList{Targets: list})
}
