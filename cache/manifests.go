package cache

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/wharf-registry/wharf/oci"
	"github.com/wharf-registry/wharf/storage"
)

// mediaTypeOf is what a manifest is: the mediaType its body declares,
// whatever the Content-Type said; for a body that declares none (older OCI
// manifests), a Content-Type naming a manifest type, else what the body's
// fields say. "" when nothing says.
func mediaTypeOf(m ManifestRefs, contentType string) string {
	switch {
	case m.MediaType != "":
		return m.MediaType
	case oci.IsManifestType(contentType):
		return contentType
	case m.Manifests != nil:
		return ocispec.MediaTypeImageIndex
	case m.Config != nil:
		return ocispec.MediaTypeImageManifest
	}
	return ""
}

// parseRef tells a digest from a tag: tags cannot hold a colon.
func parseRef(ref string) (dgst digest.Digest, isDigest bool, err error) {
	if !strings.Contains(ref, ":") {
		return "", false, nil
	}
	dgst = digest.Digest(ref)
	if err := dgst.Validate(); err != nil {
		return "", true, fmt.Errorf("%w: %w", ErrNotFound, err)
	}
	return dgst, true, nil
}

// Manifest returns the manifest ref (tag or digest) of repo, exactly the
// bytes upstream sent, with its descriptor.
func (c *Cache) Manifest(ctx context.Context, up, repo, ref string) (ocispec.Descriptor, []byte, error) {
	u, err := c.upstream(up)
	if err != nil {
		return ocispec.Descriptor{}, nil, err
	}
	dgst, isDigest, err := parseRef(ref)
	if err != nil {
		return ocispec.Descriptor{}, nil, err
	}
	if isDigest {
		return c.manifestByDigest(ctx, u, repo, dgst)
	}
	return c.manifestByTag(ctx, u, repo, ref)
}

func (c *Cache) manifestByDigest(ctx context.Context, u Upstream, repo string, dgst digest.Digest) (ocispec.Descriptor, []byte, error) {
	desc, body, err := c.manifestFor(u, dgst)
	if errors.Is(err, storage.ErrNotFound) {
		return c.shared(ctx, "d", u, repo, dgst.String(), func(ctx context.Context) (ocispec.Descriptor, []byte, error) {
			if desc, body, err := c.manifestFor(u, dgst); err == nil {
				return desc, body, nil // stored by a flight that ended just before this one began
			}
			c.result(ctx, u.Name, "manifest", false)
			if desc, body, err, asked := c.viaDigestOwner(ctx, u, repo, dgst); asked {
				return desc, body, err
			}
			return c.fetchManifest(ctx, u, repo, dgst.String(), dgst)
		})
	}
	if err != nil {
		return ocispec.Descriptor{}, nil, err
	}
	if err := c.holds(ctx, u, repo, dgst, true); err != nil {
		return ocispec.Descriptor{}, nil, err
	}
	c.result(ctx, u.Name, "manifest", true)
	return desc, body, nil
}

func (c *Cache) manifestByTag(ctx context.Context, u Upstream, repo, tag string) (ocispec.Descriptor, []byte, error) {
	ti, err := c.store.Tag(u.Name, repo, tag)
	if err == nil && c.trusted(ctx, u, repo, tag, ti) {
		desc, body, err := c.manifestFor(u, ti.Digest)
		if err == nil {
			c.result(ctx, u.Name, "manifest", true)
			return desc, body, nil
		}
	}
	if desc, body, err, asked := c.viaTagOwner(ctx, u, repo, tag, false); asked {
		return desc, body, err
	}
	return c.shared(ctx, "t", u, repo, tag, func(ctx context.Context) (ocispec.Descriptor, []byte, error) {
		return c.resolveTag(ctx, u, repo, tag)
	})
}

// manifestFlightTimeout bounds a shared upstream manifest fetch, which runs
// on no client's context.
const manifestFlightTimeout = time.Minute

// shared runs fn once for every concurrent request of the same manifest, so
// a thundering herd of pods costs upstream one request. fn runs detached
// from the first caller: one client giving up does not fail the others.
// What upstream says does not exist (or may not be read) is remembered for
// the upstream's negative_ttl.
func (c *Cache) shared(ctx context.Context, kind string, u Upstream, repo, ref string, fn func(context.Context) (ocispec.Descriptor, []byte, error)) (ocispec.Descriptor, []byte, error) {
	type result struct {
		desc ocispec.Descriptor
		body []byte
	}
	key := manifestKey(u.Name, repo, ref)
	if err := c.recall(u, repo, key); err != nil {
		return ocispec.Descriptor{}, nil, err
	}
	v, err := c.flight(ctx, kind+"\x00"+key, 0, func(ctx context.Context) (any, error) {
		desc, body, err := fn(ctx)
		c.remember(u, repo, key, err)
		return result{desc, body}, err
	})
	res, _ := v.(result)
	return res.desc, res.body, err
}

