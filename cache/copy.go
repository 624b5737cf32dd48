package cache

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/wharf-registry/wharf/storage"
)

// Copying one blob into the store: open where its bytes come from, copy
// them (resuming a broken connection), verify, commit.

// Resuming a broken fill: how often in all, how many attempts in a row may
// bring nothing (so a dead upstream is given up on quickly), and the first
// back-off, doubled each time.
const (
	maxResumes    = 5
	maxStalls     = 2
	resumeBackoff = 100 * time.Millisecond
)

// blobMediaType is the type a fill records a blob under: it is what it
// is whatever manifest names it.
const blobMediaType = "application/octet-stream"

// errStore marks a failure of the local disk rather than of upstream.
var errStore = errors.New("store")

// fillSource is where a fill reads from, and what it has read.
type fillSource struct {
	open   blobOpener      // from an offset on; records each source it opened
	read   map[string]bool // every source a read opened: fromUpstream, fromBucket, fromPeer
	bucket []string        // the bucket's record of the blob's sources, when read from it
}

// only reports whether every read opened came from one source.
func (s *fillSource) only(from string) bool { return len(s.read) == 1 && s.read[from] }

// copyBlob fills f: the temporary file, the first bytes (the fill's
// readers may start), every byte, then the verified blob into the store.
func (c *Cache) copyBlob(ctx context.Context, f *fill, u Upstream, repo string) error {
	if c.store.Full() {
		// Nowhere to put it: every reader goes straight to upstream,
		// and eviction makes room if the store may.
		c.metrics.failed.WithLabelValues("storage").Inc()
		c.maybeEvict()
		return fmt.Errorf("%w: %w", errStore, storage.ErrNoSpace)
	}
	src, err := c.fillSource(ctx, u, repo, f.dgst)
	if err != nil {
		return err
	}
	// The temporary file before the request: it is made while upstream
	// takes its round trips, not when the bytes arrive, which is when an
	// image's fills all land at once and compete for the CPU.
	w, err := c.store.Create(f.dgst, "")
	if err != nil {
		c.metrics.failed.WithLabelValues("storage").Inc()
		c.maybeEvict()
		return fmt.Errorf("%w: %w", errStore, err)
	}
	defer w.Cancel()
	rc, from, err := c.firstBytes(ctx, f, w, src)
	if err != nil {
		return err
	}
	err = c.copyResuming(ctx, f, w, rc, from, u.Name, src.open)
	return c.finishFill(f, u, repo, w, src, err)
}

// fillSource opens where dgst's bytes come from (see blobSource), with a
// stall bound on the bucket's and peers' bodies (upstream's transport
// bounds its own silences, idle_timeout).
func (c *Cache) fillSource(ctx context.Context, u Upstream, repo string, dgst digest.Digest) (*fillSource, error) {
	source, bucket, err := c.blobSource(ctx, u, repo, dgst)
	if err != nil {
		return nil, err
	}
	s := &fillSource{read: map[string]bool{}, bucket: bucket}
	s.open = func(ctx context.Context, offset int64) (io.ReadCloser, int64, string, error) {
		rc, size, from, err := source(ctx, offset)
		if err != nil {
			return nil, 0, from, err
		}
		s.read[from] = true
		if from != fromUpstream {
			rc = stallGuard(rc, c.stallTimeout)
		}
		return rc, size, from, nil
	}
	return s, nil
}

// firstBytes opens the blob from its start and tells the fill's readers
// its size and file: they may follow it from now on. An upstream whose
// length contradicts the one the repository's manifest gave is refused
// before a byte is read.
func (c *Cache) firstBytes(ctx context.Context, f *fill, w *storage.Writer, src *fillSource) (io.ReadCloser, string, error) {
	file, err := os.Open(w.Name())
	if err != nil {
		c.metrics.failed.WithLabelValues("storage").Inc()
		return nil, "", fmt.Errorf("%w: %w", errStore, err)
	}
	rc, size, from, err := src.open(ctx, 0)
	if err != nil {
		file.Close()
		c.metrics.failed.WithLabelValues("upstream").Inc()
		return nil, "", classify(err)
	}
	f.limit = size
	// Upstream's bodies only: the bucket's and peers' hold what a replica
	// verified, and a corrupt object there fails the digest and is dropped.
	if f.want >= 0 && from == fromUpstream {
		if size >= 0 && size != f.want {
			rc.Close()
			file.Close()
			c.metrics.failed.WithLabelValues("digest").Inc()
			return nil, "", fmt.Errorf("%w: blob %s: upstream sends %d bytes, its manifest says %d", ErrBadUpstream, f.dgst, size, f.want)
		}
		f.limit = f.want // no length given: the manifest's bounds what is read
	}
	f.size, f.mediaType, f.from = size, blobMediaType, from
	f.file = file
	close(f.ready)
	return rc, from, nil
}

