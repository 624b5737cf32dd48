package cache

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/wharf-registry/wharf/storage"
)

// MaxManifestSize is the largest manifest Wharf stores or serves; clients
// reject anything larger.
const MaxManifestSize = 4 << 20

// Manifest returns the manifest ref (tag or digest) of repo, exactly the
// bytes upstream sent, with its descriptor.
func (c *Cache) Manifest(ctx context.Context, up, repo, ref string) (ocispec.Descriptor, []byte, error) {
	u, err := c.upstream(up)
	if err != nil {
		return ocispec.Descriptor{}, nil, err
	}
	if strings.Contains(ref, ":") { // tags cannot hold a colon
		dgst := digest.Digest(ref)
		if err := dgst.Validate(); err != nil {
			return ocispec.Descriptor{}, nil, fmt.Errorf("%w: %w", ErrNotFound, err)
		}
		return c.manifestByDigest(ctx, u, repo, dgst)
	}
	return c.manifestByTag(ctx, u, repo, ref)
}

func (c *Cache) manifestByDigest(ctx context.Context, u Upstream, repo string, dgst digest.Digest) (ocispec.Descriptor, []byte, error) {
	desc, body, err := c.storedManifest(dgst)
	if errors.Is(err, storage.ErrNotFound) {
		return c.shared(ctx, "d", u, repo, dgst.String(), func(ctx context.Context) (ocispec.Descriptor, []byte, error) {
			c.metrics.result(u.Name, "manifest", false)
			return c.fetchManifest(ctx, u, repo, dgst.String(), dgst)
		})
	}
	if err != nil {
		return ocispec.Descriptor{}, nil, err
	}
	if err := c.authorize(ctx, u, repo, dgst, true); err != nil {
		return ocispec.Descriptor{}, nil, err
	}
	c.metrics.result(u.Name, "manifest", true)
	return desc, body, nil
}

func (c *Cache) manifestByTag(ctx context.Context, u Upstream, repo, tag string) (ocispec.Descriptor, []byte, error) {
	ti, err := c.store.Tag(u.Name, repo, tag)
	if err == nil && c.now().Sub(ti.Checked) < u.TagTTL {
		desc, body, err := c.storedManifest(ti.Digest)
		if err == nil {
			c.metrics.result(u.Name, "manifest", true)
			return desc, body, nil
		}
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
func (c *Cache) shared(ctx context.Context, kind string, u Upstream, repo, ref string, fn func(context.Context) (ocispec.Descriptor, []byte, error)) (ocispec.Descriptor, []byte, error) {
	type result struct {
		desc ocispec.Descriptor
		body []byte
	}
	key := u.Name + "\x00" + repo + "\x00" + ref
	repoKey := u.Name + "\x00" + repo // the whole repository is missing
	if c.missing.has(key, c.now()) || c.missing.has(repoKey, c.now()) {
		c.metrics.negative.WithLabelValues(u.Name).Inc()
		return ocispec.Descriptor{}, nil, fmt.Errorf("%w: %s:%s (remembered for up to %v)", ErrNotFound, repo, ref, u.NegativeTTL)
	}
	ch := c.flights.DoChan(kind+"\x00"+key, func() (any, error) {
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), manifestFlightTimeout)
		defer cancel()
		desc, body, err := fn(fctx)
		if errors.Is(err, ErrNotFound) && u.NegativeTTL > 0 {
			k := key
			var oc interface{ OCICodes() []string }
			if errors.As(err, &oc) && slices.Contains(oc.OCICodes(), "NAME_UNKNOWN") {
				k = repoKey
			}
			c.missing.add(k, c.now().Add(u.NegativeTTL), c.now())
		}
		return result{desc, body}, err
	})
	select {
	case r := <-ch:
		res, _ := r.Val.(result)
		return res.desc, res.body, r.Err
	case <-ctx.Done():
		return ocispec.Descriptor{}, nil, ctx.Err()
	}
}

