package replicate

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sync/errgroup"

	"github.com/wharf-registry/wharf/cache"
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
	// Referrers lists what refers to dgst in repo: an error (a 404) from a
	// registry without the referrers API.
	Referrers(ctx context.Context, repo string, dgst digest.Digest, artifactType string) (mediaType string, body []byte, err error)
}

// manifestNode is a manifest to push, with its exact bytes.
type manifestNode struct {
	desc ocispec.Descriptor
	body []byte
}

// promote makes sure img is cached whole and, with a push target, copies
// it there: blobs first, then child manifests, then the tagged root.
func (c *Jobs) promote(ctx context.Context, r *run, img *Image) error {
	desc, body, err := c.manifest(ctx, img, img.Reference)
	if err != nil {
		return err
	}
	r.change(img, func(img *Image) { img.Digest, img.MediaType, img.NotCopied = desc.Digest, desc.MediaType, nil })
	if r.job.Pin { // before the blobs land, so that eviction never takes them
		pin := storage.Pin{Upstream: img.Upstream, Repo: img.Repository, Ref: img.Reference, Digest: desc.Digest}
		if err := c.store.AddPin(pin); err != nil {
			return err
		}
		c.cache.PinsChanged()
	}
	p := &plan{seen: map[digest.Digest]bool{}, referred: map[digest.Digest]bool{}}
	if err := c.walk(ctx, r, img, p, desc, body, 0); err != nil {
		return err
	}
	if !r.job.SkipReferrers {
		if err := c.addReferrers(ctx, r, img, p, p.nodes, 0); err != nil {
			return err
		}
	}
	var total int64
	for _, b := range p.blobs {
		total += b.Size
	}
	r.change(img, func(img *Image) { img.BytesTotal = total })
	c.save(r, img)

	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(blobsAtOnce)
	for _, b := range p.blobs {
		g.Go(func() error { return c.transferBlob(gctx, r, img, b) })
	}
	if err := g.Wait(); err != nil {
		return err
	}
	if err := c.pushManifests(ctx, r, img, p.nodes); err != nil {
		return err
	}
	return c.pushReferrers(ctx, r, img, p.referrers)
}

// blobsAtOnce is how many blobs of one image a job copies at once.
const blobsAtOnce = 4

// plan is what an image is made of: its manifests, children before their
// index, and its distinct blobs.
type plan struct {
	nodes     []manifestNode
	blobs     []ocispec.Descriptor
	seen      map[digest.Digest]bool
	referrers []referrer             // artifacts referring to the image's manifests, pushed after them
	referred  map[digest.Digest]bool // referrers already in the plan
}

// manifest fetches ref of img through the cache, retrying transient
// failures.
func (c *Jobs) manifest(ctx context.Context, img *Image, ref string) (desc ocispec.Descriptor, body []byte, err error) {
	err = c.retry(ctx, func() (err error) {
		desc, body, err = c.cache.Manifest(ctx, img.Upstream, img.Repository, ref)
		return err
	})
	if err != nil && ref != img.Reference {
		return desc, nil, fmt.Errorf("manifest %s (in %s): %w", ref, img.Source, err)
	}
	if err != nil {
		return desc, nil, fmt.Errorf("manifest %s: %w", img.Source, err)
	}
	return desc, body, nil
}

// walk adds a manifest, and for an index the children the platform filter
// lets through, to p; the children it leaves out are noted on img.
func (c *Jobs) walk(ctx context.Context, r *run, img *Image, p *plan, desc ocispec.Descriptor, body []byte, depth int) error {
	m := cache.ParseManifest(body, desc.MediaType)
	for _, child := range m.Manifests {
		if !wanted(r.platforms, child.Platform) {
			sc := SkippedChild{Digest: child.Digest, Platform: platformString(child.Platform)}
			r.change(img, func(img *Image) { img.NotCopied = append(img.NotCopied, sc) })
			continue
		}
		if depth >= cache.MaxIndexDepth {
			return fmt.Errorf("%w: indexes nested deeper than %d", cache.ErrBadUpstream, cache.MaxIndexDepth)
		}
		cdesc, cbody, err := c.manifest(ctx, img, child.Digest.String())
		if err != nil {
			return err
		}
		if err := c.walk(ctx, r, img, p, cdesc, cbody, depth+1); err != nil {
			return err
		}
	}
	var refs []ocispec.Descriptor
	if m.Config != nil {
		refs = append(refs, *m.Config)
	}
	for _, b := range append(append(refs, m.Layers...), m.Blobs...) {
		if p.seen[b.Digest] || b.Digest.Validate() != nil || len(b.URLs) > 0 {
			continue // foreign layers live elsewhere; they are not copied
		}
		p.seen[b.Digest] = true
		p.blobs = append(p.blobs, b)
	}
	p.nodes = append(p.nodes, manifestNode{desc: desc, body: body})
	return nil
}

// pushManifests puts the image's manifests on the target, children first
// and the root, under its tag, last: the target never holds a tag whose
// content is missing. Manifests already there are not sent again.
func (c *Jobs) pushManifests(ctx context.Context, r *run, img *Image, nodes []manifestNode) error {
	if r.job.PushTo == "" {
		return nil
	}
	t := c.targets[r.job.PushTo]
	if r.job.FilterIndex {
		nodes = filterIndexes(r, img, nodes)
	}
	for i, n := range nodes {
		ref := n.desc.Digest.String()
		if i == len(nodes)-1 {
			ref = cmp.Or(img.Tag, img.Reference)
		}
		if err := c.pushManifest(ctx, t, img.TargetRepo, ref, n); err != nil {
			err = fmt.Errorf("push manifest %s: %w", targetRef(img.TargetRepo, ref), explain(err, r.job.PushTo, img.TargetRepo, ref))
			var skipped int
			r.change(img, func(img *Image) { skipped = len(img.NotCopied) })
			if s := cache.Status(err); skipped > 0 && s >= 400 && s < 500 && !r.job.FilterIndex {
				err = fmt.Errorf("%w (the index lists %d children left out by the platform filter; this target wants every child of an index present: ask for \"index\": \"filter\")", err, skipped)
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
func (c *Jobs) retry(ctx context.Context, fn func() error) error {
	wait := c.retryBackoff
	for attempt := 1; ; attempt++ {
		err := fn()
		if err == nil || attempt == retryAttempts || !cache.Transient(err) || ctx.Err() != nil {
			return err
		}
		d := wait
		var ra cache.RetryAfterer
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
