package cache

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/wharf-registry/wharf/oci"
	"github.com/wharf-registry/wharf/storage"
)

// One answer per tag in a fleet: a tag that is unknown here or past its
// tag_ttl is asked of its owner (rendezvous on the tag), which resolves it
// as a single replica would and answers with the manifest and how long ago
// it asked upstream. This replica keeps that answer as checked then, so
// every replica's copy expires when the owner's does, and the fleet makes
// one upstream check per tag per tag_ttl, one manifest fetch per new
// manifest, and serves one digest. What the owner says does not exist is
// not remembered here: the owner remembers it, and a tag pushed later is
// found by asking it again. An owner that cannot answer (down, refusing
// this replica, its upstream unavailable) is passed by: this replica
// resolves the tag itself, as it would alone.

// TagAgeHeader carries, in a tag owner's answer, the milliseconds since
// the owner last asked upstream what the tag resolves to.
const TagAgeHeader = "Wharf-Tag-Age"

// errOwnerUnavailable is an answer of the tag's owner that the tag is
// better resolved here.
var errOwnerUnavailable = errors.New("the tag's owner did not answer")

// viaTagOwner resolves tag through its owner when that is another
// replica; asked is false when it is not, or it did not answer.
func (c *Cache) viaTagOwner(ctx context.Context, u Upstream, repo, tag string, head bool) (desc ocispec.Descriptor, body []byte, err error, asked bool) {
	if c.peers == nil || forPeer(ctx) {
		return desc, nil, nil, false
	}
	peer, self := c.peers.TagOwner(u.Name, repo, tag)
	if self {
		return desc, nil, nil, false
	}
	type result struct {
		desc ocispec.Descriptor
		body []byte
	}
	kind := "pt"
	if head {
		kind = "ph"
	}
	v, err := c.flight(ctx, kind+"\x00"+manifestKey(u.Name, repo, tag), 0, func(ctx context.Context) (any, error) {
		desc, body, err := c.askTagOwner(ctx, peer, u, repo, tag, head)
		return result{desc, body}, err
	})
	if errors.Is(err, errOwnerUnavailable) {
		c.metrics.peer.WithLabelValues("unreachable").Inc()
		c.log.Warn("a tag's owner did not answer; resolving it here", "peer", peer, "upstream", u.Name, "repository", repo, "tag", tag, "error", err)
		return desc, nil, nil, false
	}
	res, _ := v.(result)
	return res.desc, res.body, err, true
}

// viaDigestOwner fetches manifest dgst through its owner (the blob's, see
// throughOwner) when that is another replica, so that the fleet fetches
// each new manifest (an index's children) from upstream once; asked is
// false when it is not, or it did not answer.
func (c *Cache) viaDigestOwner(ctx context.Context, u Upstream, repo string, dgst digest.Digest) (desc ocispec.Descriptor, body []byte, err error, asked bool) {
	if c.peers == nil || forPeer(ctx) {
		return desc, nil, nil, false
	}
	peer, self := c.peers.Owner(dgst)
	if self {
		return desc, nil, nil, false
	}
	desc, body, err = c.askTagOwner(ctx, peer, u, repo, dgst.String(), false)
	if errors.Is(err, errOwnerUnavailable) {
		c.metrics.peer.WithLabelValues("unreachable").Inc()
		c.log.Warn("a manifest's owner did not answer; fetching it here", "peer", peer, "upstream", u.Name, "repository", repo, "digest", dgst, "error", err)
		return desc, nil, nil, false
	}
	return desc, body, err, true
}

// askTagOwner asks peer for ref (a tag, or a manifest's digest) and keeps
// its answer.
func (c *Cache) askTagOwner(ctx context.Context, peer string, u Upstream, repo, ref string, head bool) (ocispec.Descriptor, []byte, error) {
	tag := ref
	sent := c.now()
	resp, err := c.peers.Tag(ctx, peer, u.Name, repo, tag, head)
	if err != nil {
		return ocispec.Descriptor{}, nil, fmt.Errorf("%w: %w", errOwnerUnavailable, err)
	}
	defer resp.Body.Close()
	if err := peerStatus(peer, resp); err != nil {
		return ocispec.Descriptor{}, nil, err
	}
	dgst, err := digest.Parse(resp.Header.Get("Docker-Content-Digest"))
	if err != nil {
		return ocispec.Descriptor{}, nil, fmt.Errorf("%w: %s answered without a digest", errOwnerUnavailable, peer)
	}
	var tags []string
	if want, isDigest, _ := parseRef(ref); !isDigest {
		tags = []string{tag}
	} else if dgst != want {
		return ocispec.Descriptor{}, nil, fmt.Errorf("%w: %s answered %s for %s", errOwnerUnavailable, peer, dgst, want)
	}
	ms, err := strconv.ParseInt(resp.Header.Get(TagAgeHeader), 10, 64)
	if err != nil || ms < 0 {
		ms = 0
	}
	// As checked when the request left at the latest: this copy expires
	// no later than the owner's, never serving a digest the owner has
	// moved on from.
	checked := sent.Add(-time.Duration(ms) * time.Millisecond)
	c.metrics.peer.WithLabelValues("tag").Inc()
	note(ctx, u.Name, ResultPeer)
	if head && tags != nil {
		desc := ocispec.Descriptor{MediaType: resp.Header.Get("Content-Type"), Digest: dgst, Size: resp.ContentLength}
		if !describes(desc) {
			return ocispec.Descriptor{}, nil, fmt.Errorf("%w: %s described %s:%s too little", errOwnerUnavailable, peer, repo, tag)
		}
		c.found(u, repo)
		c.admit(u, repo, dgst)
		c.putTag(u.Name, repo, tag, storage.TagInfo{Digest: dgst, MediaType: desc.MediaType, Size: desc.Size, Checked: checked})
		return c.tagDesc(storage.TagInfo{Digest: dgst, MediaType: desc.MediaType, Size: desc.Size}), nil, nil
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, oci.MaxManifestSize+1))
	if err != nil || len(body) > oci.MaxManifestSize || dgst.Algorithm().FromBytes(body) != dgst {
		return ocispec.Descriptor{}, nil, fmt.Errorf("%w: %s sent a manifest for %s:%s that is not %s", errOwnerUnavailable, peer, repo, tag, dgst)
	}
	return c.keepManifest(u, repo, ref, body, resp.Header.Get("Content-Type"), dgst, checked, tags...)
}

