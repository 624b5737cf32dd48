package cache

import (
	"context"

	"github.com/opencontainers/go-digest"
)

// RedirectURL is where a client may fetch blob dgst of repo itself, a
// short-lived URL in the remote tier, when the cache is set to redirect
// and the blob is there but neither stored here nor being filled; "" when
// the blob is to be served the usual way. repo must be known to hold the
// blob, as for any other answer.
func (c *Cache) RedirectURL(ctx context.Context, up, repo string, dgst digest.Digest) (string, error) {
	r := c.store.Bucket()
	if !c.redirect || r == nil || r.Down() {
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
	if _, sources, err := c.bucketLookup(ctx, r, dgst); err != nil || !c.vouched(u, sources) {
		return "", nil // not there, the bucket cannot be asked, or u must prove it: a fill decides
	}
	if err := c.holds(ctx, u, repo, dgst, false); err != nil {
		return "", err
	}
	url, err := r.RedirectURL(ctx, dgst)
	if err != nil || url == "" {
		return "", nil
	}
	// The bucket learns of the use before the client does: gc spares a
	// blob used within its min-age, and a use Touch collects reaches the
	// bucket minutes late.
	mctx, cancel := context.WithTimeout(ctx, bucketLookupTimeout)
	err = c.store.MarkUsed(mctx, dgst)
	cancel()
	if err != nil {
		return "", nil // gc might delete it under the client: a fill serves it
	}
	c.metrics.remote.WithLabelValues("redirect").Inc()
	return url, nil
}
