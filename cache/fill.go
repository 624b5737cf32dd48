package cache

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/wharf-registry/wharf/storage"
)

// fillBuffer is the size of each read from upstream; every write wakes the
// readers, so it trades wake-ups against latency.
const fillBuffer = 128 << 10

// fill is one blob being copied from upstream into the store. It belongs to
// no client: it runs on its own context until the blob is stored or fails,
// while any number of readers follow the temporary file from their own
// offsets, woken as bytes land.
type fill struct {
	dgst   digest.Digest
	cancel context.CancelFunc
	ready  chan struct{} // closed when size/mediaType/file are set, or err

	// Set before ready is closed, read-only after.
	size      int64 // -1 if upstream did not say
	mediaType string
	file      *os.File // read side of the temporary file, shared via ReadAt

	mu       sync.Mutex
	written  int64
	verified bool // the bytes hash to dgst: readers may take the last one
	done     bool
	err      error
	wake     chan struct{} // closed and replaced on every change
	refs     int           // holders of file: the fill itself and each reader
	idle     time.Time     // since when nobody reads it (zero while someone does)
	dropped  atomic.Bool   // cancelled by the sweeper: nobody read it

	waiting     prometheus.Gauge   // readers blocked for bytes to land
	passthrough prometheus.Counter // readers sent straight to upstream

	src  Source // for pass-through when the store fails
	up   string // the upstream it comes from
	repo string
}