// finishFill ends a fill whose copy ended with err: records whose bytes
// these are and that repo holds them, then verifies and commits them, or
// says why not.
func (c *Cache) finishFill(f *fill, u Upstream, repo string, w *storage.Writer, src *fillSource, err error) error {
	if src.only(fromBucket) || src.only(fromPeer) {
		w.InRemote() // there already, or the owner uploads it: a second PUT of the same bytes is waste
	}
	// Whose bytes these are: the bucket's sources, and u when it (or the
	// owner, from it) sent any: the whole still has to verify.
	w.From(src.bucket...)
	if !src.only(fromBucket) {
		w.From(u.Name)
		// Upstream (or the owner, from upstream) showed that repo holds
		// the blob. Recorded now, not before the first byte: an index
		// write costs its readers milliseconds.
		c.unstored("index", c.store.AddMembers(u.Name, repo, f.dgst), "repository", repo, "digest", f.dgst)
	}
	switch {
	case errors.Is(err, errStore):
		c.metrics.failed.WithLabelValues("storage").Inc()
		c.log.Error("cannot store blob; its clients go on from upstream", "digest", f.dgst, "error", err)
		c.maybeEvict() // a full filesystem: make room if the store may
		return err
	case err != nil && f.dropped.Load():
		c.metrics.failed.WithLabelValues("abandoned").Inc()
		return fmt.Errorf("%w: blob %s: fill cancelled, nobody read it", ErrUnavailable, f.dgst)
	case err != nil:
		c.metrics.failed.WithLabelValues("upstream").Inc()
		return fmt.Errorf("%w: blob %s: %w", ErrUnavailable, f.dgst, err)
	}
	if err := w.Verify(f.size); err != nil {
		c.metrics.failed.WithLabelValues("digest").Inc()
		if src.read[fromBucket] {
			c.dropFromBucket(f.dgst, err)
		}
		return fmt.Errorf("%w: %w", ErrBadUpstream, err)
	}
	f.verify()
	if err := w.Commit(f.size); err != nil {
		// Every byte verified and stays readable through the open temporary
		// file: the readers finish, only the store misses out.
		c.metrics.failed.WithLabelValues("storage").Inc()
		c.log.Error("verified blob not stored; its readers are served", "digest", f.dgst, "error", err)
		return nil
	}
	c.maybeEvict()
	return nil
}

// copyResuming copies rc (its bytes coming from from) into w, and when the
// connection breaks asks the opener for the rest, keeping what landed:
// maxResumes times at most, maxStalls in a row that bring nothing.
func (c *Cache) copyResuming(ctx context.Context, f *fill, w *storage.Writer, rc io.ReadCloser, from, up string, open blobOpener) error {
	buf, done := fillBufferFor(f.size)
	defer done()
	stalls := 0 // attempts in a row that added nothing
	var err error
	for attempt := 1; ; attempt++ {
		before := w.Size()
		err = c.copyBody(f, w, rc, buf, c.byteCounters(from, up))
		rc.Close()
		if w.Size() == before {
			stalls++
		} else {
			stalls = 0
		}
		if err == nil || errors.Is(err, errStore) || attempt > maxResumes || stalls >= maxStalls {
			return err
		}
		t := time.NewTimer(resumeBackoff << (attempt - 1))
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		}
		rc, _, from, err = open(ctx, w.Size())
		if err != nil {
			if !errors.Is(classify(err), ErrUnavailable) {
				return err
			}
			rc = io.NopCloser(failedRead{err})
			continue
		}
		c.metrics.resumed.Inc()
	}
}

// byteCounters are the counters a fill's bytes from from add to: where
// they came from, and what upstream up sent.
func (c *Cache) byteCounters(from, up string) []prometheus.Counter {
	counters := []prometheus.Counter{c.metrics.filled.WithLabelValues(from)}
	if from == fromUpstream {
		counters = append(counters, c.metrics.fetched.WithLabelValues(up))
	}
	return counters
}

// copyBody appends rc to the blob until EOF (nil) or an error, or until
// f.limit: bytes past the blob's length are not the blob's.
func (c *Cache) copyBody(f *fill, w *storage.Writer, rc io.Reader, buf []byte, counters []prometheus.Counter) error {
	for {
		p := buf
		if f.limit >= 0 {
			// One byte past the length: a body that ends there is read
			// to its EOF, so that its connection is reused.
			p = buf[:min(int64(len(buf)), f.limit-w.Size()+1)]
		}
		n, rerr := rc.Read(p)
		over := f.limit >= 0 && w.Size()+int64(n) > f.limit
		if over {
			n = int(f.limit - w.Size())
		}
		if n > 0 {
			if _, err := w.Write(buf[:n]); err != nil {
				return fmt.Errorf("%w: %w", errStore, err)
			}
			for _, m := range counters {
				m.Add(float64(n))
			}
			f.progress(int64(n))
		}
		if over || rerr == io.EOF {
			return nil
		}
		if rerr != nil {
			return rerr
		}
	}
}

// failedRead is a body whose every read fails with err: what a resume that
// could not open leaves copyResuming to count as an attempt.
type failedRead struct{ err error }

func (e failedRead) Read([]byte) (int, error) { return 0, e.err }
