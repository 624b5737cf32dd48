package replicate

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"strings"
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
// it there: blobs first, then child manifests, then the tagged root. A
// source tag that moved while the image was copied is copied again as it
// is now (a few times at most): a target never gets an older digest than
// the source's tag resolves to when its root is pushed.
func (c *Jobs) promote(ctx context.Context, r *run, img *Image) error {
	ref := img.Reference
	for attempt := 1; ; attempt++ {
		err := c.promoteOnce(ctx, r, img, ref)
		var moved *tagMoved
		if !errors.As(err, &moved) {
			return err
		}
		if attempt == maxTagMoves {
			return fmt.Errorf("%s moved on the source %d times while this job copied it; the next run takes it", img.Source, attempt)
		}
		c.log.Info("a source tag moved while a job copied it; copying what it resolves to now", "job", r.job.ID, "image", img.Source, "was", moved.was, "now", moved.now)
		ref = moved.now.String()
	}
}

// maxTagMoves bounds the copies of one image whose source tag keeps moving.
const maxTagMoves = 3

// tagMoved says the source's tag resolves to another digest than the one
// a job copied.
type tagMoved struct{ was, now digest.Digest }

func (e *tagMoved) Error() string {
	return "the source tag moved from " + e.was.String() + " to " + e.now.String()
}

// sourceTag is the source tag a rule's job pushes img's root under: a
// rule keeps a target's tag in step with the source's, so the tag must not
// go back to what it was when the run began. "" for other jobs, which push
// what they were asked for as it resolved when they began.
func sourceTag(r *run, img *Image) string {
	if r.job.Rule == "" {
		return ""
	}
	if _, isDigest, _ := parseDigestRef(img.Reference); !isDigest {
		return img.Reference
	}
	return img.Tag
}

func parseDigestRef(ref string) (digest.Digest, bool, error) {
	if !strings.Contains(ref, ":") {
		return "", false, nil
	}
	d, err := digest.Parse(ref)
	return d, true, err
}

// promoteOnce is promote of the source's ref.
func (c *Jobs) promoteOnce(ctx context.Context, r *run, img *Image, ref string) error {
	desc, body, err := c.manifest(ctx, img, ref)
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
	t := r.job.PushTo
	if r.job.FilterIndex {
		nodes = filterIndexes(r, img, nodes)
	}
	for i, n := range nodes {
		ref := n.desc.Digest.String()
		push := c.pushManifest
		if i == len(nodes)-1 {
			ref = cmp.Or(img.Tag, img.Reference)
			push = func(ctx context.Context, t string, repo, ref string, n manifestNode) error {
				return c.pushRoot(ctx, r, t, img, ref, n)
			}
		}
		if err := push(ctx, t, img.TargetRepo, ref, n); err != nil {
			var moved *tagMoved
			if errors.As(err, &moved) {
				return err
			}
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

// pushRoot puts an image's root under its tag on the target, once the
// source's tag is seen to resolve to what the job copied: asked of the
// source now, whatever tag_ttl says, while no other job of this replica
// pushes the same target tag (a rule's jobs all run on its owner). A tag
// that moved is a *tagMoved, and nothing is pushed. A source that cannot
// be asked does not stop the push: what the job copied is the newest
// known.
func (c *Jobs) pushRoot(ctx context.Context, r *run, t string, img *Image, ref string, n manifestNode) error {
	tag := sourceTag(r, img)
	if tag == "" {
		return c.pushManifest(ctx, t, img.TargetRepo, ref, n)
	}
	mu := &c.tagLocks[tagLock(r.job.PushTo+"\x00"+img.TargetRepo+":"+ref)]
	mu.Lock()
	defer mu.Unlock()
	now, err := c.cache.Resolve(ctx, img.Upstream, img.Repository, tag)
	switch {
	case err != nil:
		c.log.Warn("could not ask the source what a tag resolves to before pushing it; pushing what the job copied", "job", r.job.ID, "image", img.Source, "error", err)
	case now != "" && now != img.Digest:
		return &tagMoved{was: img.Digest, now: now}
	}
	return c.pushManifest(ctx, t, img.TargetRepo, ref, n)
}

// tagLock spreads target tags over Jobs.tagLocks.
func tagLock(key string) int {
	h := fnv.New32a()
	h.Write([]byte(key))
	return int(h.Sum32() % 64)
}

// Retrying transient failures: attempts in all, and the first back-off,
// doubled each time (or what a 429 or 503 asks for, up to maxRetryWait).
const (
	retryAttempts = 4
	maxRetryWait  = 30 * time.Second
)

// defaultRetryFor is how long a push rides out a target that is
// unavailable, unless its retry_for says otherwise.
const defaultRetryFor = 10 * time.Minute

// retryTarget is retry for a call to push target target: a target that is
// unavailable (refused, timed out, 5xx, 429, its circuit open) is asked
// again, the pause doubling up to 30 s (or what it asks for, its circuit's
// wait included), until it answers or has been unavailable for its
// retry_for: an outage of minutes, a restart, a breaker that opened, fail
// no image. What the target refuses for good fails at once.
func (c *Jobs) retryTarget(ctx context.Context, target string, fn func() error) error {
	limit, ok := c.retryFor[target]
	if !ok {
		limit = defaultRetryFor
	}
	start, wait := time.Now(), c.retryBackoff // the wall clock: an outage is real time
	var last error                            // the target's last answer: an open circuit is none
	for {
		err := fn()
		if err == nil || !cache.Transient(err) || ctx.Err() != nil {
			return err
		}
		var co interface{ CircuitOpen() bool }
		if last == nil || !errors.As(err, &co) || !co.CircuitOpen() {
			last = err
		}
		left := limit - time.Since(start)
		if left <= 0 {
			return fmt.Errorf("target %s was unavailable for %s (its retry_for): %w", target, limit, last)
		}
		d := wait
		var ra cache.RetryAfterer
		if errors.As(err, &ra) && ra.RetryAfter() > 0 {
			d = min(ra.RetryAfter(), maxRetryWait)
		}
		t := time.NewTimer(min(d, left))
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return err
		}
		wait = min(wait*2, maxRetryWait)
	}
}

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
