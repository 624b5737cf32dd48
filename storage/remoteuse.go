package storage

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"
	"golang.org/x/sync/singleflight"
)

// remoteUse collects the blobs this replica served since it last told the
// bucket, for gc's fleet-wide last use: one marker write per blob per
// remoteUseEvery at most, not one per request.
type remoteUse struct {
	mu      sync.Mutex
	pending map[digest.Digest]time.Time // at most maxPendingUses
	last    time.Time                   // of the last flush
	marks   map[digest.Digest]time.Time // markers MarkUsed wrote, at most maxPendingUses
	marking singleflight.Group          // one marker write per blob at a time, its redirects waiting on it
}

const (
	remoteUseEvery = 5 * time.Minute
	maxPendingUses = 100_000
	// remoteUseFlushTime bounds one flush; what is left waits for the next.
	remoteUseFlushTime = time.Minute
	// markFresh is how long a marker MarkUsed wrote stands for the blob's
	// later redirects: gc's MinAge must exceed it, a presigned URL's life
	// and how far another replica's flush can set a marker back
	// (remoteUseEvery and remoteUseFlushTime) together.
	markFresh = 10 * time.Minute
)

// MarkUsed records in the bucket, before a client is redirected to blob
// dgst there, that it is in use, unless this replica did so within
// markFresh: gc must not delete a blob a client has a URL for, and the
// uses Touch collects reach the bucket up to remoteUseEvery late. Clients
// redirected to the same blob at once wait for one write between them. An
// error means the client is better served another way.
func (s *Store) MarkUsed(ctx context.Context, dgst digest.Digest) error {
	if s.bucket == nil {
		return nil
	}
	if !s.use.markDue(dgst, time.Now()) {
		return nil
	}
	_, err, _ := s.use.marking.Do(string(dgst), func() (any, error) {
		now := time.Now()
		if !s.use.markDue(dgst, now) {
			return nil, nil // written while this caller waited
		}
		if err := s.bucket.Touch(ctx, dgst, now); err != nil {
			return nil, err
		}
		s.use.mark(dgst, now)
		return nil, nil
	})
	return err
}

// markDue says whether dgst needs a marker written now.
func (u *remoteUse) markDue(dgst digest.Digest, now time.Time) bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	at, ok := u.marks[dgst]
	return !ok || now.Sub(at) >= markFresh
}

// mark remembers a marker written at; when the map is full, the stale
// ones go, and if none is stale the marker is not remembered (the next
// redirect writes one again).
func (u *remoteUse) mark(dgst digest.Digest, at time.Time) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.marks == nil {
		u.marks = map[digest.Digest]time.Time{}
	}
	if len(u.marks) >= maxPendingUses {
		for d, t := range u.marks {
			if at.Sub(t) >= markFresh {
				delete(u.marks, d)
			}
		}
	}
	if len(u.marks) < maxPendingUses {
		u.marks[dgst] = at
	}
}

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
func (u *remoteUse) take(now time.Time, every time.Duration, force bool) map[digest.Digest]time.Time {
	u.mu.Lock()
	defer u.mu.Unlock()
	if len(u.pending) == 0 || (!force && now.Sub(u.last) < every) {
		return nil
	}
	p := u.pending
	u.pending, u.last = nil, now
	return p
}

// flushRemoteUse writes the pending uses to the bucket as markers (see
// Remote.Touch), when due or forced (at Close), and queues for upload
// the blobs served that the bucket lacks (gc deleted them, or their
// upload was lost): a fleet's bucket holds what its replicas serve. A
// marker that cannot be written is dropped: a use is a hint for gc,
// never a correctness matter.
func (s *Store) flushRemoteUse(force bool) {
	if s.bucket == nil {
		return
	}
	uses := s.use.take(time.Now(), s.useEvery, force)
	if uses == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), remoteUseFlushTime)
	defer cancel()
	for d, at := range uses {
		if ctx.Err() != nil {
			return
		}
		if s.bucket.Touch(ctx, d, at) != nil {
			continue
		}
		if _, err := s.bucket.Stat(ctx, d); errors.Is(err, ErrNotFound) && !force {
			s.queueUpload(d)
		}
	}
}