// resolveTag answers a GET of a tag that is unknown or stale: fetch it, or
// ask upstream cheaply whether it still points where it did. A stale
// answer is served only when upstream is unavailable; anything else it
// says (not found, denied, refused) is the answer.
func (c *Cache) resolveTag(ctx context.Context, u Upstream, repo, tag string) (ocispec.Descriptor, []byte, error) {
	ti, err := c.store.Tag(u.Name, repo, tag)
	if errors.Is(err, storage.ErrNotFound) {
		c.result(ctx, u.Name, "manifest", false)
		return c.fetchManifest(ctx, u, repo, tag, "")
	}
	if err != nil {
		return ocispec.Descriptor{}, nil, err
	}
	desc, body, serr := c.manifestFor(u, ti.Digest)
	if serr != nil && !errors.Is(serr, storage.ErrNotFound) {
		return ocispec.Descriptor{}, nil, serr
	}
	stored := serr == nil
	if c.fresh(u, ti) {
		// Resolved by a flight that ended just before this one began, or
		// by a HEAD that did not fetch the manifest.
		if stored {
			c.result(ctx, u.Name, "manifest", true)
			return desc, body, nil
		}
		c.result(ctx, u.Name, "manifest", false)
		return c.fetchManifest(ctx, u, repo, ti.Digest.String(), ti.Digest, tag)
	}
	head, err := c.revalidate(ctx, u, repo, tag)
	switch {
	case errors.Is(err, ErrUnavailable) && stored:
		// Serve what we have rather than fail a rollout on a flaky upstream.
		c.result(ctx, u.Name, "manifest", true)
		c.stale(ctx, u.Name)
		c.retries.failed(manifestKey(u.Name, repo, tag), c.now())
		return desc, body, nil
	case err != nil:
		return ocispec.Descriptor{}, nil, err
	case head.Digest == ti.Digest && stored:
		ti.Checked = c.now()
		c.putTag(u.Name, repo, tag, ti)
		c.result(ctx, u.Name, "manifest", true)
		return desc, body, nil
	}
	c.result(ctx, u.Name, "manifest", false)
	if head.Digest.Validate() == nil {
		return c.fetchManifest(ctx, u, repo, head.Digest.String(), head.Digest, tag)
	}
	return c.fetchManifest(ctx, u, repo, tag, "")
}

// revalidate asks upstream with a HEAD, within the upstream's
// revalidate_timeout, what tag resolves to now.
func (c *Cache) revalidate(ctx context.Context, u Upstream, repo, tag string) (ocispec.Descriptor, error) {
	hctx, cancel := context.WithTimeout(ctx, u.RevalidateTimeout)
	defer cancel()
	head, _, err := u.Source.Manifest(hctx, repo, tag, true)
	if err = classify(err); !errors.Is(err, ErrUnavailable) {
		c.retries.ok(manifestKey(u.Name, repo, tag))
	}
	return head, err
}

// trusted reports whether tag's cached resolution is served without
// asking upstream: it is fresh, or it is stale and upstream was found
// unavailable within its back-off (counted as a stale answer).
func (c *Cache) trusted(ctx context.Context, u Upstream, repo, tag string, ti storage.TagInfo) bool {
	if c.fresh(u, ti) {
		return true
	}
	if c.retries.waiting(manifestKey(u.Name, repo, tag), c.now()) {
		c.stale(ctx, u.Name)
		return true
	}
	return false
}

// storedManifest reads a manifest from the store (or its memory of it).
func (c *Cache) storedManifest(dgst digest.Digest) (ocispec.Descriptor, []byte, error) {
	desc, body, _, err := c.storedManifestInfo(dgst)
	return desc, body, err
}

// storedManifestInfo is storedManifest with the blob's record. A stored
// blob that is not a manifest (a config, a layer) is not one as far as
// manifest requests go, whatever its bytes look like.
func (c *Cache) storedManifestInfo(dgst digest.Digest) (ocispec.Descriptor, []byte, storage.BlobInfo, error) {
	body, bi, err := c.store.ReadSmall(dgst, oci.MaxManifestSize)
	if errors.Is(err, storage.ErrNotFound) && c.store.Adopt(dgst) == nil {
		body, bi, err = c.store.ReadSmall(dgst, oci.MaxManifestSize)
	}
	if err != nil {
		return ocispec.Descriptor{}, nil, bi, err
	}
	mt := bi.MediaType
	if !manifestMediaType(mt) {
		// No type on record (a blob fill, or a file adopted after a
		// crash), or one an older Wharf took from a Content-Type like
		// application/json: the body says (wharf check --repair corrects
		// the record), if it is a manifest at all. An image config has
		// a "config" too, but no schemaVersion.
		if mt = mediaTypeOf(decodeManifest(body), mt); !isManifest(body) {
			mt = ""
		}
		if !manifestMediaType(mt) {
			return ocispec.Descriptor{}, nil, bi, fmt.Errorf("blob %s is not a manifest: %w", dgst, storage.ErrNotFound)
		}
	}
	c.store.Touch(dgst)
	return ocispec.Descriptor{MediaType: mt, Digest: dgst, Size: bi.Size}, body, bi, nil
}

