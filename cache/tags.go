package cache

import (
	"cmp"
	"context"
	"errors"
	"slices"
	"time"
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
	v, err := c.flight(ctx, key, 0, func(ctx context.Context) (any, error) {
		// As for referrers: a list stored by a flight that just ended.
		if tags, checked, err := c.store.TagList(u.Name, repo); err == nil && c.now().Sub(checked) < maxAge {
			return tags, nil
		}
		if tags, err, asked := c.viaTagsOwner(ctx, u, repo, maxAge); asked {
			return tags, err
		}
		tags, err := u.Source.Tags(ctx, repo)
		if err = classify(err); err != nil {
			c.remember(u, repo, key, err)
			return nil, err
		}
		slices.Sort(tags)
		tags = slices.Compact(tags)
		c.unstored("index", c.store.PutTagList(u.Name, repo, tags, c.now()), "repository", repo)
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
// first caller's context and bounded by timeout (manifestFlightTimeout when
// 0); each caller waits at most for its own context.
func (c *Cache) flight(ctx context.Context, key string, timeout time.Duration, fn func(context.Context) (any, error)) (any, error) {
	ch := c.flights.DoChan(key, func() (any, error) {
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cmp.Or(timeout, manifestFlightTimeout))
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
