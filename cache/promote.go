package cache

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sync/errgroup"

	"github.com/wharf-registry/wharf/storage"
)

// Target is a registry prefetch jobs push to; upstream.Client is one.
// Errors may implement StatusCode() int like a Source's.
type Target interface {
	// StatBlob succeeds if repo holds dgst; a 404 error if it does not.
	StatBlob(ctx context.Context, repo string, dgst digest.Digest) (ocispec.Descriptor, error)
	// Manifest with head set tells what ref resolves to in repo.
	Manifest(ctx context.Context, repo, ref string, head bool) (ocispec.Descriptor, io.ReadCloser, error)
	// PushBlob mounts desc from repository from (if not "") or uploads it
	// from open(offset).
	PushBlob(ctx context.Context, repo string, desc ocispec.Descriptor, from string, open func(offset int64) (io.ReadCloser, error)) (mounted bool, err error)
	// PushManifest puts body under ref (a tag or its digest).
	PushManifest(ctx context.Context, repo, ref, mediaType string, body []byte) error
}

// Platform selects the children of an index a job copies.
type Platform struct{ OS, Architecture, Variant string }

// ParsePlatform reads "os/arch" or "os/arch/variant".
func ParsePlatform(s string) (Platform, error) {
	parts := strings.Split(s, "/")
	if len(parts) < 2 || len(parts) > 3 || parts[0] == "" || parts[1] == "" {
		return Platform{}, fmt.Errorf("platform %q: want os/arch or os/arch/variant", s)
	}
	p := Platform{OS: parts[0], Architecture: parts[1]}
	if len(parts) == 3 {
		p.Variant = parts[2]
	}
	return p, nil
}

func (p Platform) String() string {
	if p.Variant != "" {
		return p.OS + "/" + p.Architecture + "/" + p.Variant
	}
	return p.OS + "/" + p.Architecture
}

func parsePlatforms(ss []string) []Platform {
	var ps []Platform
	for _, s := range ss {
		if p, err := ParsePlatform(s); err == nil {
			ps = append(ps, p)
		}
	}
	return ps
}

// wanted reports whether a child of an index is copied: every child
// without a filter, else one whose platform matches an entry (an entry
// without a variant matches every variant).
func wanted(filter []Platform, p *ocispec.Platform) bool {
	if len(filter) == 0 {
		return true
	}
	if p == nil {
		return false
	}
	for _, f := range filter {
		if f.OS == p.OS && f.Architecture == p.Architecture && (f.Variant == "" || f.Variant == p.Variant) {
			return true
		}
	}
	return false
}

// maxDepth bounds how deep indexes may nest in one image.
const maxDepth = 4

// manifestNode is a manifest to push, with its exact bytes.
type manifestNode struct {
	desc ocispec.Descriptor
	body []byte
}

