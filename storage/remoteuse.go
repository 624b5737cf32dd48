package storage

import (
	"context"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"
)

// remoteUse collects the blobs this replica served since it last told the
// bucket, for gc's fleet-wide last use: one marker write per blob per
// remoteUseEvery at most, not one per request.
type remoteUse struct {
	mu      sync.Mutex
	pending map[digest.Digest]time.Time // at most maxPendingUses
	last    time.Time                   // of the last flush
}

const (
	remoteUseEvery = 5 * time.Minute
	maxPendingUses = 100_000
	// remoteUseFlushTime bounds one flush; what is left waits for the next.
	remoteUseFlushTime = time.Minute
)

func (u *remoteUse) note(dgst digest.Digest, at time.Time) {
	u.mu.Lock()
	if u.pending == nil {
		u.pending = map[digest.Digest]time.Time{}
	}
	if _, ok := u.pending[dgst]; ok || len(u.pending) < maxPendingUses {
		u.pending[dgst] = at
	}
	u.mu.Unlock()
}

// take returns the pending uses when a flush is due at now (or forced),
// and nil otherwise.
func (u *remoteUse) take(now time.Time, force bool) map[digest.Digest]time.Time {
	u.mu.Lock()
	defer u.mu.Unlock()
	if len(u.pending) == 0 || (!force && now.Sub(u.last) < remoteUseEvery) {
		return nil
	}
	p := u.pending
	u.pending, u.last = nil, now
	return p
}

// flushRemoteUse writes the pending uses to the bucket as markers (see
// Remote.Touch), when due or forced (at Close). A marker that cannot be
// written is dropped: a use is a hint for gc, never a correctness matter.
func (s *Store) flushRemoteUse(force bool) {
	if s.remote == nil {
		return
	}
	uses := s.use.take(time.Now(), force)
	if uses == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), remoteUseFlushTime)
	defer cancel()
	for d, at := range uses {
		if ctx.Err() != nil {
			return
		}
		s.remote.Touch(ctx, d, at)
	}
}
