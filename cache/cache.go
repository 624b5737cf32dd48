// Package cache is Wharf's read-through logic: it answers from the store when
// it can, asks the upstream when it must, fills each blob once however many
// clients want it, and decides how fresh a tag has to be.
package cache

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/semaphore"
	"golang.org/x/sync/singleflight"

	"github.com/wharf-registry/wharf/route"
	"github.com/wharf-registry/wharf/storage"
)

// Source is what the cache needs from a remote registry; upstream.Client is
// one. Errors may implement StatusCode() int (the upstream HTTP status, 0 for
// a transport failure) and RetryAfter() time.Duration.
type Source interface {
	// Manifest fetches ref (tag or digest). With head set rc is nil.
	Manifest(ctx context.Context, repo, ref string, head bool) (desc ocispec.Descriptor, rc io.ReadCloser, err error)
	// Blob opens dgst from offset on; size is what rc yields, -1 if unknown.
	Blob(ctx context.Context, repo string, dgst digest.Digest, offset int64) (rc io.ReadCloser, size int64, err error)
	// StatBlob asks whether repo holds dgst without downloading it.
	StatBlob(ctx context.Context, repo string, dgst digest.Digest) (ocispec.Descriptor, error)
	// Tags lists every tag of repo.
	Tags(ctx context.Context, repo string) ([]string, error)
	// Referrers returns the referrers list of dgst and its media type.
	Referrers(ctx context.Context, repo string, dgst digest.Digest, artifactType string) (mediaType string, body []byte, err error)
}

// Upstream is one configured remote registry as the cache sees it: a key and
// how long its tags are trusted.
type Upstream struct {
	Name   string
	Source Source
	TagTTL time.Duration
	// RevalidateTimeout bounds the HEAD that rechecks a stale tag; past it
	// the cached answer is served. Default 2s.
	RevalidateTimeout time.Duration
	// NegativeTTL is how long "does not exist upstream" is remembered for
	// a manifest reference; 0 remembers nothing.
	NegativeTTL time.Duration
	// MaxFills bounds the blob fills from this upstream at once (0: no
	// bound); keep it under the upstream's request limit so that manifest
	// requests always find a slot.
	MaxFills int
	// WaitTimeout bounds how long a miss waits for a fill slot; past it,
	// ErrUnavailable with a Retry-After (default 5s).
	WaitTimeout time.Duration
	// FillGrace is how long a fill nobody reads any more (no client, no
	// job) goes on before it is cancelled (default 30s).
	FillGrace time.Duration
	// EagerFill starts the fills of an image manifest's config and layers
	// as soon as the manifest is fetched, before the client asks for them:
	// over a WAN their round trips overlap the client's. Only free fill
	// slots are used, and an eager fill completes whether or not a client
	// comes for it.
	EagerFill bool
	// Private says Wharf reaches this upstream with credentials (or a
	// client certificate) and nobody declared its content public: what
	// only it served is not opened under another upstream by that
	// upstream's word (see membership.go).
	Private bool
}

// Config holds the cache's settings.
type Config struct {
	Upstreams []Upstream
	// MaxSize bounds the store in bytes (0: unbounded). Past HighWater of
	// it (default 0.9) blobs are evicted, least recently used first, down
	// to LowWater (default 0.8).
	MaxSize             int64
	HighWater, LowWater float64
	// PinPatterns are patterns (route.Match) on "<upstream>/<repo>" or
	// "<upstream>/<repo>:<tag>" whose content is never evicted.
	PinPatterns []string
	// Peers is the fleet (package cluster) or nil: a blob the store and
	// its remote tier lack is fetched through the digest's owner, so the
	// fleet asks upstream once per blob.
	Peers Peers
	// Redirect answers a blob the store does not hold but its remote tier
	// does with a short-lived URL of it there (see RedirectURL), instead of
	// filling it through this replica.
	Redirect    bool
	FillTimeout time.Duration // longest a single blob fill may take; default 1h
	// StallTimeout is the longest a fill waits for the next byte from the
	// bucket or a peer before it goes on from upstream (default 30s), as
	// upstream's own idle_timeout bounds its silences.
	StallTimeout time.Duration
	Registerer   prometheus.Registerer // nil: metrics are not registered
	Logger       *slog.Logger          // for failures no request sees; nil: slog.Default()
	Now          func() time.Time      // the clock for tag and negative TTLs; nil: time.Now
}

