package cache

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/wharf-registry/wharf/storage"
)

// Tags lists the tags of repo, sorted: upstream's list, trusted for the
// upstream's tag TTL and fetched once for all concurrent requests; the last
// list it gave (or the tags resolved through Wharf) when it is unavailable.
func (c *Cache) Tags(ctx context.Context, up, repo string) ([]string, error) {
	return c.TagsWithin(ctx, up, repo, -1)
}

// TagsWithin is Tags with a list no older than maxAge (negative: the
// upstream's tag TTL; 0: fetched now): a scheduled replication run lists
// what upstream has now, not what it had a tag TTL ago.
func (c *Cache) TagsWithin(ctx context.Context, up, repo string, maxAge time.Duration) ([]string, error) {
	u, err := c.upstream(up)
	if err != nil {
		return nil, err
	}
	if maxAge < 0 {
		maxAge = u.TagTTL
	}
	cached, checked, lerr := c.store.TagList(u.Name, repo)
	if lerr == nil && c.now().Sub(checked) < maxAge {
		return cached, nil
	}
	key := tagsKey(u.Name, repo)
	if err := c.recall(u, repo, key); err != nil {
		return nil, err
	}
	v, err := c.flight(ctx, key, func(ctx context.Context) (any, error) {
		// As for referrers: a list stored by a flight that just ended.
		if tags, checked, err := c.store.TagList(u.Name, repo); err == nil && c.now().Sub(checked) < maxAge {
			return tags, nil
		}
		tags, err := u.Source.Tags(ctx, repo)
		if err = classify(err); err != nil {
			c.remember(u, repo, key, err)
			return nil, err
		}
		slices.Sort(tags)
		tags = slices.Compact(tags)
		c.keep("index", c.store.PutTagList(u.Name, repo, tags, c.now()), "repository", repo)
		return tags, nil
	})
	if err == nil {
		return v.([]string), nil
	}
	if !errors.Is(err, ErrUnavailable) {
		return nil, err
	}
	if lerr == nil {
		return cached, nil
	}
	if resolved, lerr := c.store.CachedTags(u.Name, repo); lerr == nil && len(resolved) > 0 {
		return resolved, nil
	}
	return nil, err
}

func tagsKey(up, repo string) string { return "l\x00" + up + "\x00" + repo }

// flight runs fn once for all concurrent callers of key, detached from the
// first caller's context and bounded like a manifest fetch; each caller
// waits at most for its own context.
func (c *Cache) flight(ctx context.Context, key string, fn func(context.Context) (any, error)) (any, error) {
	ch := c.flights.DoChan(key, func() (any, error) {
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), manifestFlightTimeout)
		defer cancel()
		return fn(fctx)
	})
	select {
	case r := <-ch:
		return r.Val, r.Err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// Referrers returns the referrers list of dgst in repo, filtered by
// artifactType if it is not "" (filtered reports whether it was). The
// unfiltered list is fetched from upstream, trusted for the upstream's tag
// TTL and served stale when upstream is unavailable; filters are applied
// here, so a client choosing filters costs neither upstream requests nor
// index records.
func (c *Cache) Referrers(ctx context.Context, up, repo string, dgst digest.Digest, artifactType string) (doc storage.Document, filtered bool, err error) {
	u, err := c.upstream(up)
	if err != nil {
		return storage.Document{}, false, err
	}
	doc, cerr := c.store.Referrers(u.Name, repo, dgst)
	if cerr != nil || c.now().Sub(doc.Checked) >= u.TagTTL {
		key := "f\x00" + manifestKey(u.Name, repo, dgst.String())
		if err := c.recall(u, repo, key); err != nil {
			return storage.Document{}, false, err
		}
		v, err := c.flight(ctx, key, func(ctx context.Context) (any, error) {
			// A request that missed the record just before another's
			// flight stored it takes that one, not a second fetch.
			if doc, err := c.store.Referrers(u.Name, repo, dgst); err == nil && c.now().Sub(doc.Checked) < u.TagTTL {
				return doc, nil
			}
			mt, body, err := u.Source.Referrers(ctx, repo, dgst, "")
			if err = classify(err); err != nil {
				c.remember(u, repo, key, err)
				return nil, err
			}
			doc := storage.Document{MediaType: mt, Body: body, Checked: c.now()}
			c.keep("index", c.store.PutReferrers(u.Name, repo, dgst, doc), "repository", repo, "digest", dgst)
			return doc, nil
		})
		switch {
		case err == nil:
			doc = v.(storage.Document)
		case errors.Is(err, ErrUnavailable) && cerr == nil:
		default:
			return storage.Document{}, false, err
		}
	}
	if artifactType == "" {
		return doc, false, nil
	}
	return filterReferrers(doc, artifactType)
}

// filterReferrers keeps the entries of a referrers list of one artifact
// type, as the OCI distribution spec's artifactType filter does.
func filterReferrers(doc storage.Document, artifactType string) (storage.Document, bool, error) {
	var idx ocispec.Index
	if err := json.Unmarshal(doc.Body, &idx); err != nil {
		return storage.Document{}, false, errors.Join(ErrBadUpstream, err)
	}
	var keep []ocispec.Descriptor
	for _, d := range idx.Manifests {
		if d.ArtifactType == artifactType {
			keep = append(keep, d)
		}
	}
	out := ocispec.Index{MediaType: ocispec.MediaTypeImageIndex, Manifests: keep}
	out.SchemaVersion = 2
	if out.Manifests == nil {
		out.Manifests = []ocispec.Descriptor{}
	}
	body, err := json.Marshal(out)
	if err != nil {
		return storage.Document{}, false, err
	}
	return storage.Document{MediaType: ocispec.MediaTypeImageIndex, Body: body, Checked: doc.Checked}, true, nil
}
