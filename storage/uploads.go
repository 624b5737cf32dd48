package storage

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/opencontainers/go-digest"
)

// Uploads to the bucket happen behind the clients' backs: a blob is
// committed and indexed here first (a client never waits for the bucket,
// nor fails with it), and a record in the index says the bucket still
// needs it. One goroutine works through those records, a few uploads at
// a time, and tries again with a growing pause while the bucket does not
// answer; the records outlive a restart. A blob that is already in the
// bucket (another replica's upload, or the same bytes again) is not sent
// twice. Blobs that this replica serves and the bucket lost (gc deleted
// them) are queued again when their use is told to the bucket.

// prefixUpload: u <digest> → (empty): the bucket must get this blob, with
// its sources.
const prefixUpload = "u\x00"

const (
	uploadsAtOnce = 4
	// uploadStall ends an upload that sent nothing for this long: a
	// bucket that stopped answering, not a slow one.
	uploadStall    = 30 * time.Second
	maxUploadRetry = time.Minute
)

// uploads is the state of the upload queue.
type uploads struct {
	wake    chan struct{} // a record was added
	pending atomic.Int64  // records in the index, roughly
	done    atomic.Uint64
	failed  atomic.Uint64
	wg      sync.WaitGroup
}

// UploadStats is the upload queue as metrics show it.
type UploadStats struct {
	Pending        int64  // blobs the bucket still needs
	Done, Failures uint64 // uploads (or checks that found the blob there), and attempts that failed
}

// Uploads reports the upload queue.
func (s *Store) Uploads() UploadStats {
	return UploadStats{Pending: max(0, s.up.pending.Load()), Done: s.up.done.Load(), Failures: s.up.failed.Load()}
}

// DrainUploads waits, until ctx ends (30 s at most) or the bucket stops
// answering, for the upload queue to empty: a clean stop leaves the next
// start nothing to upload.
func (s *Store) DrainUploads(ctx context.Context) {
	if s.bucket == nil {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for s.up.pending.Load() > 0 && !s.bucket.Down() {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// queueUpload records that the bucket must get blob dgst.
func (s *Store) queueUpload(dgst digest.Digest) error {
	if s.bucket == nil {
		return nil
	}
	k := key(prefixUpload, dgst.String())
	added := false
	err := s.db.Update(func(txn *badger.Txn) error {
		if _, err := txn.Get(k); err == nil {
			return nil
		} else if !errors.Is(err, badger.ErrKeyNotFound) {
			return err
		}
		added = true
		return txn.Set(k, nil)
	})
	if err != nil {
		return err
	}
	if added {
		s.up.pending.Add(1)
	}
	select {
	case s.up.wake <- struct{}{}:
	default:
	}
	return nil
}

// startUploads counts the records a run before left and starts working
// through them.
func (s *Store) startUploads(retry time.Duration) {
	s.up.wake = make(chan struct{}, 1)
	if s.bucket == nil {
		return
	}
	n := 0
	s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte(prefixUpload)})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			n++
		}
		return nil
	})
	s.up.pending.Store(int64(n))
	s.up.wg.Add(1)
	go s.uploadLoop(max(retry, time.Millisecond))
}

// uploadLoop uploads what the queue holds until Close.
func (s *Store) uploadLoop(retry time.Duration) {
	defer s.up.wg.Done()
	ctx, cancel := context.WithCancel(context.Background())
	go func() { <-s.stop; cancel() }()
	pause := retry
	for {
		batch := s.queuedUploads(64)
		if len(batch) == 0 {
			select {
			case <-s.stop:
				return
			case <-s.up.wake:
				continue
			}
		}
		var failed atomic.Bool
		sem := make(chan struct{}, uploadsAtOnce)
		var wg sync.WaitGroup
		for _, d := range batch {
			sem <- struct{}{}
			wg.Go(func() {
				defer func() { <-sem }()
				if err := s.uploadOne(ctx, d); err != nil {
					failed.Store(true)
					if ctx.Err() == nil {
						s.up.failed.Add(1)
					}
				}
			})
		}
		wg.Wait()
		if !failed.Load() {
			pause = retry
			continue
		}
		t := time.NewTimer(pause)
		select {
		case <-s.stop:
			t.Stop()
			return
		case <-t.C:
		}
		pause = min(2*pause, maxUploadRetry)
	}
}

