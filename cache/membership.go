package cache

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/wharf-registry/wharf/oci"
	"github.com/wharf-registry/wharf/storage"
)

// Who may be served what the store holds. Two records decide:
//
//   - Membership, per upstream and repository: a manifest fetched from the
//     repository listed the digest (by the fields its type defines), or
//     the upstream confirmed it with a HEAD. Within one upstream that is
//     enough: the registry checks what a manifest it accepts refers to.
//   - Sources, per blob (storage.BlobInfo.Sources): whose own bytes
//     verified as it. Content only private upstreams (credentials or a
//     client certificate) served is not opened by another upstream's word,
//     which costs a hostile upstream nothing: that upstream must serve the
//     bytes itself first. Content a public upstream served is public, and
//     membership is enough.

// vouched reports whether membership alone lets u serve a blob whose bytes
// came from sources: u served them itself, a public upstream did, the
// record predates sources (none), or no upstream is private at all (then
// even a blob of unknown origin, adopted after a crash, is public).
func (c *Cache) vouched(u Upstream, sources []string) bool {
	if len(sources) == 0 || !c.private {
		return true
	}
	for _, s := range sources {
		if o, ok := c.upstreams[s]; s == u.Name || ok && !o.Private {
			return true
		}
	}
	return false
}

// holds makes sure repo of upstream u is known to hold dgst before the
// store serves it there: either a manifest cached for repo listed it, or
// upstream says so now. Without this, anyone could read a private blob
// through any repository by guessing its digest.
func (c *Cache) holds(ctx context.Context, u Upstream, repo string, dgst digest.Digest, manifest bool) error {
	ok, err := c.store.IsMember(u.Name, repo, dgst)
	if err != nil || ok {
		return err
	}
	if manifest {
		_, _, err = u.Source.Manifest(ctx, repo, dgst.String(), true)
	} else {
		_, err = u.Source.StatBlob(ctx, repo, dgst)
	}
	if err != nil {
		return classify(err)
	}
	if manifest {
		c.admit(u, repo, dgst)
	} else {
		c.unstored("index", c.store.AddMembers(u.Name, repo, dgst), "repository", repo, "digest", dgst)
	}
	return nil
}

// holdsBlob is holds for a blob described by bi (Size -1 when it is
// still being filled), which u must also vouch for: when its sources do
// not, u proves that repo holds it by serving it.
func (c *Cache) holdsBlob(ctx context.Context, u Upstream, repo string, dgst digest.Digest, bi storage.BlobInfo) error {
	if !c.vouched(u, bi.Sources) {
		return c.prove(ctx, u, repo, dgst, bi.Size)
	}
	return c.holds(ctx, u, repo, dgst, false)
}

// admit records that upstream showed repo to hold the manifest dgst, and
// so, when the manifest is stored, everything it refers to: a registry
// keeps a manifest's content in the manifest's repository.
func (c *Cache) admit(u Upstream, repo string, dgst digest.Digest) {
	members := []digest.Digest{dgst}
	if desc, body, err := c.storedManifest(dgst); err == nil {
		members = append(members, ParseManifest(body, desc.MediaType).digests()...)
	}
	c.unstored("index", c.store.AddMembers(u.Name, repo, members...), "repository", repo, "digest", dgst)
}

// manifestFor is a stored manifest that u may serve: one of another
// upstream's that u has not vouched for is not stored as far as u is
// concerned, and is fetched from u, whose bytes verify or fail.
func (c *Cache) manifestFor(u Upstream, dgst digest.Digest) (ocispec.Descriptor, []byte, error) {
	desc, body, bi, err := c.storedManifestInfo(dgst)
	if err == nil && !c.vouched(u, bi.Sources) {
		return ocispec.Descriptor{}, nil, fmt.Errorf("manifest %s: only another upstream served it: %w", dgst, storage.ErrNotFound)
	}
	return desc, body, err
}

// prove has u serve blob dgst of repo, hashes the bytes and drops them:
// the proof that u holds the blob, for content another upstream's
// credentials fetched. Concurrent requests share one download; a refusal
// is remembered like any other for the upstream's negative_ttl.
func (c *Cache) prove(ctx context.Context, u Upstream, repo string, dgst digest.Digest, size int64) error {
	key := "p\x00" + blobKey(u.Name, repo, dgst.String())
	if err := c.recall(u, repo, key); err != nil {
		return err
	}
	_, err := c.flight(ctx, key, c.fillTimeout, func(ctx context.Context) (any, error) {
		err := c.hashFrom(ctx, u, repo, dgst, size)
		c.remember(u, repo, key, err)
		c.metrics.proofs.WithLabelValues(map[bool]string{true: "served", false: "refused"}[err == nil]).Inc()
		if err != nil {
			return nil, err
		}
		c.unstored("index", c.store.AddMembers(u.Name, repo, dgst), "repository", repo, "digest", dgst)
		if err := c.store.AddSource(dgst, u.Name); err != nil && !errors.Is(err, storage.ErrNotFound) {
			c.unstored("index", err, "repository", repo, "digest", dgst)
		}
		return nil, nil
	})
	return err
}

// hashFrom reads blob dgst of repo from u (no more than size bytes and
// one, when size >= 0) and checks that it is dgst.
func (c *Cache) hashFrom(ctx context.Context, u Upstream, repo string, dgst digest.Digest, size int64) error {
	rc, _, err := u.Source.Blob(ctx, repo, dgst, 0)
	if err != nil {
		return classify(err)
	}
	defer rc.Close()
	var r io.Reader = rc
	if size >= 0 {
		r = io.LimitReader(rc, size+1)
	}
	h := dgst.Algorithm().Hash()
	n, err := io.Copy(h, r)
	if err != nil {
		return fmt.Errorf("%w: blob %s of %s: %w", ErrUnavailable, dgst, repo, err)
	}
	c.metrics.fetched.WithLabelValues(u.Name).Add(float64(n))
	if got := digest.NewDigest(dgst.Algorithm(), h); got != dgst || (size >= 0 && n != size) {
		return fmt.Errorf("%w: blob %s of %s: upstream served other bytes (%s, %d bytes)", ErrBadUpstream, dgst, repo, got, n)
	}
	return nil
}

// manifestMediaType reports whether a record's type makes it a manifest.
func manifestMediaType(mt string) bool {
	return oci.IsManifestType(mt) || mt == mediaTypeArtifact
}