// promote makes sure img is cached whole and, with a push target, copies
// it there: blobs first, then child manifests, then the tagged root.
func (c *Cache) promote(ctx context.Context, r *run, img *Image) error {
	var desc ocispec.Descriptor
	var body []byte
	err := c.retry(ctx, func() (err error) {
		desc, body, err = c.Manifest(ctx, img.Upstream, img.Repository, img.Reference)
		return err
	})
	if err != nil {
		return fmt.Errorf("manifest %s: %w", img.Source, err)
	}
	r.update(func(*Job) { img.Digest, img.MediaType, img.NotCopied = desc.Digest, desc.MediaType, nil })
	if r.job.Pin { // before the blobs land, so that eviction never takes them
		pin := storage.Pin{Upstream: img.Upstream, Repo: img.Repository, Ref: img.Reference, Digest: desc.Digest}
		if err := c.store.AddPin(pin); err != nil {
			return err
		}
	}

	var nodes []manifestNode
	var blobs []ocispec.Descriptor
	seen := map[digest.Digest]bool{}
	var walk func(desc ocispec.Descriptor, body []byte, depth int) error
	walk = func(desc ocispec.Descriptor, body []byte, depth int) error {
		m := parseManifest(body)
		for _, child := range m.Manifests {
			if !wanted(r.platforms, child.Platform) {
				sc := SkippedChild{Digest: child.Digest}
				if child.Platform != nil {
					sc.Platform = Platform{child.Platform.OS, child.Platform.Architecture, child.Platform.Variant}.String()
				}
				r.update(func(*Job) { img.NotCopied = append(img.NotCopied, sc) })
				continue
			}
			if depth >= maxDepth {
				return fmt.Errorf("%w: indexes nested deeper than %d", ErrBadUpstream, maxDepth)
			}
			var cdesc ocispec.Descriptor
			var cbody []byte
			err := c.retry(ctx, func() (err error) {
				cdesc, cbody, err = c.Manifest(ctx, img.Upstream, img.Repository, child.Digest.String())
				return err
			})
			if err != nil {
				return fmt.Errorf("manifest %s: %w", child.Digest, err)
			}
			if err := walk(cdesc, cbody, depth+1); err != nil {
				return err
			}
		}
		var refs []ocispec.Descriptor
		if m.Config != nil {
			refs = append(refs, *m.Config)
		}
		for _, b := range append(append(refs, m.Layers...), m.Blobs...) {
			if seen[b.Digest] || b.Digest.Validate() != nil || len(b.URLs) > 0 {
				continue // foreign layers live elsewhere; they are not copied
			}
			seen[b.Digest] = true
			blobs = append(blobs, b)
		}
		nodes = append(nodes, manifestNode{desc: desc, body: body})
		return nil
	}
	if err := walk(desc, body, 0); err != nil {
		return err
	}
	var total int64
	for _, b := range blobs {
		total += b.Size
	}
	r.update(func(*Job) { img.BytesTotal = total })
	c.save(r)

	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(c.jobBlobs)
	for _, b := range blobs {
		g.Go(func() error { return c.transferBlob(gctx, r, img, b) })
	}
	if err := g.Wait(); err != nil {
		return err
	}
	return c.pushManifests(ctx, r, img, nodes)
}