// resolveTag answers a tag that is unknown or stale: fetch it, or ask
// upstream cheaply whether it still points where it did.
func (c *Cache) resolveTag(ctx context.Context, u Upstream, repo, tag string) (ocispec.Descriptor, []byte, error) {
	ti, err := c.store.Tag(u.Name, repo, tag)
	if err != nil && !errors.Is(err, storage.ErrNotFound) {
		return ocispec.Descriptor{}, nil, err
	}
	var desc ocispec.Descriptor
	var body []byte
	if err == nil {
		desc, body, err = c.storedManifest(ti.Digest)
	}
	if errors.Is(err, storage.ErrNotFound) {
		c.metrics.result(u.Name, "manifest", false)
		return c.fetchManifest(ctx, u, repo, tag, "")
	}
	if err != nil {
		return ocispec.Descriptor{}, nil, err
	}
	if c.now().Sub(ti.Checked) < u.TagTTL {
		// Resolved by a flight that ended just before this one began.
		c.metrics.result(u.Name, "manifest", true)
		return desc, body, nil
	}
	hctx, cancel := context.WithTimeout(ctx, u.RevalidateTimeout)
	head, _, err := u.Source.Manifest(hctx, repo, tag, true)
	cancel()
	switch err := classify(err); {
	case errors.Is(err, ErrNotFound):
		return ocispec.Descriptor{}, nil, err
	case err != nil:
		// Serve what we have rather than fail a rollout on a flaky upstream.
		c.metrics.result(u.Name, "manifest", true)
		c.metrics.stale.WithLabelValues(u.Name).Inc()
		return desc, body, nil
	case head.Digest == ti.Digest:
		ti.Checked = c.now()
		c.keep("index", c.store.PutTag(u.Name, repo, tag, ti), "repository", repo, "tag", tag)
		c.metrics.result(u.Name, "manifest", true)
		return desc, body, nil
	}
	c.metrics.result(u.Name, "manifest", false)
	if head.Digest.Validate() == nil && head.Digest.Algorithm() == digest.SHA256 {
		return c.fetchManifest(ctx, u, repo, head.Digest.String(), head.Digest, tag)
	}
	return c.fetchManifest(ctx, u, repo, tag, "")
}

// storedManifest reads a manifest from the store (or its memory of it).
func (c *Cache) storedManifest(dgst digest.Digest) (ocispec.Descriptor, []byte, error) {
	body, bi, err := c.store.ReadSmall(dgst, MaxManifestSize)
	if errors.Is(err, storage.ErrNotFound) && c.store.Adopt(dgst) == nil {
		body, bi, err = c.store.ReadSmall(dgst, MaxManifestSize)
	}
	if err != nil {
		return ocispec.Descriptor{}, nil, err
	}
	mt := bi.MediaType
	if mt == "" { // adopted after a crash: the type is in the manifest itself
		if mt = parseManifest(body).MediaType; mt == "" {
			return ocispec.Descriptor{}, nil, fmt.Errorf("manifest %s has no media type on record: %w", dgst, storage.ErrNotFound)
		}
	}
	c.store.Touch(dgst)
	return ocispec.Descriptor{MediaType: mt, Digest: dgst, Size: bi.Size}, body, nil
}

