package cache

import (
	"context"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Eager fills: when an image manifest is fetched, its config and layers
// are started at once, so that the client's blob requests, a round trip
// later each, find them in flight or done. An index starts nothing: its
// children are fetched when a client asks for one, so no platform nobody
// wants is fetched. Eager fills use free fill slots only, are never
// abandoned for want of a reader, and fail without a trace a client would
// meet: its own request starts a normal fill.

// maxEagerDone bounds the digests remembered as eagerly stored and not yet
// read, for the "used" count.
const maxEagerDone = 10_000

// eager starts the fills of refs' blobs that are neither stored nor filling.
func (c *Cache) eager(u Upstream, repo string, refs ManifestRefs) {
	if !u.EagerFill || len(refs.Manifests) > 0 {
		return
	}
	for _, d := range refs.blobs() {
		if len(d.URLs) > 0 {
			continue // foreign layers are fetched from elsewhere by clients
		}
		if _, err := c.store.Blob(d.Digest); err == nil {
			continue
		}
		f, started, err := c.beginFill(context.Background(), u, repo, d.Digest, true)
		if err != nil || f == nil {
			return // no free slot (or the store is failing): the clients' own requests will fill
		}
		if started {
			c.metrics.eager.Inc()
		}
	}
}

// eagerUsed counts a read of a blob an eager fill brought: joined in
// flight, or read from the store after it.
func (c *Cache) eagerUsed(f *fill, d ocispec.Descriptor) {
	if f != nil {
		if f.eager && f.used.CompareAndSwap(false, true) {
			c.metrics.eagerUsed.Inc()
		}
		return
	}
	if c.eagerStored.Load() == 0 {
		return // the common case, without the lock
	}
	c.mu.Lock()
	hit := c.eagerDone[d.Digest]
	delete(c.eagerDone, d.Digest)
	c.eagerStored.Store(int64(len(c.eagerDone)))
	c.mu.Unlock()
	if hit {
		c.metrics.eagerUsed.Inc()
	}
}