// queuedUploads is up to n digests the bucket still needs.
func (s *Store) queuedUploads(n int) []digest.Digest {
	var out []digest.Digest
	s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte(prefixUpload)})
		defer it.Close()
		for it.Rewind(); it.Valid() && len(out) < n; it.Next() {
			out = append(out, digest.Digest(it.Item().Key()[len(prefixUpload):]))
		}
		return nil
	})
	return out
}

// uploadOne gives the bucket blob dgst and its sources, unless it has
// it already, and takes the record off the queue. A blob no longer
// stored here (evicted meanwhile) is taken off: its next fill queues it
// again.
func (s *Store) uploadOne(ctx context.Context, dgst digest.Digest) error {
	f, size, err := s.Open(dgst)
	if errors.Is(err, ErrNotFound) {
		return s.unqueue(dgst)
	}
	if err != nil {
		return err
	}
	defer f.Close()
	bi, err := s.Blob(dgst)
	if errors.Is(err, ErrNotFound) {
		return s.unqueue(dgst)
	}
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, remoteUploadTimeout)
	defer cancel()
	// Sources first: the bucket never holds a blob of this Wharf's
	// without them, which would read as a blob of unknown origin.
	if err := s.bucket.AddSources(ctx, dgst, bi.Sources...); err != nil {
		s.bucket.note(err)
		return err
	}
	if got, err := s.bucket.Stat(ctx, dgst); err == nil && got == size {
		s.up.done.Add(1)
		return s.unqueue(dgst)
	} else if err != nil && !errors.Is(err, ErrNotFound) {
		return err
	}
	src := &progressReader{r: io.NewSectionReader(f, 0, size)}
	stop := src.watch(ctx, cancel, uploadStall)
	err = s.bucket.Upload(ctx, dgst, size, src)
	stop()
	if src.stalled.Load() {
		err = fmt.Errorf("upload blob %s: nothing sent for %v: %w", dgst, uploadStall, err)
	}
	s.bucket.note(err)
	if err != nil {
		return err
	}
	s.up.done.Add(1)
	return s.unqueue(dgst)
}

func (s *Store) unqueue(dgst digest.Digest) error {
	err := s.db.Update(func(txn *badger.Txn) error { return txn.Delete(key(prefixUpload, dgst.String())) })
	if err == nil {
		s.up.pending.Add(-1)
	}
	return err
}

// progressReader counts reads, for the stall watch.
type progressReader struct {
	r       io.Reader
	reads   atomic.Int64
	eof     atomic.Bool // read whole: the rest is the driver's
	stalled atomic.Bool
}

func (p *progressReader) Read(b []byte) (int, error) {
	p.reads.Add(1)
	n, err := p.r.Read(b)
	if err == io.EOF {
		p.eof.Store(true)
	}
	return n, err
}

// watch calls cancel once no read happened for stall before the source
// was read whole; stop ends the watch.
func (p *progressReader) watch(ctx context.Context, cancel context.CancelFunc, stall time.Duration) (stop func()) {
	done := make(chan struct{})
	go func() {
		t := time.NewTicker(stall)
		defer t.Stop()
		last := int64(-1)
		for {
			select {
			case <-done:
				return
			case <-ctx.Done():
				return
			case <-t.C:
				n := p.reads.Load()
				if n == last && !p.eof.Load() {
					p.stalled.Store(true)
					cancel()
					return
				}
				last = n
			}
		}
	}()
	return func() { close(done) }
}