// fetchManifest GETs ref from upstream, verifies it, stores it, records which
// digests it shows the repository to hold and, for a tag, what the tag
// resolves to. want is the digest the bytes must hash to, if known (with
// its own algorithm: sha256 or sha512); tags lists extra tags to point at
// the result (a revalidated tag fetched by digest).
func (c *Cache) fetchManifest(ctx context.Context, u Upstream, repo, ref string, want digest.Digest, tags ...string) (ocispec.Descriptor, []byte, error) {
	desc, rc, err := u.Source.Manifest(ctx, repo, ref, false)
	if err != nil {
		return ocispec.Descriptor{}, nil, classify(err)
	}
	body, err := io.ReadAll(io.LimitReader(rc, oci.MaxManifestSize+1))
	rc.Close()
	if err != nil {
		return ocispec.Descriptor{}, nil, classify(err)
	}
	if len(body) > oci.MaxManifestSize {
		return ocispec.Descriptor{}, nil, fmt.Errorf("%w: manifest %s of %s is larger than 4 MiB", ErrBadUpstream, ref, repo)
	}
	got := cmp.Or(want, digest.FromBytes(body))
	for _, d := range []digest.Digest{got, desc.Digest} {
		if d != "" && (d.Validate() != nil || d.Algorithm().FromBytes(body) != d) {
			return ocispec.Descriptor{}, nil, fmt.Errorf("%w: manifest %s of %s does not hash to %s", ErrBadUpstream, ref, repo, d)
		}
	}
	c.metrics.fetched.WithLabelValues(u.Name).Add(float64(len(body)))
	if want == "" {
		tags = append(tags, ref)
	}
	return c.keepManifest(u, repo, ref, body, desc.MediaType, got, c.now(), tags...)
}

// keepManifest indexes and stores a manifest of repo that hashed to got
// (u served it, or the tag's owner that had it from u), and points tags at
// it, as checked at checked.
func (c *Cache) keepManifest(u Upstream, repo, ref string, body []byte, contentType string, got digest.Digest, checked time.Time, tags ...string) (ocispec.Descriptor, []byte, error) {
	c.found(u, repo)
	raw := decodeManifest(body)
	mt := mediaTypeOf(raw, contentType)
	refs := raw.only(mt)
	if mt == "" {
		return ocispec.Descriptor{}, nil, fmt.Errorf("%w: manifest %s of %s has no media type", ErrBadUpstream, ref, repo)
	}
	desc := ocispec.Descriptor{MediaType: mt, Digest: got, Size: int64(len(body))}
	// Membership first: once the manifest is visible in the store, a
	// by-digest request for it must not have to ask upstream again. The
	// bytes verified: whatever the store cannot keep, the client still
	// gets its answer.
	c.unstored("index", c.store.AddMembers(u.Name, repo, append(refs.digests(), got)...), "repository", repo, "digest", got)
	c.expect(u.Name, repo, refs)
	// The blobs' fills start before the manifest is stored: its client
	// asks for them a round trip later, and each needs two upstream round
	// trips of its own (token-scoped GET, then the CDN it redirects to).
	c.eager(u, repo, refs)
	if err := c.putManifest(u, got, mt, body); err != nil {
		c.unstored("manifest", err, "repository", repo, "digest", got)
		return desc, body, nil // a tag must not point at a manifest the store lacks
	}
	for _, tag := range tags {
		ti := storage.TagInfo{Digest: got, MediaType: mt, Size: desc.Size, Checked: checked}
		c.putTag(u.Name, repo, tag, ti)
	}
	return desc, body, nil
}

// putManifest stores a manifest u served, or, stored already, records
// that u served it and that it is a manifest (fetched as a blob first).
func (c *Cache) putManifest(u Upstream, dgst digest.Digest, mediaType string, body []byte) error {
	if _, bi, err := c.store.ReadSmall(dgst, oci.MaxManifestSize); err == nil { // stored and intact
		if bi.MediaType != mediaType && !manifestMediaType(bi.MediaType) {
			if err := c.store.SetMediaType(dgst, mediaType); err != nil {
				return err
			}
		}
		if !slices.Contains(bi.Sources, u.Name) {
			return c.store.AddSource(dgst, u.Name)
		}
		return nil
	}
	w, err := c.store.Create(dgst, mediaType)
	if err != nil {
		return err
	}
	defer w.Cancel()
	w.From(u.Name)
	if _, err := w.Write(body); err != nil {
		return err
	}
	if err := w.Commit(int64(len(body))); err != nil {
		return err
	}
	c.maybeEvict()
	return nil
}