// peerMessage is the message of a peer's OCI error answer.
func peerMessage(resp *http.Response) string {
	var e struct {
		Errors []struct{ Message string }
	}
	if json.NewDecoder(io.LimitReader(resp.Body, 16<<10)).Decode(&e) != nil || len(e.Errors) == 0 {
		return http.StatusText(resp.StatusCode)
	}
	return e.Errors[0].Message
}

// TagAge is how long ago this replica last asked upstream (or had the
// owner ask) what tag resolves to, rounded up to the millisecond (what
// TagAgeHeader carries); ok is false for a tag it does not know.
func (c *Cache) TagAge(up, repo, tag string) (ms int64, ok bool) {
	ti, err := c.store.Tag(up, repo, tag)
	if err != nil {
		return 0, false
	}
	return max(0, (c.now().Sub(ti.Checked) + time.Millisecond - 1).Milliseconds()), true
}

// viaTagsOwner lists repo's tags through the replica that owns the list
// when that is another, so the fleet lists each repository upstream once
// per tag_ttl and every replica answers the same list; asked is false
// when it is not, or it did not answer. Its "does not exist" is not
// remembered here.
func (c *Cache) viaTagsOwner(ctx context.Context, u Upstream, repo string, maxAge time.Duration) (tags []string, err error, asked bool) {
	if c.peers == nil || forPeer(ctx) {
		return nil, nil, false
	}
	peer, self := c.peers.TagsOwner(u.Name, repo)
	if self {
		return nil, nil, false
	}
	tags, err = c.askTagsOwner(ctx, peer, u, repo, maxAge)
	if errors.Is(err, errOwnerUnavailable) {
		c.metrics.peer.WithLabelValues("unreachable").Inc()
		c.log.Warn("a tag list's owner did not answer; listing it here", "peer", peer, "upstream", u.Name, "repository", repo, "error", err)
		return nil, nil, false
	}
	return tags, err, true
}

// askTagsOwner asks peer for repo's tag list and keeps it.
func (c *Cache) askTagsOwner(ctx context.Context, peer string, u Upstream, repo string, maxAge time.Duration) ([]string, error) {
	sent := c.now()
	resp, err := c.peers.Tags(ctx, peer, u.Name, repo, maxAge)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", errOwnerUnavailable, err)
	}
	defer resp.Body.Close()
	if err := peerStatus(peer, resp); err != nil {
		return nil, err
	}
	var list struct {
		Tags []string `json:"tags"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxTagList)).Decode(&list); err != nil {
		return nil, fmt.Errorf("%w: %s sent an unreadable tag list: %w", errOwnerUnavailable, peer, err)
	}
	ms, err := strconv.ParseInt(resp.Header.Get(TagAgeHeader), 10, 64)
	if err != nil || ms < 0 {
		ms = 0
	}
	tags := slices.Compact(slices.Sorted(slices.Values(list.Tags)))
	c.metrics.peer.WithLabelValues("tags").Inc()
	c.unstored("index", c.store.PutTagList(u.Name, repo, tags, sent.Add(-time.Duration(ms)*time.Millisecond)), "repository", repo)
	return tags, nil
}

// maxTagList bounds a tag list a peer sends.
const maxTagList = 64 << 20

// peerStatus is the error of a tag or tag list owner's answer: what
// upstream said (not found, denied, refused) as such, anything else as
// errOwnerUnavailable.
func peerStatus(peer string, resp *http.Response) error {
	switch resp.StatusCode {
	case http.StatusOK:
		return nil
	case http.StatusNotFound:
		return fmt.Errorf("%w: %s", ErrNotFound, peerMessage(resp))
	case http.StatusForbidden:
		return fmt.Errorf("%w: %s", ErrDenied, peerMessage(resp))
	case http.StatusBadRequest:
		return fmt.Errorf("%w: %s", ErrRejected, peerMessage(resp))
	default: // 401 (the secret or the clock), 5xx, 429
		return fmt.Errorf("%w: %s answered %d: %s", errOwnerUnavailable, peer, resp.StatusCode, peerMessage(resp))
	}
}

// TagListAge is how long ago this replica's tag list of repo was fetched
// (by it or the list's owner), rounded up to the millisecond; ok is false
// without one.
func (c *Cache) TagListAge(up, repo string) (ms int64, ok bool) {
	_, checked, err := c.store.TagList(up, repo)
	if err != nil {
		return 0, false
	}
	return max(0, (c.now().Sub(checked) + time.Millisecond - 1).Milliseconds()), true
}
