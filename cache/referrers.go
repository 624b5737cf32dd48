package cache

import (
	"context"
	"encoding/json"
	"errors"
	"sync"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/wharf-registry/wharf/storage"
)

// Referrers returns the referrers list of dgst in repo, filtered by
// artifactType if it is not "" (filtered reports whether it was). The
// unfiltered list is fetched from upstream, trusted for the upstream's tag
// TTL and served stale when upstream is unavailable; filters are applied
// here, so a client choosing filters costs neither upstream requests nor
// index records. Only the lists of manifests the store holds, and that
// list something, are kept in the index; the others (any digest a client
// names: a spec-conformant upstream answers an empty list for each) are
// kept in bounded memory.
func (c *Cache) Referrers(ctx context.Context, up, repo string, dgst digest.Digest, artifactType string) (doc storage.Document, filtered bool, err error) {
	u, err := c.upstream(up)
	if err != nil {
		return storage.Document{}, false, err
	}
	key := "f\x00" + manifestKey(u.Name, repo, dgst.String())
	doc, cerr := c.referrerList(u, repo, key, dgst)
	if cerr != nil || c.now().Sub(doc.Checked) >= u.TagTTL {
		if err := c.recall(u, repo, key); err != nil {
			return storage.Document{}, false, err
		}
		v, err := c.flight(ctx, key, 0, func(ctx context.Context) (any, error) {
			// A request that missed the record just before another's
			// flight stored it takes that one, not a second fetch.
			if doc, err := c.referrerList(u, repo, key, dgst); err == nil && c.now().Sub(doc.Checked) < u.TagTTL {
				return doc, nil
			}
			mt, body, err := u.Source.Referrers(ctx, repo, dgst, "")
			if err = classify(err); err != nil {
				c.remember(u, repo, key, err)
				return nil, err
			}
			doc := storage.Document{MediaType: mt, Body: body, Checked: c.now()}
			c.keepReferrers(u, repo, key, dgst, doc)
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

// referrerList is the list last fetched for dgst: from memory, else the
// index.
func (c *Cache) referrerList(u Upstream, repo, key string, dgst digest.Digest) (storage.Document, error) {
	if doc, ok := c.lists.get(key); ok {
		return doc, nil
	}
	return c.store.Referrers(u.Name, repo, dgst)
}

// keepReferrers keeps a fetched list in the index when it lists something
// and its subject is a stored manifest (or the index has an older one),
// else in memory.
func (c *Cache) keepReferrers(u Upstream, repo, key string, dgst digest.Digest, doc storage.Document) {
	var idx struct {
		Manifests []json.RawMessage `json:"manifests"`
	}
	_, _, serr := c.storedManifest(dgst)
	_, ierr := c.store.Referrers(u.Name, repo, dgst)
	if json.Unmarshal(doc.Body, &idx) == nil && len(idx.Manifests) > 0 && serr == nil || ierr == nil {
		c.lists.forget(key)
		c.unstored("index", c.store.PutReferrers(u.Name, repo, dgst, doc), "repository", repo, "digest", dgst)
		return
	}
	c.lists.put(key, doc)
}

// maxLists bounds the referrers lists kept in memory; past it, half of
// them go (the map's order makes it random): a client naming random
// digests can make Wharf forget, never grow.
const maxLists = 4096

// lists are referrers lists kept in memory, by key.
type lists struct {
	mu sync.Mutex
	m  map[string]storage.Document
}

func (l *lists) get(key string) (storage.Document, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	doc, ok := l.m[key]
	return doc, ok
}

func (l *lists) put(key string, doc storage.Document) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.m == nil {
		l.m = map[string]storage.Document{}
	}
	if _, ok := l.m[key]; !ok && len(l.m) >= maxLists {
		for k := range l.m {
			if len(l.m) < maxLists/2 {
				break
			}
			delete(l.m, k)
		}
	}
	l.m[key] = doc
}

func (l *lists) forget(key string) {
	l.mu.Lock()
	delete(l.m, key)
	l.mu.Unlock()
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
