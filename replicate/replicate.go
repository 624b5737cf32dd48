// Package replicate copies images: prefetch jobs that warm the cache with
// a list of images and push them, blob for blob, to another registry. It
// reads through the cache's public methods, keeps its jobs in the store's
// index, and owns its lock, metrics and wire types (Job, Image), which the
// API answers with and the CLI decodes. It never fills or evicts.
package replicate

import (
	"cmp"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/wharf-registry/wharf/audit"
	"github.com/wharf-registry/wharf/cache"
	"github.com/wharf-registry/wharf/storage"
)

// Config holds the jobs' settings.
type Config struct {
	// Targets are the registries jobs may push to, by name.
	Targets map[string]Target `yaml:"-"`
	// JobImages is how many images of one job are copied at once (default
	// 4); each copies up to 4 blobs at once. At most 2 jobs run at a time.
	JobImages int `yaml:"concurrency"`
	// JobTransfers bounds the blobs all jobs copy at once (default 8), so
	// that clients keep most of each upstream's request slots.
	JobTransfers int `yaml:"transfers"`
	// KeepJobs is how many finished jobs the index keeps (default 200);
	// older ones are forgotten as new ones are submitted.
	KeepJobs int `yaml:"-"`
	// RetryBackoff is the first wait before a job retries a transient
	// failure (default 1s), doubled for each of up to 3 retries (pushes:
	// doubled up to 30 s, for the target's RetryFor).
	RetryBackoff time.Duration `yaml:"-"`
	// RetryFor is, per target, how long its pushes ride out its being
	// unavailable before an image fails (default 10 minutes).
	RetryFor map[string]time.Duration `yaml:"-"`
	// Audit records every image a job pushes; nil: none.
	Audit      *audit.Log            `yaml:"-"`
	Registerer prometheus.Registerer `yaml:"-"` // nil: metrics are not registered
	Logger     *slog.Logger          `yaml:"-"` // nil: slog.Default()
	Now        func() time.Time      `yaml:"-"` // nil: time.Now
}

// Check validates the settings the configuration file's prefetch: block
// gives.
func (c Config) Check() error {
	if c.JobImages < 0 || c.JobTransfers < 0 {
		return errors.New("prefetch.concurrency and prefetch.transfers must not be negative")
	}
	return nil
}

// Jobs runs prefetch jobs over a cache and its store.
type Jobs struct {
	cache   *cache.Cache
	store   *storage.Store
	metrics *metrics
	log     *slog.Logger
	audit   *audit.Log
	now     func() time.Time

	targets      map[string]Target
	retryFor     map[string]time.Duration
	jobSlots     chan struct{} // jobs running at once
	jobImages    int
	transfers    chan struct{} // blob copies of all jobs at once
	keepJobs     int
	retryBackoff time.Duration

	reg prometheus.Registerer // for the rules' metrics; nil: none

	fleet                Fleet           // nil: jobs stay with this replica (see adopt.go)
	stopAdopt, adoptDone chan struct{}   // with a fleet
	rejected             map[string]bool // specs adoptLoop refused, said once; its own

	tagLocks [64]sync.Mutex // one root manifest PUT per target tag at once (see pushRoot)

	mu          sync.Mutex
	jobs        map[string]*run // queued or running
	closing     atomic.Bool     // Close has begun: jobs stop, to be resumed
	jobsRunning sync.WaitGroup
}

// New returns the jobs of c and store. Nothing runs until Submit or Resume.
func New(c *cache.Cache, store *storage.Store, cfg Config) (*Jobs, error) {
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, err
	}
	now := cfg.Now
	if now == nil {
		now = time.Now
	}
	return &Jobs{
		cache: c, store: store, metrics: m, now: now, reg: cfg.Registerer,
		log:          cmp.Or(cfg.Logger, slog.Default()),
		audit:        cfg.Audit,
		targets:      cfg.Targets,
		retryFor:     cfg.RetryFor,
		jobs:         map[string]*run{},
		jobSlots:     make(chan struct{}, 2),
		jobImages:    cmp.Or(cfg.JobImages, 4),
		transfers:    make(chan struct{}, cmp.Or(cfg.JobTransfers, 8)),
		keepJobs:     cmp.Or(cfg.KeepJobs, 200),
		retryBackoff: cmp.Or(cfg.RetryBackoff, time.Second),
	}, nil
}

// Close interrupts every job, leaving each saved as it stood so that
// Resume picks it up at the next start, and waits for them to stop.
func (c *Jobs) Close() {
	c.closing.Store(true)
	if c.stopAdopt != nil {
		close(c.stopAdopt)
		<-c.adoptDone
	}
	c.mu.Lock()
	for _, r := range c.jobs {
		r.cancel()
	}
	c.mu.Unlock()
	c.jobsRunning.Wait()
}

type metrics struct {
	jobs          prometheus.Gauge
	jobSaveFailed prometheus.Counter
	images        *prometheus.CounterVec // state
	pushed        *prometheus.CounterVec // target, outcome
	pushedBytes   *prometheus.CounterVec // target
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		jobs: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "wharf_prefetch_jobs_running",
			Help: "Prefetch jobs running now.",
		}),
		jobSaveFailed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "wharf_prefetch_job_save_failures_total",
			Help: "Writes of prefetch job state the index refused; a running job whose state cannot be saved stops and fails.",
		}),
		images: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wharf_prefetch_images_total",
			Help: "Images prefetch jobs finished, by state (done, failed, cancelled).",
		}, []string{"state"}),
		pushed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wharf_push_blobs_total",
			Help: "Blobs prefetch jobs put on a push target, by target and outcome (pushed, mounted, skipped: already there).",
		}, []string{"target", "outcome"}),
		pushedBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wharf_push_bytes_total",
			Help: "Blob bytes uploaded to each push target.",
		}, []string{"target"}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.jobs, m.jobSaveFailed, m.images, m.pushed, m.pushedBytes} {
			if err := reg.Register(c); err != nil {
				return nil, err
			}
		}
	}
	return m, nil
}