// fetchManifest GETs ref from upstream, verifies it, stores it, records which
// digests it shows the repository to hold and, for a tag, what the tag
// resolves to. want is the digest the bytes must hash to, if known; tags
// lists extra tags to point at the result (a revalidated tag fetched by
// digest).
func (c *Cache) fetchManifest(ctx context.Context, u Upstream, repo, ref string, want digest.Digest, tags ...string) (ocispec.Descriptor, []byte, error) {
	desc, rc, err := u.Source.Manifest(ctx, repo, ref, false)
	if err != nil {
		return ocispec.Descriptor{}, nil, classify(err)
	}
	body, err := io.ReadAll(io.LimitReader(rc, MaxManifestSize+1))
	rc.Close()
	if err != nil {
		return ocispec.Descriptor{}, nil, classify(err)
	}
	if len(body) > MaxManifestSize {
		return ocispec.Descriptor{}, nil, fmt.Errorf("%w: manifest %s of %s is larger than 4 MiB", ErrBadUpstream, ref, repo)
	}
	got := digest.FromBytes(body)
	if (want != "" && got != want) || (desc.Digest != "" && desc.Digest != got) {
		return ocispec.Descriptor{}, nil, fmt.Errorf("%w: manifest %s of %s hashes to %s", ErrBadUpstream, ref, repo, got)
	}
	c.metrics.fetched.WithLabelValues(u.Name).Add(float64(len(body)))
	refs := parseManifest(body)
	mt := desc.MediaType
	if mt == "" || mt == "application/octet-stream" || mt == "text/plain" {
		mt = refs.MediaType
	}
	if mt == "" {
		return ocispec.Descriptor{}, nil, fmt.Errorf("%w: manifest %s of %s has no media type", ErrBadUpstream, ref, repo)
	}
	desc = ocispec.Descriptor{MediaType: mt, Digest: got, Size: int64(len(body))}
	// Membership first: once the manifest is visible in the store, a
	// by-digest request for it must not have to ask upstream again.
	// The bytes verified: whatever the store cannot keep, the client still
	// gets its answer.
	c.keep("index", c.store.AddMembers(u.Name, repo, append(refs.digests(), got)...), "repository", repo, "digest", got)
	if err := c.putBlob(got, mt, body); err != nil {
		c.keep("manifest", err, "repository", repo, "digest", got)
		return desc, body, nil // a tag must not point at a manifest the store lacks
	}
	if want == "" {
		tags = append(tags, ref)
	}
	for _, tag := range tags {
		ti := storage.TagInfo{Digest: got, MediaType: mt, Size: desc.Size, Checked: c.now()}
		c.keep("index", c.store.PutTag(u.Name, repo, tag, ti), "repository", repo, "tag", tag)
	}
	return desc, body, nil
}

func (c *Cache) putBlob(dgst digest.Digest, mediaType string, body []byte) error {
	if _, _, err := c.store.ReadSmall(dgst, MaxManifestSize); err == nil {
		return nil // stored and intact
	}
	w, err := c.store.Create(dgst, mediaType)
	if err != nil {
		return err
	}
	defer w.Cancel()
	if _, err := w.Write(body); err != nil {
		return err
	}
	if err := w.Commit(int64(len(body))); err != nil {
		return err
	}
	c.maybeEvict()
	return nil
}

// manifestRefs is the union of the fields of every manifest kind that point
// at other content.
type manifestRefs struct {
	MediaType string               `json:"mediaType"`
	Config    *ocispec.Descriptor  `json:"config"`
	Layers    []ocispec.Descriptor `json:"layers"`
	Manifests []ocispec.Descriptor `json:"manifests"`
	Blobs     []ocispec.Descriptor `json:"blobs"`
	Subject   *ocispec.Descriptor  `json:"subject"`
}

func parseManifest(body []byte) manifestRefs {
	var m manifestRefs
	dec := json.NewDecoder(bytes.NewReader(body))
	_ = dec.Decode(&m) // an unparseable manifest refers to nothing
	return m
}

// blobs lists the config, layers and blobs of a manifest: what it needs
// besides child manifests and its subject.
func (m manifestRefs) blobs() []ocispec.Descriptor {
	var out []ocispec.Descriptor
	descs := append(slices.Clone(m.Layers), m.Blobs...)
	if m.Config != nil {
		descs = append(descs, *m.Config)
	}
	for _, d := range descs {
		if d.Digest.Validate() == nil {
			out = append(out, d)
		}
	}
	return out
}

// digests lists the valid digests the manifest refers to.
func (m manifestRefs) digests() []digest.Digest {
	descs := append(append(append([]ocispec.Descriptor{}, m.Layers...), m.Manifests...), m.Blobs...)
	if m.Config != nil {
		descs = append(descs, *m.Config)
	}
	if m.Subject != nil {
		descs = append(descs, *m.Subject)
	}
	var out []digest.Digest
	for _, d := range descs {
		if d.Digest.Validate() == nil {
			out = append(out, d.Digest)
		}
	}
	return out
}