// Cache answers registry reads for every configured upstream.
type Cache struct {
	store        *storage.Store
	upstreams    map[string]Upstream
	fillTimeout  time.Duration
	stallTimeout time.Duration
	metrics      *metrics
	log          *slog.Logger
	now          func() time.Time

	maxSize             int64
	highWater, lowWater float64
	usage               usage // the last hour's hits and misses, and who was served what
	pinPatterns         []string
	redirect            bool
	private             bool // some upstream is Private
	peers               Peers
	evicting            atomic.Bool
	pinsDirty           atomic.Bool // a job pinned or unpinned: publish the pins now

	mu          sync.Mutex
	fills       map[digest.Digest]*fill
	fillSlots   map[string]*semaphore.Weighted // per upstream with MaxFills: one per fill
	reading     map[digest.Digest]int          // stored blobs being served
	running     sync.WaitGroup                 // fill goroutines
	stop        chan struct{}                  // closed by Close: the sweeper ends
	stopOnce    sync.Once
	flights     singleflight.Group
	missing     negative
	retries     retries // of stale tags upstream could not revalidate
	lists       lists   // referrers lists the index does not keep
	onTag       atomic.Pointer[func(TagEvent)]
	eagerDone   map[digest.Digest]bool // stored by an eager fill, not read yet (bounded)
	eagerStored atomic.Int64           // len(eagerDone), read without the lock
	sizes       map[string]int64       // by blobKey: the sizes manifests gave, until stored (bounded)
}

// New returns a cache over store. It starts one goroutine, the sweeper of
// abandoned fills, which Close stops.
func New(store *storage.Store, cfg Config) (*Cache, error) {
	c := &Cache{
		store:        store,
		upstreams:    map[string]Upstream{},
		fillTimeout:  cfg.FillTimeout,
		stallTimeout: cmp.Or(cfg.StallTimeout, 30*time.Second),
		now:          cfg.Now,
		log:          cmp.Or(cfg.Logger, slog.Default()),
		fills:        map[digest.Digest]*fill{},
		fillSlots:    map[string]*semaphore.Weighted{},
		stop:         make(chan struct{}),
		reading:      map[digest.Digest]int{},
		eagerDone:    map[digest.Digest]bool{},
		sizes:        map[string]int64{},
		maxSize:      cfg.MaxSize,
		highWater:    cmp.Or(cfg.HighWater, 0.9),
		lowWater:     cmp.Or(cfg.LowWater, 0.8),
		pinPatterns:  cfg.PinPatterns,
		redirect:     cfg.Redirect,
		peers:        cfg.Peers,
	}
	if c.lowWater > c.highWater || c.highWater > 1 || c.lowWater <= 0 {
		return nil, fmt.Errorf("cache: watermarks must satisfy 0 < low (%v) <= high (%v) <= 1", c.lowWater, c.highWater)
	}
	for _, p := range c.pinPatterns {
		if err := route.Check(p); err != nil {
			return nil, fmt.Errorf("cache: pin: %w", err)
		}
	}
	if c.now == nil {
		c.now = time.Now
	}
	if c.fillTimeout <= 0 {
		c.fillTimeout = time.Hour
	}
	for _, u := range cfg.Upstreams {
		if u.Name == "" || u.Source == nil {
			return nil, errors.New("cache: upstream needs a name and a source")
		}
		if u.RevalidateTimeout <= 0 {
			u.RevalidateTimeout = 2 * time.Second
		}
		u.WaitTimeout = cmp.Or(max(u.WaitTimeout, 0), 5*time.Second)
		u.FillGrace = cmp.Or(max(u.FillGrace, 0), 30*time.Second)
		if u.MaxFills > 0 {
			c.fillSlots[u.Name] = semaphore.NewWeighted(int64(u.MaxFills))
		}
		if _, dup := c.upstreams[u.Name]; dup {
			return nil, fmt.Errorf("cache: upstream %q configured twice", u.Name)
		}
		c.upstreams[u.Name] = u
		c.private = c.private || u.Private
	}
	m, err := newMetrics(cfg.Registerer, store, c.missing.len)
	if err != nil {
		return nil, err
	}
	c.metrics = m
	c.running.Add(1)
	go c.sweep()
	return c, nil
}

