package cache

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/wharf-registry/wharf/storage"
)

// StatBlob describes blob dgst of repo without transferring it. A blob that
// is neither stored nor being filled is asked about upstream with a HEAD.
func (c *Cache) StatBlob(ctx context.Context, up, repo string, dgst digest.Digest) (ocispec.Descriptor, error) {
	u, err := c.upstream(up)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	if bi, err := c.store.Blob(dgst); err == nil {
		if err := c.holdsBlob(ctx, u, repo, dgst, bi); err != nil {
			return ocispec.Descriptor{}, err
		}
		return ocispec.Descriptor{MediaType: bi.MediaType, Digest: dgst, Size: bi.Size}, nil
	}
	key := blobKey(u.Name, repo, dgst.String())
	if err := c.recall(u, repo, key); err != nil {
		return ocispec.Descriptor{}, err
	}
	desc, err := u.Source.StatBlob(ctx, repo, dgst)
	if err != nil {
		err = classify(err)
		c.remember(u, repo, key, err)
		return ocispec.Descriptor{}, err
	}
	c.unstored("index", c.store.AddMembers(u.Name, repo, dgst), "repository", repo, "digest", dgst)
	return desc, nil
}

// Blob is an open blob: a stored file or a fill in progress. Reading a fill
// blocks until the bytes land, and its last byte is only released once the
// whole blob has verified, so a complete read is always a correct one.
type Blob struct {
	ocispec.Descriptor
	io.ReadSeekCloser
	done  func() // ends the read: the blob may be evicted again
	close sync.Once
	err   error
}

// Close ends the read, once, however many goroutines call it: an HTTP
// transport closes a request body on its own goroutine while the caller's
// defer does the same.
func (b *Blob) Close() error {
	b.close.Do(func() {
		b.err = b.ReadSeekCloser.Close()
		if b.done != nil {
			b.done()
		}
	})
	return b.err
}

// SendTo is the sendfile path of a fill in progress (see fillReader's);
// ok is false, with nothing sent, for a reader without one, which is read
// instead.
func (b *Blob) SendTo(dst io.ReaderFrom, n int64) (sent int64, ok bool, err error) {
	s, is := b.ReadSeekCloser.(interface {
		SendTo(io.ReaderFrom, int64) (int64, bool, error)
	})
	if !is {
		return 0, false, nil
	}
	return s.SendTo(dst, n)
}

// Blob opens blob dgst of repo, starting or joining its fill on a miss.
func (c *Cache) Blob(ctx context.Context, up, repo string, dgst digest.Digest) (*Blob, error) {
	u, err := c.upstream(up)
	if err != nil {
		return nil, err
	}
	b, err := c.openBlob(ctx, u, repo, dgst)
	if errors.Is(err, errFillDone) {
		// The fill ended between our look and our join without storing
		// the blob (the store could not take it): once more, from upstream.
		b, err = c.openBlob(ctx, u, repo, dgst)
	}
	if errors.Is(err, errFillDone) {
		return nil, fmt.Errorf("%w: blob %s could not be stored", ErrUnavailable, dgst)
	}
	return b, err
}

func (c *Cache) openBlob(ctx context.Context, u Upstream, repo string, dgst digest.Digest) (*Blob, error) {
	if b, err := c.openStored(ctx, u, repo, dgst); !errors.Is(err, storage.ErrNotFound) {
		return b, err
	}
	c.mu.Lock()
	_, filling := c.fills[dgst]
	c.mu.Unlock()
	if !filling && c.store.Adopt(dgst) == nil { // verified on disk, lost from the index
		return c.openStored(ctx, u, repo, dgst)
	}
	if err := c.recall(u, repo, blobKey(u.Name, repo, dgst.String())); err != nil {
		return nil, err
	}
	c.result(ctx, u.Name, "blob", false)
	f, started, err := c.startFill(ctx, u, repo, dgst)
	if err != nil {
		return nil, err
	}
	if f == nil { // committed since we looked
		return c.openStored(ctx, u, repo, dgst)
	}
	if !started {
		// Someone else's fill proves nothing about this repository, and
		// a private upstream's fill nothing about another upstream.
		if err := c.holdsBlob(ctx, u, repo, dgst, storage.BlobInfo{Size: -1, Sources: []string{f.up}}); err != nil {
			return nil, err
		}
	}
	r, err := f.open(ctx)
	if f.eager && err != nil && ctx.Err() == nil && !errors.Is(err, errFillDone) {
		// An eager fill that failed is nobody's answer: this request
		// starts its own fill.
		return nil, errFillDone
	}
	if !started && err == nil {
		c.eagerUsed(f, ocispec.Descriptor{})
	}
	if !started && errors.Is(err, ErrNotFound) {
		// The fill came from another repository, which lacks the blob;
		// this one was shown to hold it: fetch it through this one.
		return nil, errFillDone
	}
	other := f.up != u.Name || f.repo != repo
	if !started && errors.Is(err, ErrBadUpstream) && other {
		// Another repository's fill was refused, perhaps for a length
		// that repository's manifest gave: that says nothing of this
		// one's, which fetches it through its own.
		return nil, errFillDone
	}
	if !started && err == nil && other && f.size < 0 && f.want >= 0 {
		// The same where upstream sends no length and that manifest's
		// bounds the fill: its end decides. This client waits for the
		// end anyway (it is told the length first), so it waits here,
		// where a failure can still send it through its own repository.
		if _, err := r.size(); errors.Is(err, ErrBadUpstream) {
			r.Close()
			return nil, errFillDone
		}
	}
	if errors.Is(err, errFillDone) {
		b, err := c.openStored(ctx, u, repo, dgst)
		if errors.Is(err, storage.ErrNotFound) {
			return nil, errFillDone
		}
		return b, err
	}
	if err != nil {
		return nil, err
	}
	if started {
		noteFrom(ctx, u.Name, f.from)
	} else {
		note(ctx, u.Name, ResultJoined)
	}
	return &Blob{Descriptor: ocispec.Descriptor{MediaType: f.mediaType, Digest: dgst, Size: f.size}, ReadSeekCloser: r, done: c.beginRead(dgst)}, nil
}

func (c *Cache) openStored(ctx context.Context, u Upstream, repo string, dgst digest.Digest) (*Blob, error) {
	bi, err := c.store.Blob(dgst)
	if err != nil {
		return nil, err
	}
	file, size, err := c.store.Open(dgst)
	if err != nil {
		return nil, err
	}
	if err := c.holdsBlob(ctx, u, repo, dgst, bi); err != nil {
		file.Close()
		return nil, err
	}
	c.result(ctx, u.Name, "blob", true)
	c.store.Touch(dgst)
	c.eagerUsed(nil, ocispec.Descriptor{Digest: dgst})
	return &Blob{Descriptor: ocispec.Descriptor{MediaType: bi.MediaType, Digest: dgst, Size: size}, ReadSeekCloser: file, done: c.beginRead(dgst)}, nil
}

// beginRead marks dgst as being served, so eviction spares it, until the
// returned func is called. A fill's readers count too: the fill may commit
// (and the blob become evictable) while they are still reading.
func (c *Cache) beginRead(dgst digest.Digest) func() {
	c.mu.Lock()
	c.reading[dgst]++
	c.mu.Unlock()
	return func() {
		c.mu.Lock()
		if c.reading[dgst]--; c.reading[dgst] <= 0 {
			delete(c.reading, dgst)
		}
		c.mu.Unlock()
	}
}
