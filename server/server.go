// Package server builds one Wharf out of its parts: the cache over a
// store, the jobs and replication rules, who may do what, and the two HTTP
// surfaces (the registry's, package proxy, and the API's, package api) on
// one handler. `wharf serve` and the whole-system tests build it the same
// way, so the tests exercise the real wiring.
package server

import (
	"context"
	"log/slog"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/wharf-registry/wharf/api"
	"github.com/wharf-registry/wharf/audit"
	"github.com/wharf-registry/wharf/auth"
	"github.com/wharf-registry/wharf/cache"
	"github.com/wharf-registry/wharf/cluster"
	"github.com/wharf-registry/wharf/httpx"
	"github.com/wharf-registry/wharf/proxy"
	"github.com/wharf-registry/wharf/replicate"
	"github.com/wharf-registry/wharf/route"
	"github.com/wharf-registry/wharf/storage"
)

// Config is every part's configuration; Registerer, Logger and the clock
// are filled in from the fields here.
type Config struct {
	Cache     cache.Config
	Upstreams []route.Upstream // how requests and references name the upstreams
	Status    []func() any     // each upstream's health, for the API
	// TargetStatus is each push target's health, for the API.
	TargetStatus []func() any
	Jobs         replicate.Config
	Rules        []replicate.Rule
	RuleBatch    time.Duration // how long on_pull waits for more tags; 0: replicate's default
	// Auth decides who may pull what and use the API. nil: anyone may
	// pull anything, and the API takes APIToken or, without one, answers
	// loopback clients only.
	Auth     *auth.Config
	APIToken string // only read when Auth is nil
	// Fleet is this replica's cluster (the cache's peers, the peer routes,
	// the API's reach to the other replicas); nil: no fleet.
	Fleet *cluster.Cluster
	// Audit records every pull and every image a job pushes; nil: none.
	Audit    *audit.Log
	Registry *prometheus.Registry // metrics are registered here and served on /metrics
	Logger   *slog.Logger         // nil: slog.Default()
	Version  string               // shown on the status page
}

// Server is one Wharf over a store.
type Server struct {
	Handler http.Handler
	Cache   *cache.Cache
	Jobs    *replicate.Jobs
	Rules   *replicate.Rules
	Auth    *auth.Auth
	fleet   *cluster.Cluster
	ready   atomic.Bool // started and not stopping
}

// New builds a Wharf over store: nothing runs until Start but the cache's
// sweeper, and Close stops it all (the store stays the caller's).
func New(store *storage.Store, cfg Config) (*Server, error) {
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	var reg prometheus.Registerer
	if cfg.Registry != nil {
		reg = cfg.Registry
	}
	cfg.Cache.Registerer, cfg.Cache.Logger = reg, log
	if cfg.Fleet != nil {
		cfg.Cache.Peers = cfg.Fleet
		cfg.Fleet.SetReady(false) // until Start
	}
	c, err := cache.New(store, cfg.Cache)
	if err != nil {
		return nil, err
	}
	s := &Server{Cache: c, fleet: cfg.Fleet}
	fail := func(err error) (*Server, error) {
		s.Close(context.Background())
		return nil, err
	}
	cfg.Jobs.Registerer, cfg.Jobs.Logger, cfg.Jobs.Now, cfg.Jobs.Audit = reg, log, cfg.Cache.Now, cfg.Audit
	if s.Jobs, err = replicate.New(c, store, cfg.Jobs); err != nil {
		return fail(err)
	}
	if cfg.Fleet != nil {
		s.Jobs.SetFleet(cfg.Fleet, 0) // with a bucket, a job outlives its replica
	}
	if s.Rules, err = replicate.NewRules(s.Jobs, cfg.Rules, cfg.RuleBatch); err != nil {
		return fail(err)
	}
	ac := auth.Config{Anonymous: []string{"*/*"}, Loopback: true, LoopbackAPI: cfg.APIToken == "", APIToken: cfg.APIToken}
	if cfg.Auth != nil {
		ac = *cfg.Auth
	}
	ac.Logger, ac.Registerer = log, reg
	if s.Auth, err = auth.New(ac); err != nil {
		return fail(err)
	}
	router, err := route.NewRouter(cfg.Upstreams)
	if err != nil {
		return fail(err)
	}
	hm, err := httpx.NewMetrics(reg)
	if err != nil {
		return fail(err)
	}
	acfg := api.Config{Cache: c, Jobs: s.Jobs, Rules: s.Rules, Auth: s.Auth, Router: router,
		Status: cfg.Status, TargetStatus: cfg.TargetStatus, Logger: log, Metrics: hm, Version: cfg.Version}
	if cfg.Fleet != nil {
		acfg.Fleet = cfg.Fleet
	}
	apiHandler, err := api.New(acfg)
	if err != nil {
		return fail(err)
	}
	if s.Handler, err = proxy.New(c, proxy.Config{Router: router, Auth: s.Auth, API: apiHandler, Logger: log,
		Registry: cfg.Registry, Metrics: hm, Fleet: cfg.Fleet, Ready: s.ready.Load, Audit: cfg.Audit}); err != nil {
		return fail(err)
	}
	return s, nil
}

// Start resumes the jobs an earlier run left, before the first request
// (so that nobody sees a resumed job as anything but running), and starts
// the rules' schedules.
func (s *Server) Start() error {
	err := s.Jobs.Resume()
	s.Rules.Start()
	s.setReady(true)
	return err
}

// setReady tells the probes, this replica's and its peers', whether it
// takes work.
func (s *Server) setReady(ready bool) {
	s.ready.Store(ready)
	if s.fleet != nil {
		s.fleet.SetReady(ready)
	}
}

// Drain says this replica is stopping: /healthz answers 503 and its
// peers take it off every owner list, while the requests in flight finish.
func (s *Server) Drain() { s.setReady(false) }

// Close stops the rules (no new runs) and the jobs (where they are, to be
// resumed at the next start), then lets the fills in progress finish until
// ctx ends. The store may be closed after it.
func (s *Server) Close(ctx context.Context) {
	s.setReady(false)
	if s.Rules != nil {
		s.Rules.Close()
	}
	if s.Jobs != nil {
		s.Jobs.Close()
	}
	s.Cache.Close(ctx)
}
