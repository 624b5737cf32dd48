package cache

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/wharf-registry/wharf/oci"
	"github.com/wharf-registry/wharf/route"
	"github.com/wharf-registry/wharf/storage"
)

// Bounded disk: once the store passes HighWater × MaxSize bytes, least
// recently used blobs are evicted down to LowWater × MaxSize, never one
// that a client is reading or that a pinned tag needs. A later pull of an
// evicted blob fetches it again.

// maybeEvict starts an eviction pass in the background if the store is over
// its high watermark, or its filesystem under storage.min_free, and none is
// running.
func (c *Cache) maybeEvict() {
	if c.maxSize <= 0 {
		return
	}
	_, short := c.store.FreeSpace()
	if size, _ := c.store.Size(); float64(size) <= c.highWater*float64(c.maxSize) && short == 0 {
		return
	}
	if !c.evicting.CompareAndSwap(false, true) {
		return
	}
	c.running.Add(1)
	go func() {
		defer c.running.Done()
		defer c.evicting.Store(false)
		c.evict()
	}()
}

func (c *Cache) evict() {
	pinned, err := c.pinnedDigests()
	if err != nil {
		// Without the pins anything could go: evict nothing this time.
		c.metrics.failed.WithLabelValues("evict").Inc()
		c.log.Error("eviction skipped: the pinned content could not be listed", "error", err)
		return
	}
	keep := func(d digest.Digest) bool {
		if pinned[d] {
			return true
		}
		c.mu.Lock()
		defer c.mu.Unlock()
		return c.reading[d] > 0
	}
	target, reason := int64(c.lowWater*float64(c.maxSize)), "size"
	if _, short := c.store.FreeSpace(); short > 0 {
		// The filesystem is short of min_free (something else filled it):
		// make that room, and a tenth of it besides, out of the store.
		size, _ := c.store.Size()
		if t := size - short - short/10; t < target || float64(size) <= c.highWater*float64(c.maxSize) {
			target, reason = max(0, t), "space"
		}
	}
	gone, oldest, err := c.store.Evict(target, keep)
	for _, e := range gone {
		c.metrics.evicted.WithLabelValues(reason).Inc()
		c.metrics.evictedBytes.Add(float64(e.Size))
	}
	if !oldest.IsZero() {
		c.metrics.oldest.Set(float64(oldest.Unix()))
	}
	if err != nil {
		c.metrics.failed.WithLabelValues("evict").Inc()
		c.log.Error("eviction stopped", "error", err)
	}
}

// pinned reports whether a tag matches a pin: a pattern (route.Match) on
// "<upstream>/<repo>" or "<upstream>/<repo>:<tag>".
func (c *Cache) pinned(up, repo, tag string) bool {
	for _, p := range c.pinPatterns {
		if route.Match(p, up+"/"+repo) || route.Match(p, up+"/"+repo+":"+tag) {
			return true
		}
	}
	return false
}

// pinnedDigests is everything pinned tags need: their manifests and, for
// indexes, every child, with configs and layers. Pins come from the config
// (patterns) and from prefetch jobs (references, kept in the index). A pin
// that cannot be read is an error, never "nothing pinned".
func (c *Cache) pinnedDigests() (map[digest.Digest]bool, error) {
	set := map[digest.Digest]bool{}
	var walk func(d digest.Digest, depth int) error
	walk = func(d digest.Digest, depth int) error {
		if set[d] || depth > MaxIndexDepth {
			return nil
		}
		set[d] = true
		body, bi, err := c.store.ReadSmall(d, oci.MaxManifestSize)
		if errors.Is(err, storage.ErrNotFound) {
			return nil // not stored: nothing below it to keep
		}
		if err != nil {
			return fmt.Errorf("pinned manifest %s: %w", d, err)
		}
		m := ParseManifest(body, bi.MediaType)
		for _, b := range m.blobs() {
			set[b.Digest] = true
		}
		for _, child := range m.Manifests {
			if err := walk(child.Digest, depth+1); err != nil {
				return err
			}
		}
		return nil
	}
	if len(c.pinPatterns) > 0 {
		tags, err := c.store.AllTags()
		if err != nil {
			return nil, err
		}
		for _, t := range tags {
			if c.pinned(t.Upstream, t.Repo, t.Tag) {
				if err := walk(t.Digest, 0); err != nil {
					return nil, err
				}
			}
		}
	}
	pins, err := c.store.Pins()
	if err != nil {
		return nil, err
	}
	for _, p := range pins {
		if err := walk(p.Digest, 0); err != nil {
			return nil, err
		}
	}
	return set, nil
}

// CachedTags lists the tags the store holds whose "<upstream>/<repo>" or
// "<upstream>/<repo>:<tag>" matches pattern (route.Match), sorted: what
// "replicate what we use" copies.
func (c *Cache) CachedTags(pattern string) ([]storage.TagRef, error) {
	all, err := c.store.AllTags()
	if err != nil {
		return nil, err
	}
	var out []storage.TagRef
	for _, t := range all {
		name := t.Upstream + "/" + t.Repo
		if route.Match(pattern, name) || route.Match(pattern, name+":"+t.Tag) {
			out = append(out, t)
		}
	}
	slices.SortFunc(out, func(a, b storage.TagRef) int {
		return cmp.Or(strings.Compare(a.Upstream, b.Upstream), strings.Compare(a.Repo, b.Repo), strings.Compare(a.Tag, b.Tag))
	})
	return out, nil
}

// pinsEvery is how often a replica with a remote tier tells it what it
// pins, so that gc, which sees no replica's index, spares it.
const pinsEvery = 5 * time.Minute

// PinsChanged tells the cache that a job pinned or unpinned something:
// the remote tier hears of it within a second, not at the next pinsEvery.
func (c *Cache) PinsChanged() { c.pinsDirty.Store(true) }

// publishPins writes this replica's pinned digests to the remote tier:
// those of the config's patterns and those of every job's pins, so that gc
// spares them.
func (c *Cache) publishPins() {
	if c.store.Bucket() == nil {
		return
	}
	pinned, err := c.pinnedDigests()
	if err != nil {
		c.log.Warn("pinned content not told to the remote tier", "error", err)
		return
	}
	ds := make([]digest.Digest, 0, len(pinned))
	for d := range pinned {
		ds = append(ds, d)
	}
	slices.Sort(ds)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := c.store.PublishPins(ctx, ds); err != nil {
		c.log.Warn("pinned content not told to the remote tier", "error", err)
	}
}
