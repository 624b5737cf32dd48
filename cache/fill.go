package cache

import (
	"context"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
)

// fillBuffer is the most one read from upstream takes. A read returns what
// has arrived, so a larger buffer adds no latency; each read costs a file
// write, a hash update and a wake-up of every reader, so fewer, larger
// ones cost less CPU. In make bench, a cold GiB took about 2.2 CPU-seconds
// with 128 KiB reads and 1.9–2.1 with 512 KiB; 1 MiB, where loopback reads
// still come back full, saves about 7 % more (1.8–2.1 over runs).
const fillBuffer = 1 << 20

// fillBuffers are the full-size read buffers, reused: a fresh MiB for each
// fill is memory to zero and fault in, which cost the 50 small images
// more CPU than the larger reads saved.
var fillBuffers = sync.Pool{New: func() any { b := make([]byte, fillBuffer); return &b }}

// fillBufferFor returns the read buffer for a blob of size bytes (-1:
// unknown) and how to give it back: no larger than the blob, so a config
// of a few hundred bytes does not hold a MiB.
func fillBufferFor(size int64) (buf []byte, done func()) {
	if size < 0 || size >= fillBuffer {
		b := fillBuffers.Get().(*[]byte)
		return *b, func() { fillBuffers.Put(b) }
	}
	return make([]byte, max(int(size), 4<<10)), func() {}
}

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
	limit     int64 // the most the fill reads: size, or want; -1: no bound
	mediaType string
	from      string   // where the first bytes came from: fromUpstream, fromBucket, fromPeer
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
	want int64 // the size repo's manifest gave the blob (see expect), -1: none

	eager bool        // started before anyone asked: never abandoned, never remembered as a refusal
	used  atomic.Bool // an eager fill a reader joined
}

// startFill returns the fill for dgst, starting it unless one is running.
// It returns nil if the blob was committed meanwhile. A new fill takes one
// of the upstream's MaxFills slots, waiting for one at most WaitTimeout.
func (c *Cache) startFill(ctx context.Context, u Upstream, repo string, dgst digest.Digest) (f *fill, started bool, err error) {
	return c.beginFill(ctx, u, repo, dgst, false)
}

// beginFill is startFill; an eager fill takes a slot only if one is free
// and starts nothing otherwise (nil, false, nil).
func (c *Cache) beginFill(ctx context.Context, u Upstream, repo string, dgst digest.Digest, eager bool) (f *fill, started bool, err error) {
	c.mu.Lock()
	f = c.fills[dgst]
	c.mu.Unlock()
	if f != nil {
		return f, false, nil
	}
	slots := c.fillSlots[u.Name]
	switch {
	case slots != nil && eager:
		if !slots.TryAcquire(1) {
			return nil, false, nil // every slot is taken: clients first
		}
	case slots != nil:
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
	want, ok := c.sizes[blobKey(u.Name, repo, dgst.String())]
	if !ok {
		want = -1
	}
	f = &fill{dgst: dgst, ready: make(chan struct{}), wake: make(chan struct{}), refs: 1, size: -1, want: want, idle: time.Now(),
		waiting: c.metrics.waiting, passthrough: c.metrics.passthrough, src: u.Source, up: u.Name, repo: repo, eager: eager}
	// The fill outlives the request that started it, but belongs to its
	// trace.
	fctx, cancel := context.WithTimeout(trace.ContextWithSpanContext(context.Background(), trace.SpanContextFromContext(ctx)), c.fillTimeout)
	if forPeer(ctx) {
		fctx = ForPeer(fctx)
	}
	f.cancel = cancel
	c.fills[dgst] = f
	c.metrics.fills.Inc()
	c.running.Add(1)
	go func() {
		defer releaseSlot(slots)
		c.runFill(fctx, f, u, repo)
	}()
	return f, true, nil
}

// Close lets the fills in progress finish until ctx ends, then cancels the
// rest, and returns once none is running (and, if time is left, once the
// bucket has every upload): after it the store may be closed. Stop the
// jobs that read through the cache first.
func (c *Cache) Close(ctx context.Context) {
	c.stopOnce.Do(func() { close(c.stop) })
	done := make(chan struct{})
	go func() { c.running.Wait(); close(done) }()
	select {
	case <-done:
		c.store.DrainUploads(ctx)
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

// runFill copies the blob and ends the fill. The store entry is committed before
// the fill leaves c.fills, so a reader either joins it or finds the blob.
func (c *Cache) runFill(ctx context.Context, f *fill, u Upstream, repo string) {
	defer c.running.Done()
	defer f.cancel()
	ctx, span := tracer.Start(ctx, "fill", trace.WithAttributes(attribute.String("wharf.upstream", u.Name),
		attribute.String("wharf.repository", repo), attribute.String("wharf.digest", f.dgst.String()), attribute.Bool("wharf.eager", f.eager)))
	err := c.copyBlob(ctx, f, u, repo)
	span.SetAttributes(attribute.String("wharf.source", f.from))
	if err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
	}
	span.End()
	if !f.eager {
		// An eager fill's refusal is not remembered: the client's own
		// request, if it comes, asks again.
		c.remember(u, repo, blobKey(u.Name, repo, f.dgst.String()), err)
	}
	c.mu.Lock()
	delete(c.fills, f.dgst)
	if err == nil {
		delete(c.sizes, blobKey(f.up, f.repo, f.dgst.String()))
	}
	if f.eager && err == nil && !f.used.Load() {
		if len(c.eagerDone) >= maxEagerDone {
			clear(c.eagerDone)
		}
		c.eagerDone[f.dgst] = true
		c.eagerStored.Store(int64(len(c.eagerDone)))
	}
	c.mu.Unlock()
	c.metrics.fills.Dec()
	f.finish(err)
}

// maxExpected bounds the blob sizes remembered from manifests, forgotten
// all at once past it. A fill that finds none is bounded by its upstream's
// length, or, without one, by the disk and the fill timeout only.
const maxExpected = 20_000

// expect remembers the sizes a manifest of repo on upstream up gives its
// blobs (refs), until they are stored: a fill for that repository reads
// no more than that, and refuses an upstream that announces another
// length before reading a byte. By repository, as membership is: a
// manifest in one repository says nothing about the fills of another.
func (c *Cache) expect(up, repo string, refs ManifestRefs) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, d := range refs.blobs() {
		if d.Size <= 0 {
			continue // schema 1 gives no sizes
		}
		if len(c.sizes) >= maxExpected {
			clear(c.sizes)
		}
		c.sizes[blobKey(up, repo, d.Digest.String())] = d.Size
	}
}

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