// startFill returns the fill for dgst, starting it unless one is running.
// It returns nil if the blob was committed meanwhile. A new fill takes one
// of the upstream's MaxFills slots, waiting for one at most WaitTimeout.
func (c *Cache) startFill(ctx context.Context, u Upstream, repo string, dgst digest.Digest) (f *fill, started bool, err error) {
	c.mu.Lock()
	f = c.fills[dgst]
	c.mu.Unlock()
	if f != nil {
		return f, false, nil
	}
	slots := c.fillSlots[u.Name]
	if slots != nil {
		if err := takeSlot(ctx, slots, u.WaitTimeout); err != nil {
			c.metrics.failed.WithLabelValues("busy").Inc()
			return nil, false, err
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if f := c.fills[dgst]; f != nil {
		releaseSlot(slots)
		return f, false, nil
	}
	if _, err := c.store.Blob(dgst); err == nil {
		releaseSlot(slots)
		return nil, false, nil
	}
	f = &fill{dgst: dgst, ready: make(chan struct{}), wake: make(chan struct{}), refs: 1, size: -1, idle: time.Now(),
		waiting: c.metrics.waiting, passthrough: c.metrics.passthrough, src: u.Source, up: u.Name, repo: repo}
	fctx, cancel := context.WithTimeout(context.Background(), c.fillTimeout)
	f.cancel = cancel
	c.fills[dgst] = f
	c.metrics.fills.Inc()
	c.running.Add(1)
	go func() {
		defer releaseSlot(slots)
		c.run(fctx, f, u, repo)
	}()
	return f, true, nil
}

// busyError is a miss that found every fill slot of its upstream taken for
// the whole wait: the client is told to come back (503, Retry-After).
type busyError struct{ wait time.Duration }

func (e busyError) Error() string {
	return fmt.Sprintf("every blob fill slot of the upstream stayed taken for %v", e.wait)
}
func (e busyError) Unwrap() error             { return ErrUnavailable }
func (e busyError) RetryAfter() time.Duration { return time.Second }

// takeSlot takes one of slots, waiting at most wait.
func takeSlot(ctx context.Context, slots chan struct{}, wait time.Duration) error {
	select {
	case slots <- struct{}{}:
		return nil
	default:
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case slots <- struct{}{}:
		return nil
	case <-t.C:
		return busyError{wait}
	case <-ctx.Done():
		return ctx.Err()
	}
}

func releaseSlot(slots chan struct{}) {
	if slots != nil {
		<-slots
	}
}

// sweep cancels, once a second, the fills nobody has read for their
// upstream's FillGrace: a client that went away, and no job, must not hold
// an upstream slot for up to FillTimeout. One goroutine for all fills.
func (c *Cache) sweep() {
	defer c.running.Done()
	tick := time.NewTicker(sweepEvery)
	defer tick.Stop()
	for {
		select {
		case <-c.stop:
			return
		case now := <-tick.C:
			c.maybeEvict() // the filesystem may have filled up behind our back
			c.mu.Lock()
			for _, f := range c.fills {
				if f.abandoned(now, c.upstreams[f.up].FillGrace) {
					f.dropped.Store(true)
					f.cancel()
				}
			}
			c.mu.Unlock()
		}
	}
}

// sweepEvery is how often sweep looks at the fills.
var sweepEvery = time.Second

// abandoned reports whether nobody has read f for longer than grace.
func (f *fill) abandoned(now time.Time, grace time.Duration) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return !f.done && f.refs == 1 && !f.idle.IsZero() && now.Sub(f.idle) > grace
}

// Close stops prefetch jobs (they resume at the next start), lets the fills
// in progress finish until ctx ends, then cancels the rest, and returns once
// none is running: after it the store may be closed.
func (c *Cache) Close(ctx context.Context) {
	c.stopJobs()
	c.stopOnce.Do(func() { close(c.stop) })
	done := make(chan struct{})
	go func() { c.running.Wait(); close(done) }()
	select {
	case <-done:
		return
	case <-ctx.Done():
	}
	c.mu.Lock()
	for _, f := range c.fills {
		f.cancel()
	}
	c.mu.Unlock()
	<-done
}

// run copies the blob and ends the fill. The store entry is committed before
// the fill leaves c.fills, so a reader either joins it or finds the blob.
func (c *Cache) run(ctx context.Context, f *fill, u Upstream, repo string) {
	defer c.running.Done()
	defer f.cancel()
	err := c.copyBlob(ctx, f, u, repo)
	c.remember(u, repo, blobKey(u.Name, repo, f.dgst.String()), err)
	c.mu.Lock()
	delete(c.fills, f.dgst)
	c.mu.Unlock()
	c.metrics.fills.Dec()
	f.finish(err)
}

// Resuming a broken fill: how often in all, how many attempts in a row may
// bring nothing (so a dead upstream is given up on quickly), and the first
// back-off, doubled each time.
const (
	maxResumes    = 5
	maxStalls     = 2
	resumeBackoff = 100 * time.Millisecond
)

// errStore marks a failure of the local disk rather than of upstream.
var errStore = errors.New("store")

func (c *Cache) copyBlob(ctx context.Context, f *fill, u Upstream, repo string) error {
	if c.store.Full() {
		// Nowhere to put it: every reader goes straight to upstream,
		// and eviction makes room if the store may.
		c.metrics.failed.WithLabelValues("storage").Inc()
		c.maybeEvict()
		return fmt.Errorf("%w: %w", errStore, storage.ErrNoSpace)
	}
	rc, size, err := u.Source.Blob(ctx, repo, f.dgst, 0)
	if err != nil {
		c.metrics.failed.WithLabelValues("upstream").Inc()
		return classify(err)
	}
	// Upstream just showed that repo holds the blob.
	c.keep("index", c.store.AddMembers(u.Name, repo, f.dgst), "repository", repo, "digest", f.dgst)
	f.size, f.mediaType = size, "application/octet-stream"
	w, err := c.store.Create(f.dgst, "")
	if err != nil {
		rc.Close()
		c.metrics.failed.WithLabelValues("storage").Inc()
		c.maybeEvict()
		return fmt.Errorf("%w: %w", errStore, err)
	}
	defer w.Cancel()
	file, err := os.Open(w.Name())
	if err != nil {
		rc.Close()
		c.metrics.failed.WithLabelValues("storage").Inc()
		return fmt.Errorf("%w: %w", errStore, err)
	}
	f.file = file
	close(f.ready)

	buf := make([]byte, fillBuffer)
	stalls := 0 // attempts in a row that added nothing
	for attempt := 1; ; attempt++ {
		before := w.Size()
		err = c.copyBody(f, w, rc, buf, u.Name)
		rc.Close()
		if w.Size() == before {
			stalls++
		} else {
			stalls = 0
		}
		if err == nil || errors.Is(err, errStore) || attempt > maxResumes || stalls >= maxStalls {
			break
		}
		// The connection broke: ask for the rest, keeping what landed.
		t := time.NewTimer(resumeBackoff << (attempt - 1))
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			err = ctx.Err()
		}
		if ctx.Err() != nil {
			break
		}
		rc, _, err = u.Source.Blob(ctx, repo, f.dgst, w.Size())
		if err != nil {
			if !errors.Is(classify(err), ErrUnavailable) {
				break
			}
			rc = io.NopCloser(errReader{err})
			continue
		}
		c.metrics.resumed.Inc()
	}
	if errors.Is(err, errStore) {
		c.metrics.failed.WithLabelValues("storage").Inc()
		c.log.Error("cannot store blob; its clients go on from upstream", "digest", f.dgst, "error", err)
		c.maybeEvict() // a full filesystem: make room if the store may
		return err
	}
	if err != nil && f.dropped.Load() {
		c.metrics.failed.WithLabelValues("abandoned").Inc()
		return fmt.Errorf("%w: blob %s: fill cancelled, nobody read it", ErrUnavailable, f.dgst)
	}
	if err != nil {
		c.metrics.failed.WithLabelValues("upstream").Inc()
		return fmt.Errorf("%w: blob %s: %w", ErrUnavailable, f.dgst, err)
	}
	if err := w.Verify(size); err != nil {
		c.metrics.failed.WithLabelValues("digest").Inc()
		return fmt.Errorf("%w: %w", ErrBadUpstream, err)
	}
	f.verify()
	if err := w.Commit(size); err != nil {
		// Every byte verified and stays readable through the open temporary
		// file: the readers finish, only the store misses out.
		c.metrics.failed.WithLabelValues("storage").Inc()
		c.log.Error("verified blob not stored; its readers are served", "digest", f.dgst, "error", err)
		return nil
	}
	c.maybeEvict()
	return nil
}

