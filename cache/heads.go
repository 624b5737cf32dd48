package cache

import (
	"context"
	"errors"
	"fmt"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/wharf-registry/wharf/oci"
	"github.com/wharf-registry/wharf/storage"
)

// HEAD of a manifest: answered from what describes it, and from an
// upstream HEAD when it is not cached, never a download.

// ManifestHead describes the manifest ref of repo without its bytes. What
// is not cached is asked of upstream with a HEAD, never a GET (which Docker
// Hub counts as a pull); only a HEAD answer that says too little (no
// digest, no length, not a manifest type) is followed by a GET.
func (c *Cache) ManifestHead(ctx context.Context, up, repo, ref string) (ocispec.Descriptor, error) {
	u, err := c.upstream(up)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	dgst, isDigest, err := parseRef(ref)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	if !isDigest {
		if ti, err := c.store.Tag(u.Name, repo, ref); err == nil && c.trusted(ctx, u, repo, ref, ti) {
			c.result(ctx, u.Name, "manifest", true)
			return c.tagDesc(ti), nil
		}
		if desc, _, err, asked := c.viaTagOwner(ctx, u, repo, ref, true); asked {
			return desc, err
		}
		desc, _, err := c.shared(ctx, "ht", u, repo, ref, func(ctx context.Context) (ocispec.Descriptor, []byte, error) {
			desc, err := c.resolveTagHead(ctx, u, repo, ref)
			return desc, nil, err
		})
		return desc, err
	}
	desc, _, err := c.manifestFor(u, dgst)
	if err == nil {
		if err := c.holds(ctx, u, repo, dgst, true); err != nil {
			return ocispec.Descriptor{}, err
		}
		c.result(ctx, u.Name, "manifest", true)
		return desc, nil
	}
	if !errors.Is(err, storage.ErrNotFound) {
		return ocispec.Descriptor{}, err
	}
	desc, _, err = c.shared(ctx, "hd", u, repo, ref, func(ctx context.Context) (ocispec.Descriptor, []byte, error) {
		c.result(ctx, u.Name, "manifest", false)
		head, _, err := u.Source.Manifest(ctx, repo, ref, true)
		if err != nil {
			return ocispec.Descriptor{}, nil, classify(err)
		}
		if head.Digest == "" {
			head.Digest = dgst // the registry answered 200 for this digest
		}
		if head.Digest != dgst {
			return ocispec.Descriptor{}, nil, fmt.Errorf("%w: asked for manifest %s, upstream described %s", ErrBadUpstream, dgst, head.Digest)
		}
		if !describes(head) {
			return c.fetchManifest(ctx, u, repo, ref, dgst)
		}
		c.found(u, repo)
		c.admit(u, repo, dgst)
		return head, nil, nil
	})
	return desc, err
}

// describes reports whether a HEAD answer says all a client needs: a
// digest, a length, and a manifest media type.
func describes(head ocispec.Descriptor) bool {
	return head.Digest.Validate() == nil && head.Size > 0 && head.Size <= oci.MaxManifestSize && oci.IsManifestType(head.MediaType)
}

// fresh reports whether a tag's resolution is young enough to trust
// without asking upstream.
func (c *Cache) fresh(u Upstream, ti storage.TagInfo) bool { return c.now().Sub(ti.Checked) < u.TagTTL }

// tagDesc describes what a tag resolved to: the stored manifest's record
// when it is stored, else what the HEAD that resolved the tag said.
func (c *Cache) tagDesc(ti storage.TagInfo) ocispec.Descriptor {
	if desc, _, err := c.storedManifest(ti.Digest); err == nil {
		return desc
	}
	return ocispec.Descriptor{MediaType: ti.MediaType, Digest: ti.Digest, Size: ti.Size}
}

// resolveTagHead answers a HEAD of a tag that is unknown or stale with an
// upstream HEAD, and records what it resolved to; the manifest itself is
// fetched only when a client asks for its bytes.
func (c *Cache) resolveTagHead(ctx context.Context, u Upstream, repo, tag string) (ocispec.Descriptor, error) {
	ti, terr := c.store.Tag(u.Name, repo, tag)
	if terr != nil && !errors.Is(terr, storage.ErrNotFound) {
		return ocispec.Descriptor{}, terr
	}
	known := terr == nil
	if known && c.fresh(u, ti) {
		c.result(ctx, u.Name, "manifest", true)
		return c.tagDesc(ti), nil
	}
	var head ocispec.Descriptor
	var err error
	if known {
		head, err = c.revalidate(ctx, u, repo, tag)
	} else {
		head, _, err = u.Source.Manifest(ctx, repo, tag, true)
		err = classify(err)
	}
	switch {
	case errors.Is(err, ErrUnavailable) && known:
		c.result(ctx, u.Name, "manifest", true)
		c.stale(ctx, u.Name)
		c.retries.failed(manifestKey(u.Name, repo, tag), c.now())
		return c.tagDesc(ti), nil
	case err != nil:
		return ocispec.Descriptor{}, err
	case !describes(head):
		c.result(ctx, u.Name, "manifest", false)
		desc, _, err := c.fetchManifest(ctx, u, repo, tag, "")
		return desc, err
	}
	c.result(ctx, u.Name, "manifest", known && head.Digest == ti.Digest)
	c.found(u, repo)
	ti = storage.TagInfo{Digest: head.Digest, MediaType: head.MediaType, Size: head.Size, Checked: c.now()}
	c.admit(u, repo, head.Digest)
	c.putTag(u.Name, repo, tag, ti)
	return c.tagDesc(ti), nil
}

// Resolve asks upstream now, whatever tag_ttl says, which digest tag of
// repo resolves to, and records the answer: a job about to push a tag
// checks that it does not push an older digest than the source holds. ""
// with no error when upstream's answer names no digest.
func (c *Cache) Resolve(ctx context.Context, up, repo, tag string) (digest.Digest, error) {
	u, err := c.upstream(up)
	if err != nil {
		return "", err
	}
	head, err := c.revalidate(ctx, u, repo, tag)
	if err != nil {
		return "", err
	}
	if !describes(head) {
		if head.Digest.Validate() != nil {
			return "", nil
		}
		return head.Digest, nil
	}
	c.found(u, repo)
	c.admit(u, repo, head.Digest)
	c.putTag(u.Name, repo, tag, storage.TagInfo{Digest: head.Digest, MediaType: head.MediaType, Size: head.Size, Checked: c.now()})
	return head.Digest, nil
}
