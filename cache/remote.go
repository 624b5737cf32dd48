package cache

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/wharf-registry/wharf/storage"
)

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
		upstream = c.throughOwner(u, repo, dgst, upstream)
	}
	r := c.store.Remote()
	if r == nil {
		return upstream, nil, nil
	}
	size, sources, err := c.remoteLookup(ctx, r, dgst)
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
	if err := c.authorize(ctx, u, repo, dgst, false); err != nil {
		return nil, nil, err
	}
	c.metrics.remote.WithLabelValues("hit").Inc()
	inBucket := true // until a read from it fails
	return func(ctx context.Context, offset int64) (io.ReadCloser, int64, string, error) {
		if inBucket {
			rc, err := c.remoteOpen(ctx, r, dgst, offset)
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

// remoteLookup asks the bucket for blob dgst's size and sources, within
// remoteLookupTimeout for the two.
func (c *Cache) remoteLookup(ctx context.Context, r *storage.Remote, dgst digest.Digest) (int64, []string, error) {
	ctx, cancel := context.WithTimeout(ctx, remoteLookupTimeout)
	defer cancel()
	size, err := r.Stat(ctx, dgst)
	if err != nil {
		return 0, nil, err
	}
	sources, err := r.Sources(ctx, dgst)
	return size, sources, err
}

// dropFromRemote deletes blob dgst from the remote tier, whose bytes for it
// did not verify: keyed by their digest, they can never be right, and
// left there they would fail every replica's fill of the blob. The next
// fill asks upstream.
func (c *Cache) dropFromRemote(dgst digest.Digest, why error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	err := c.store.Remote().Delete(ctx, dgst)
	c.log.Error("a blob in the remote tier does not match its digest; deleted", "digest", dgst, "why", why, "error", err)
}

// RemoteURL is where a client may fetch blob dgst of repo itself, a
// short-lived URL in the remote tier, when the cache is set to redirect
// and the blob is there but neither stored here nor being filled; "" when
// the blob is to be served the usual way. repo must be known to hold the
// blob, as for any other answer.
func (c *Cache) RemoteURL(ctx context.Context, up, repo string, dgst digest.Digest) (string, error) {
	r := c.store.Remote()
	if !c.redirect || r == nil {
		return "", nil
	}
	u, err := c.upstream(up)
	if err != nil {
		return "", err
	}
	if _, err := c.store.Blob(dgst); err == nil {
		return "", nil // a local hit is served here
	}
	c.mu.Lock()
	_, filling := c.fills[dgst]
	c.mu.Unlock()
	if filling {
		return "", nil
	}
	if _, sources, err := c.remoteLookup(ctx, r, dgst); err != nil || !c.vouched(u, sources) {
		return "", nil // not there, the bucket cannot be asked, or u must prove it: a fill decides
	}
	if err := c.authorize(ctx, u, repo, dgst, false); err != nil {
		return "", err
	}
	url, err := r.RedirectURL(ctx, dgst)
	if err != nil || url == "" {
		return "", nil
	}
	// The bucket learns of the use before the client does: gc spares a
	// blob used within its min-age, and a use Touch collects reaches the
	// bucket minutes late.
	mctx, cancel := context.WithTimeout(ctx, remoteLookupTimeout)
	err = c.store.MarkUsed(mctx, dgst)
	cancel()
	if err != nil {
		return "", nil // gc might delete it under the client: a fill serves it
	}
	c.metrics.remote.WithLabelValues("redirect").Inc()
	return url, nil
}

// remoteLookupTimeout bounds asking the bucket whether it holds a blob: a
// bucket that does not answer (the SDK retries) must not hold up every
// miss, which upstream can answer instead.
const remoteLookupTimeout = 2 * time.Second

// remoteOpen is r.Open with the lookup's bound on the wait for the answer,
// not on reading the body that follows.
func (c *Cache) remoteOpen(ctx context.Context, r *storage.Remote, dgst digest.Digest, offset int64) (io.ReadCloser, error) {
	ctx, cancel := context.WithCancel(ctx)
	t := time.AfterFunc(remoteLookupTimeout, cancel)
	rc, err := r.Open(ctx, dgst, offset)
	if !t.Stop() && err == nil {
		rc.Close()
		err = fmt.Errorf("blob %s in the remote tier: no answer within %v", dgst, remoteLookupTimeout)
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

// pinsEvery is how often a replica with a remote tier tells it what it
// pins, so that gc, which sees no replica's index, spares it.
const pinsEvery = 5 * time.Minute

// publishPins writes this replica's pinned digests to the remote tier.
func (c *Cache) publishPins() {
	if c.store.Remote() == nil || len(c.pins) == 0 {
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

// Degraded says why the cache serves less than it should, or "": the
// remote tier not answering (cached content is still served, misses go
// upstream, nothing new reaches the fleet's tier).
func (c *Cache) Degraded(ctx context.Context) string {
	if r := c.store.Remote(); r != nil && r.Healthy(ctx) != nil {
		return "the shared bucket does not answer: cached content is served, misses go upstream"
	}
	return ""
}

// Peers is what the cache needs of the fleet; cluster.Cluster is one.
type Peers interface {
	// Owner is the replica that fetches dgst for the fleet, and whether
	// it is this one.
	Owner(dgst digest.Digest) (peer string, self bool)
	// Blob asks peer for blob dgst of repo on upstream up from offset on.
	Blob(ctx context.Context, peer, up, repo string, dgst digest.Digest, offset int64) (io.ReadCloser, int64, error)
}

// throughOwner fetches dgst through its owner when that is another
// replica: the owner fills it once for every replica asking. An owner
// that cannot be reached or refuses is passed by, and so is one whose
// stream breaks or stalls: the fill goes on from upstream itself, from
// the byte it had reached, slower but never an error. The owner's answer, like upstream's,
// shows that repo holds the blob; the bytes are verified here all the same.
func (c *Cache) throughOwner(u Upstream, repo string, dgst digest.Digest, upstream blobOpener) blobOpener {
	peer, self := c.peers.Owner(dgst)
	if self {
		return upstream
	}
	viaPeer := true // the first read only: an owner whose stream broke or stalled is not asked again
	return func(ctx context.Context, offset int64) (io.ReadCloser, int64, string, error) {
		if viaPeer {
			viaPeer = false
			rc, size, err := c.peers.Blob(ctx, peer, u.Name, repo, dgst, offset)
			if err == nil {
				c.metrics.peer.WithLabelValues("owner").Inc()
				return rc, size, fromPeer, nil
			}
			if ctx.Err() != nil {
				return nil, 0, fromPeer, err
			}
			switch Status(err) {
			case http.StatusNotFound:
				return nil, 0, fromPeer, fmt.Errorf("%w: %w", ErrNotFound, err)
			case http.StatusUnauthorized:
				c.metrics.peer.WithLabelValues("refused").Inc()
				c.log.Warn("digest owner refused this replica's signed request; filling from upstream: the replicas' cluster.secret_file differ, "+
					"their clocks are more than 5 minutes apart, or one runs a version before signed peer requests", "digest", dgst, "error", err)
			default:
				c.metrics.peer.WithLabelValues("unreachable").Inc()
				c.log.Warn("digest owner unreachable; filling from upstream", "digest", dgst, "error", err)
			}
		}
		return upstream(ctx, offset)
	}
}