// copyBody appends rc to the blob until EOF (nil) or an error.
func (c *Cache) copyBody(f *fill, w *storage.Writer, rc io.Reader, buf []byte, up string) error {
	for {
		n, rerr := rc.Read(buf)
		if n > 0 {
			if _, err := w.Write(buf[:n]); err != nil {
				return fmt.Errorf("%w: %w", errStore, err)
			}
			c.metrics.fetched.WithLabelValues(up).Add(float64(n))
			f.progress(int64(n))
		}
		if rerr == io.EOF {
			return nil
		}
		if rerr != nil {
			return rerr
		}
	}
}

type errReader struct{ err error }

func (e errReader) Read([]byte) (int, error) { return 0, e.err }

func (f *fill) progress(n int64) {
	f.mu.Lock()
	f.written += n
	f.notify()
	f.mu.Unlock()
}

// verify releases the held-back last byte: the whole blob hashed right.
func (f *fill) verify() {
	f.mu.Lock()
	f.verified = true
	f.notify()
	f.mu.Unlock()
}

// notify wakes every waiting reader; f.mu must be held.
func (f *fill) notify() {
	close(f.wake)
	f.wake = make(chan struct{})
}

func (f *fill) finish(err error) {
	f.mu.Lock()
	f.done, f.err = true, err
	f.notify()
	f.mu.Unlock()
	select {
	case <-f.ready:
	default: // failed before the first byte; only run closes ready
		close(f.ready)
	}
	f.release()
}

func (f *fill) release() {
	f.mu.Lock()
	f.refs--
	last := f.refs == 0
	if f.refs == 1 {
		f.idle = time.Now() // only the fill itself is left
	}
	f.mu.Unlock()
	if last && f.file != nil {
		f.file.Close()
	}
}

