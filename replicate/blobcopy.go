package replicate

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"net/http"
	"sync"
	"sync/atomic"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/wharf-registry/wharf/cache"
)

// pushOutcome is what became of a blob on the target, as
// wharf_push_blobs_total's outcome says.
type pushOutcome string

const (
	pushed  pushOutcome = "pushed"  // uploaded
	mounted pushOutcome = "mounted" // from another repository of the target
	skipped pushOutcome = "skipped" // there already
)

// blobCopy is one blob of one image of a job on its way.
type blobCopy struct {
	c        *Jobs
	r        *run
	img      *Image
	desc     ocispec.Descriptor
	cached   bool         // stored when the job came to it
	counted  sync.Once    // fetched bytes are counted once
	progress atomic.Int64 // bytes read in the current attempt
}

// transferBlob makes sure one blob is cached and, with a target, on the
// target: skipped if there, mounted if the target holds it elsewhere,
// uploaded from the cache otherwise (which fills it once on a miss).
func (c *Jobs) transferBlob(ctx context.Context, r *run, img *Image, desc ocispec.Descriptor) error {
	select {
	case c.transfers <- struct{}{}:
		defer func() { <-c.transfers }()
	case <-ctx.Done():
		return ctx.Err()
	}
	_, err := c.store.Blob(desc.Digest)
	bc := &blobCopy{c: c, r: r, img: img, desc: desc, cached: err == nil}
	if bc.cached {
		r.change(img, func(img *Image) { img.BytesCached += desc.Size })
	}
	if r.job.PushTo == "" {
		return bc.warm(ctx)
	}
	l := r.lock(desc.Digest)
	l.Lock()
	defer l.Unlock()
	outcome := skipped
	if !r.seenOnTarget(img.TargetRepo, desc.Digest) {
		if outcome, err = bc.push(ctx); err != nil {
			return fmt.Errorf("push blob %s: %w", desc.Digest, explain(err, r.job.PushTo, img.TargetRepo, cmp.Or(img.Tag, img.Reference)))
		}
		if err := c.store.SetPushedTo(r.job.PushTo, desc.Digest, img.TargetRepo); err != nil {
			return err
		}
		r.sawOnTarget(img.TargetRepo, desc.Digest)
	}
	c.metrics.pushed.WithLabelValues(r.job.PushTo, string(outcome)).Inc()
	r.change(img, func(img *Image) {
		switch outcome {
		case skipped:
			img.BlobsSkipped++
		case mounted:
			img.BlobsMounted++
		default:
			img.BlobsPushed++
			img.BytesPushed += desc.Size
		}
	})
	if outcome == pushed {
		c.metrics.pushedBytes.WithLabelValues(r.job.PushTo).Add(float64(desc.Size))
		bc.fetched()
		return nil
	}
	return bc.warm(ctx) // on the target already; the cache wants it too
}

// fetched counts the blob as read from upstream (by this job, or by a
// client since the job looked) unless it was cached to begin with.
func (bc *blobCopy) fetched() {
	if !bc.cached {
		bc.counted.Do(func() { bc.r.change(bc.img, func(img *Image) { img.BytesFetched += bc.desc.Size }) })
	}
}

// open reads the blob through the cache from offset on, counting progress.
func (bc *blobCopy) open(ctx context.Context, offset int64) (io.ReadCloser, error) {
	blob, err := bc.c.cache.Blob(ctx, bc.img.Upstream, bc.img.Repository, bc.desc.Digest)
	if err != nil {
		return nil, err
	}
	if _, err := blob.Seek(offset, io.SeekStart); err != nil {
		blob.Close()
		return nil, err
	}
	return &countingReader{rc: blob, n: func(n int) {
		bc.progress.Add(int64(n))
		bc.r.change(bc.img, func(img *Image) { img.BytesDone += int64(n) })
	}}, nil
}

// undo takes a failed attempt's bytes back out of the progress.
func (bc *blobCopy) undo() {
	n := bc.progress.Swap(0)
	bc.r.change(bc.img, func(img *Image) { img.BytesDone -= n })
}

// warm makes sure the blob is stored, reading it through the fill path if
// it is not.
func (bc *blobCopy) warm(ctx context.Context) error {
	if _, err := bc.c.store.Blob(bc.desc.Digest); err == nil {
		bc.fetched()
		bc.r.change(bc.img, func(img *Image) { img.BytesDone += bc.desc.Size })
		return nil
	}
	err := bc.c.retry(ctx, func() error {
		rc, err := bc.open(ctx, 0)
		if err != nil {
			return err
		}
		defer rc.Close()
		if _, err = io.Copy(io.Discard, rc); err != nil {
			bc.undo()
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("blob %s: %w", bc.desc.Digest, err)
	}
	bc.fetched()
	return nil
}

// push puts the blob on the target and says how: skipped, mounted or
// pushed.
func (bc *blobCopy) push(ctx context.Context) (outcome pushOutcome, err error) {
	target, repo := bc.r.job.PushTo, bc.img.TargetRepo
	t := bc.c.targets[target]
	err = bc.c.retryTarget(ctx, target, func() error {
		bc.progress.Store(0)
		_, err := t.StatBlob(ctx, repo, bc.desc.Digest)
		if err == nil {
			outcome = skipped
			return nil
		}
		if cache.Status(err) != http.StatusNotFound {
			return fmt.Errorf("check target: %w", err)
		}
		from := bc.c.store.PushedTo(target, bc.desc.Digest)
		if from == repo {
			from = ""
		}
		open := func(offset int64) (io.ReadCloser, error) { return bc.open(ctx, offset) }
		wasMounted, err := t.PushBlob(ctx, repo, bc.desc, from, open)
		if err != nil {
			bc.undo()
			return err
		}
		outcome = pushed
		if wasMounted {
			outcome = mounted
		}
		return nil
	})
	return outcome, err
}

type countingReader struct {
	rc io.ReadCloser
	n  func(int)
}

func (r *countingReader) Read(p []byte) (int, error) {
	n, err := r.rc.Read(p)
	if n > 0 {
		r.n(n)
	}
	return n, err
}

func (r *countingReader) Close() error { return r.rc.Close() }