// HasUpstream reports whether name is a configured upstream.
func (c *Cache) HasUpstream(name string) bool { _, ok := c.upstreams[name]; return ok }

// UpstreamNames lists the upstreams configured, sorted: what an error
// about a name that matches none shows.
func (c *Cache) UpstreamNames() []string { return slices.Sorted(maps.Keys(c.upstreams)) }

func (c *Cache) upstream(name string) (Upstream, error) {
	u, ok := c.upstreams[name]
	if !ok {
		return Upstream{}, fmt.Errorf("%w %q", ErrUnknown, name)
	}
	return u, nil
}

// unstored reports a failure to store something an answer does not depend on
// (a verified manifest, an index record): the client is answered anyway,
// and the failure is logged and counted (what: manifest or index).
func (c *Cache) unstored(what string, err error, attrs ...any) {
	if err == nil {
		return
	}
	c.metrics.storeFailed.WithLabelValues(what).Inc()
	c.log.Warn("not stored; answered anyway", append(attrs, "what", what, "error", err)...)
}

// Repositories lists what the store holds, for the catalog.
func (c *Cache) Repositories() ([]storage.Repository, error) { return c.store.Repositories() }

// FleetRepositories is Repositories of every live replica of a fleet
// (each lists those it holds), ordered and once each: the catalog and a
// rule's runs see the same repositories whichever replica answers. A
// replica that does not answer within its bound is left out, and named.
func (c *Cache) FleetRepositories(ctx context.Context) (repos []storage.Repository, missing []string, err error) {
	if repos, err = c.store.Repositories(); err != nil || c.peers == nil || forPeer(ctx) {
		return repos, nil, err
	}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, p := range c.peers.Others() {
		wg.Go(func() {
			theirs, err := c.peerRepositories(ctx, p)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				c.log.Warn("a replica's repositories are missing from a list", "peer", p, "error", err)
				missing = append(missing, p)
				return
			}
			repos = append(repos, theirs...)
		})
	}
	wg.Wait()
	slices.SortFunc(repos, func(a, b storage.Repository) int {
		return cmp.Or(strings.Compare(a.Upstream, b.Upstream), strings.Compare(a.Name, b.Name))
	})
	slices.Sort(missing)
	return slices.Compact(repos), missing, nil
}

// peerRepositoriesTimeout bounds a replica's answer to FleetRepositories.
const peerRepositoriesTimeout = 10 * time.Second

func (c *Cache) peerRepositories(ctx context.Context, peer string) ([]storage.Repository, error) {
	ctx, cancel := context.WithTimeout(ctx, peerRepositoriesTimeout)
	defer cancel()
	resp, err := c.peers.Repositories(ctx, peer)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s answered %d", peer, resp.StatusCode)
	}
	var list []storage.Repository
	if err := json.NewDecoder(io.LimitReader(resp.Body, 256<<20)).Decode(&list); err != nil {
		return nil, err
	}
	for _, r := range list {
		if !c.HasUpstream(r.Upstream) {
			return nil, fmt.Errorf("%s listed upstream %q, which is not configured here", peer, r.Upstream)
		}
	}
	return list, nil
}

// TagEvent says a tag was first cached, was seen to point somewhere new,
// or was looked at again: what replication's on_pull rules act on.
type TagEvent struct {
	Upstream, Repo, Tag string
	Digest              digest.Digest
	// Same: the tag was looked at again (revalidated) and had not moved;
	// what refers to it may have changed (a signature added).
	Same bool
}

// Subscribe has fn called, synchronously and so briefly, for every
// TagEvent from now on (one subscriber; a later call replaces it).
func (c *Cache) Subscribe(fn func(TagEvent)) { c.onTag.Store(&fn) }

// putTag records a tag and tells the subscriber when it is new or moved.
func (c *Cache) putTag(up, repo, tag string, ti storage.TagInfo) {
	fn := c.onTag.Load()
	if fn == nil { // nobody listens: no need to read what the tag was
		c.unstored("index", c.store.PutTag(up, repo, tag, ti), "repository", repo, "tag", tag)
		return
	}
	prev, err := c.store.Tag(up, repo, tag)
	c.unstored("index", c.store.PutTag(up, repo, tag, ti), "repository", repo, "tag", tag)
	(*fn)(TagEvent{Upstream: up, Repo: repo, Tag: tag, Digest: ti.Digest, Same: err == nil && prev.Digest == ti.Digest})
}