// transferBlob makes sure one blob is cached and, with a target, on the
// target: skipped if there, mounted if the target holds it elsewhere,
// uploaded from the cache otherwise (which fills it once on a miss).
func (c *Cache) transferBlob(ctx context.Context, r *run, img *Image, b ocispec.Descriptor) error {
	_, err := c.store.Blob(b.Digest)
	cached := err == nil
	if cached {
		r.update(func(*Job) { img.BytesCached += b.Size })
	}
	var count sync.Once
	fetched := func() { // from upstream, by this job or a client since it looked
		if !cached {
			count.Do(func() { r.update(func(*Job) { img.BytesFetched += b.Size }) })
		}
	}
	var progress atomic.Int64
	open := func(offset int64) (io.ReadCloser, error) {
		blob, err := c.Blob(ctx, img.Upstream, img.Repository, b.Digest)
		if err != nil {
			return nil, err
		}
		if _, err := blob.Seek(offset, io.SeekStart); err != nil {
			blob.Close()
			return nil, err
		}
		return &countingReader{rc: blob, n: func(n int) {
			progress.Add(int64(n))
			r.update(func(*Job) { img.BytesDone += int64(n) })
		}}, nil
	}
	// warm reads a blob that is not stored through the fill path.
	warm := func() error {
		if _, err := c.store.Blob(b.Digest); err == nil {
			fetched()
			r.update(func(*Job) { img.BytesDone += b.Size })
			return nil
		}
		err := c.retry(ctx, func() error {
			progress.Store(0)
			rc, err := open(0)
			if err != nil {
				return err
			}
			defer rc.Close()
			_, err = io.Copy(io.Discard, rc)
			if err != nil {
				r.update(func(*Job) { img.BytesDone -= progress.Load() })
			}
			return err
		})
		if err != nil {
			return fmt.Errorf("blob %s: %w", b.Digest, err)
		}
		fetched()
		return nil
	}
	if r.job.PushTo == "" {
		return warm()
	}
	t := c.targets[r.job.PushTo]
	l := r.lock(b.Digest)
	l.Lock()
	defer l.Unlock()
	var outcome string
	err = c.retry(ctx, func() error {
		progress.Store(0)
		_, err := t.StatBlob(ctx, img.TargetRepo, b.Digest)
		if err == nil {
			outcome = "skipped"
			return nil
		}
		if status(err) != http.StatusNotFound {
			return fmt.Errorf("check target: %w", err)
		}
		from := c.store.PushedTo(r.job.PushTo, b.Digest)
		if from == img.TargetRepo {
			from = ""
		}
		mounted, err := t.PushBlob(ctx, img.TargetRepo, b, from, open)
		if err != nil {
			r.update(func(*Job) { img.BytesDone -= progress.Load() })
			return err
		}
		outcome = "pushed"
		if mounted {
			outcome = "mounted"
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("push blob %s: %w", b.Digest, err)
	}
	if err := c.store.SetPushedTo(r.job.PushTo, b.Digest, img.TargetRepo); err != nil {
		return err
	}
	c.metrics.pushed.WithLabelValues(r.job.PushTo, outcome).Inc()
	if outcome == "pushed" {
		c.metrics.pushedBytes.WithLabelValues(r.job.PushTo).Add(float64(b.Size))
	}
	r.update(func(*Job) {
		switch outcome {
		case "skipped":
			img.BlobsSkipped++
		case "mounted":
			img.BlobsMounted++
		default:
			img.BlobsPushed++
			img.BytesPushed += b.Size
		}
	})
	if outcome == "pushed" {
		fetched()
		return nil
	}
	return warm()
}

// pushManifests puts the image's manifests on the target, children first
// and the root, under its tag, last: the target never holds a tag whose
// content is missing. Manifests already there are not sent again.
func (c *Cache) pushManifests(ctx context.Context, r *run, img *Image, nodes []manifestNode) error {
	if r.job.PushTo == "" {
		return nil
	}
	t := c.targets[r.job.PushTo]
	for i, n := range nodes {
		ref := n.desc.Digest.String()
		if i == len(nodes)-1 {
			ref = cmp.Or(img.Tag, img.Reference)
		}
		err := c.retry(ctx, func() error {
			if have, _, err := t.Manifest(ctx, img.TargetRepo, ref, true); err == nil && have.Digest == n.desc.Digest {
				return nil
			}
			return t.PushManifest(ctx, img.TargetRepo, ref, n.desc.MediaType, n.body)
		})
		if err != nil {
			err = fmt.Errorf("push manifest %s: %w", targetRef(img.TargetRepo, ref), err)
			var skipped int
			r.update(func(*Job) { skipped = len(img.NotCopied) })
			if s := status(err); skipped > 0 && s >= 400 && s < 500 {
				err = fmt.Errorf("%w (the index lists %d children left out by the platform filter; this target wants every child of an index present)", err, skipped)
			}
			return err
		}
	}
	return nil
}

// Retrying transient failures: attempts in all, and the first back-off,
// doubled each time (or what a 429 or 503 asks for, up to maxRetryWait).
const (
	retryAttempts = 4
	maxRetryWait  = 30 * time.Second
)

// retry runs fn until it succeeds, fails for good, or runs out of attempts.
func (c *Cache) retry(ctx context.Context, fn func() error) error {
	wait := c.retryBackoff
	for attempt := 1; ; attempt++ {
		err := fn()
		if err == nil || attempt == retryAttempts || !transient(err) || ctx.Err() != nil {
			return err
		}
		d := wait
		var ra interface{ RetryAfter() time.Duration }
		if errors.As(err, &ra) && ra.RetryAfter() > 0 {
			d = min(ra.RetryAfter(), maxRetryWait)
		}
		t := time.NewTimer(d)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return err
		}
		wait *= 2
	}
}

// transient: a registry that did not answer, timed out, limited the rate or
// failed on its side. "Not found", "denied" and bad content are final.
func transient(err error) bool {
	switch {
	case errors.Is(err, context.Canceled), errors.Is(err, ErrNotFound), errors.Is(err, ErrDenied), errors.Is(err, ErrBadUpstream):
		return false
	case errors.Is(err, ErrUnavailable):
		return true
	}
	var sc interface{ StatusCode() int }
	if !errors.As(err, &sc) {
		return false // not a registry's answer: a local failure
	}
	s := sc.StatusCode()
	return s == 0 || s == http.StatusRequestTimeout || s == http.StatusTooManyRequests || s >= 500
}

func status(err error) int {
	var sc interface{ StatusCode() int }
	if errors.As(err, &sc) {
		return sc.StatusCode()
	}
	return 0
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