// errFillDone tells a late reader that the fill has ended: the blob is in
// the store now, or could not be stored and must be fetched again.
var errFillDone = errors.New("fill complete")

// open waits until the fill has started and returns a reader at offset 0.
func (f *fill) open(ctx context.Context) (*fillReader, error) {
	select {
	case <-f.ready:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if errors.Is(f.err, errStore) {
		f.refs++
		f.idle = time.Time{}
		return &fillReader{f: f, ctx: ctx}, nil // its first Read goes to upstream
	}
	if f.err != nil {
		return nil, f.err
	}
	if f.done {
		// Stored already, and its temporary file may be closed: read the
		// store instead.
		return nil, errFillDone
	}
	f.refs++
	f.idle = time.Time{}
	return &fillReader{f: f, ctx: ctx}, nil
}

// fillReader follows a fill from its own offset. It is an io.ReadSeeker so
// http.ServeContent can answer Range requests on a blob still arriving.
type fillReader struct {
	f      *fill
	ctx    context.Context // the client's: a gone client stops reading, not the fill
	off    int64
	closed bool
	direct *direct // set once the fill failed to store: see passthrough.go
}

// state returns how far a reader may go, whether the blob is final, and a
// channel that is closed on the next change. The last byte is held back
// until the blob verifies, so no client completes a read of wrong bytes.
func (r *fillReader) state() (avail int64, done bool, wake <-chan struct{}, err error) {
	f := r.f
	f.mu.Lock()
	defer f.mu.Unlock()
	avail = f.written
	if !f.verified && !f.done {
		avail--
	}
	return avail, f.done, f.wake, f.err
}

func (r *fillReader) Read(p []byte) (int, error) {
	for {
		if r.direct != nil {
			return r.readDirect(p)
		}
		avail, done, wake, err := r.state()
		if errors.Is(err, errStore) {
			if err := r.startDirect(); err != nil {
				return 0, err
			}
			continue
		}
		if err != nil {
			return 0, err
		}
		if r.off < avail {
			n, rerr := r.f.file.ReadAt(p[:min(int64(len(p)), avail-r.off)], r.off)
			r.off += int64(n)
			if rerr == io.EOF && n > 0 {
				rerr = nil
			}
			return n, rerr
		}
		if done {
			return 0, io.EOF
		}
		if err := r.wait(wake); err != nil {
			return 0, err
		}
	}
}

// wait blocks until the fill changes or the client goes away.
func (r *fillReader) wait(wake <-chan struct{}) error {
	r.f.waiting.Inc()
	defer r.f.waiting.Dec()
	select {
	case <-wake:
		return nil
	case <-r.ctx.Done():
		return r.ctx.Err()
	}
}

func (r *fillReader) Seek(offset int64, whence int) (int64, error) {
	switch whence {
	case io.SeekStart:
	case io.SeekCurrent:
		offset += r.off
	case io.SeekEnd:
		size, err := r.size()
		if err != nil {
			return 0, err
		}
		offset += size
	default:
		return 0, errors.New("seek: invalid whence")
	}
	if offset < 0 {
		return 0, errors.New("seek: negative position")
	}
	r.off = offset
	return offset, nil
}

// size is the blob's length, waiting for the end of the fill if upstream
// did not announce it.
func (r *fillReader) size() (int64, error) {
	for r.f.size < 0 {
		if r.direct != nil {
			return r.direct.size, nil
		}
		_, done, wake, err := r.state()
		if errors.Is(err, errStore) {
			if err := r.startDirect(); err != nil {
				return 0, err
			}
			continue
		}
		if err != nil {
			return 0, err
		}
		if done {
			r.f.mu.Lock()
			n := r.f.written
			r.f.mu.Unlock()
			return n, nil
		}
		if err := r.wait(wake); err != nil {
			return 0, err
		}
	}
	return r.f.size, nil
}

func (r *fillReader) Close() error {
	if !r.closed {
		r.closed = true
		if r.direct != nil {
			r.direct.rc.Close()
		}
		r.f.release()
	}
	return nil
}
