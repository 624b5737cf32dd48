package cache

import (
	"context"
	"errors"
	"slices"

	"github.com/opencontainers/go-digest"

	"github.com/wharf-registry/wharf/storage"
)

// Tags lists the tags of repo, sorted: upstream's list when it answers, the
// last list it gave (or the tags resolved through Wharf) when it does not.
func (c *Cache) Tags(ctx context.Context, up, repo string) ([]string, error) {
	u, err := c.upstream(up)
	if err != nil {
		return nil, err
	}
	tags, err := u.Source.Tags(ctx, repo)
	if err = classify(err); err == nil {
		slices.Sort(tags)
		tags = slices.Compact(tags)
		c.keep("index", c.store.PutTagList(u.Name, repo, tags), "repository", repo)
		return tags, nil
	}
	if !errors.Is(err, ErrUnavailable) {
		return nil, err
	}
	if cached, lerr := c.store.TagList(u.Name, repo); lerr == nil {
		return cached, nil
	}
	if cached, lerr := c.store.CachedTags(u.Name, repo); lerr == nil && len(cached) > 0 {
		return cached, nil
	}
	return nil, err
}

// Referrers returns the referrers list of dgst in repo, trusted for the
// upstream's tag TTL and served stale when upstream is unavailable.
func (c *Cache) Referrers(ctx context.Context, up, repo string, dgst digest.Digest, artifactType string) (storage.Document, error) {
	u, err := c.upstream(up)
	if err != nil {
		return storage.Document{}, err
	}
	doc, cerr := c.store.Referrers(u.Name, repo, dgst, artifactType)
	if cerr == nil && c.now().Sub(doc.Checked) < u.TagTTL {
		return doc, nil
	}
	mt, body, err := u.Source.Referrers(ctx, repo, dgst, artifactType)
	if err = classify(err); err != nil {
		if errors.Is(err, ErrUnavailable) && cerr == nil {
			return doc, nil
		}
		return storage.Document{}, err
	}
	doc = storage.Document{MediaType: mt, Body: body, Checked: c.now()}
	c.keep("index", c.store.PutReferrers(u.Name, repo, dgst, artifactType, doc), "repository", repo, "digest", dgst)
	return doc, nil
}
