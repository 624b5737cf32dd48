package cache

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/opencontainers/go-digest"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/wharf-registry/wharf/storage"
)

// Where a fill reads from: the bucket (the fleet's shared tier) when it
// holds the blob, else upstream, through the digest's owner in a fleet.

// blobOpener opens the bytes of a fill's blob from offset on; size is what
// the reader yields, -1 if unknown, and from is where they come from
// (fromUpstream, fromBucket, fromPeer).
type blobOpener func(ctx context.Context, offset int64) (rc io.ReadCloser, size int64, from string, err error)

// Where a fill's bytes come from, as wharf_filled_bytes_total's source.
const (
	fromUpstream = "upstream"
	fromBucket   = "bucket"
	fromPeer     = "peer"
)

// blobSource is where a fill of dgst for repo reads from: the store's
// remote tier when it holds the blob (the fleet fetched it once already),
// else upstream. The bucket proves nothing about repo, so repo must be
// known to hold dgst first (a manifest of it listed the blob, or upstream
// confirms with a HEAD), and u must vouch for the bucket's sources (see
// membership.go): a blob there that only another private upstream served
// is filled from u, whose bytes then prove it. bucket is what the bucket
// records as the blob's sources when it is read from. A bucket that cannot
// be asked is passed by: the fill goes upstream, as it would without one;
// so is one that found the blob and then cannot give it (gc deleted it
// meanwhile, or the bucket broke): the fill goes on from upstream from
// the byte it had reached. The opener is called by one goroutine at a time.
func (c *Cache) blobSource(ctx context.Context, u Upstream, repo string, dgst digest.Digest) (open blobOpener, bucket []string, err error) {
	upstream := func(ctx context.Context, offset int64) (io.ReadCloser, int64, string, error) {
		rc, size, err := u.Source.Blob(ctx, repo, dgst, offset)
		return rc, size, fromUpstream, err
	}
	if c.peers != nil {
		upstream = c.throughOwner(ctx, u, repo, dgst, upstream)
	}
	r := c.store.Bucket()
	if r == nil {
		return upstream, nil, nil
	}
	if r.Down() {
		c.metrics.remote.WithLabelValues("unavailable").Inc()
		return upstream, nil, nil
	}
	size, sources, err := c.bucketLookup(ctx, r, dgst)
	if errors.Is(err, storage.ErrNotFound) {
		return upstream, nil, nil
	}
	if err != nil {
		c.metrics.remote.WithLabelValues("unavailable").Inc()
		c.log.Warn("remote tier unavailable; filling from upstream", "digest", dgst, "error", err)
		return upstream, nil, nil
	}
	if !c.vouched(u, sources) {
		return upstream, nil, nil
	}
	if err := c.holds(ctx, u, repo, dgst, false); err != nil {
		return nil, nil, err
	}
	c.metrics.remote.WithLabelValues("hit").Inc()
	inBucket := true // until a read from it fails
	return func(ctx context.Context, offset int64) (io.ReadCloser, int64, string, error) {
		if inBucket {
			rc, err := c.bucketOpen(ctx, r, dgst, offset)
			if err == nil {
				return rc, size - offset, fromBucket, nil
			}
			if ctx.Err() != nil {
				return nil, 0, fromBucket, err
			}
			inBucket = false
			c.metrics.remote.WithLabelValues("lost").Inc()
			c.log.Warn("blob found in the remote tier but not readable from it; filling from upstream", "digest", dgst, "offset", offset, "error", err)
		}
		return upstream(ctx, offset)
	}, sources, nil
}

// bucketLookup asks the bucket for blob dgst's size and sources, within
// bucketLookupTimeout for the two; a bucket that does not answer in time
// is down (see storage.Bucket.Down) until it answers again.
func (c *Cache) bucketLookup(ctx context.Context, r *storage.Bucket, dgst digest.Digest) (int64, []string, error) {
	ctx, span := tracer.Start(ctx, "bucket stat", trace.WithAttributes(attribute.String("wharf.digest", dgst.String())))
	defer span.End()
	lctx, cancel := context.WithTimeout(ctx, bucketLookupTimeout)
	defer cancel()
	size, err := r.Stat(lctx, dgst)
	var sources []string
	if err == nil {
		sources, err = r.Sources(lctx, dgst)
	}
	if err != nil && lctx.Err() != nil && ctx.Err() == nil {
		err = fmt.Errorf("the bucket gave no answer within %v: %w", bucketLookupTimeout, err)
		r.Failed(err)
	}
	return size, sources, err
}

// dropFromBucket deletes blob dgst from the remote tier, whose bytes for it
// did not verify: keyed by their digest, they can never be right, and
// left there they would fail every replica's fill of the blob. The next
// fill asks upstream.
func (c *Cache) dropFromBucket(dgst digest.Digest, why error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	err := c.store.Bucket().Delete(ctx, dgst)
	c.log.Error("a blob in the remote tier does not match its digest; deleted", "digest", dgst, "why", why, "error", err)
}

// bucketLookupTimeout bounds asking the bucket whether it holds a blob: a
// bucket that does not answer (the SDK retries) must not hold up every
// miss, which upstream can answer instead.
const bucketLookupTimeout = 2 * time.Second

// bucketOpen is r.Open with the lookup's bound on the wait for the answer,
// not on reading the body that follows.
func (c *Cache) bucketOpen(parent context.Context, r *storage.Bucket, dgst digest.Digest, offset int64) (io.ReadCloser, error) {
	_, span := tracer.Start(parent, "bucket read", trace.WithAttributes(attribute.String("wharf.digest", dgst.String()), attribute.Int64("wharf.offset", offset)))
	defer span.End()
	ctx, cancel := context.WithCancel(parent)
	t := time.AfterFunc(bucketLookupTimeout, cancel)
	rc, err := r.Open(ctx, dgst, offset)
	if !t.Stop() && parent.Err() == nil {
		if err == nil {
			rc.Close()
		}
		err = fmt.Errorf("blob %s in the remote tier: no answer within %v", dgst, bucketLookupTimeout)
		r.Failed(err)
	}
	if err != nil {
		cancel()
		return nil, err
	}
	return cancelOnClose{rc, cancel}, nil
}

// cancelOnClose releases a read's context when the read is closed.
type cancelOnClose struct {
	io.ReadCloser
	cancel context.CancelFunc
}

func (c cancelOnClose) Close() error {
	err := c.ReadCloser.Close()
	c.cancel()
	return err
}

// Degraded says why the cache serves less than it should, or "": the
// remote tier not answering (cached content is still served, misses go
// upstream, what is filled is kept here and uploaded once it answers).
func (c *Cache) Degraded(ctx context.Context) string {
	r := c.store.Bucket()
	if r == nil {
		return ""
	}
	if r.Healthy(ctx) != nil {
		return fmt.Sprintf("the shared bucket does not answer: cached content is served, misses go upstream and are kept here; %d blobs wait to be uploaded",
			c.store.Uploads().Pending)
	}
	return ""
}
