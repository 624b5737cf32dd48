package cache

import (
	"errors"
	"slices"
	"strings"
	"sync"
	"time"
)

// maxNegative bounds the negative cache: past it, expired entries are
// swept, and if that is not enough, entries are dropped at random (an
// attacker asking for random names can at most make Wharf forget, never
// grow).
const maxNegative = 10_000

// negative remembers, for an upstream's negative_ttl, what upstream said
// does not exist (404) or may not be read (401, 403): a manifest reference,
// a blob of a repository, or a whole repository (NAME_UNKNOWN). A
// crash-looping pod or a flood of random names then costs upstream one
// request per name, not one per request. Entries expire lazily: no timers.
type negative struct {
	mu      sync.Mutex
	entries map[string]negEntry
}

type negEntry struct {
	until time.Time
	err   error // what upstream said, answered again
}

func (n *negative) get(key string, now time.Time) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	e, ok := n.entries[key]
	if !ok {
		return nil
	}
	if !now.Before(e.until) {
		delete(n.entries, key)
		return nil
	}
	return e.err
}

func (n *negative) add(key string, err error, until, now time.Time) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.entries == nil {
		n.entries = map[string]negEntry{}
	}
	if _, ok := n.entries[key]; !ok && len(n.entries) >= maxNegative {
		for k, e := range n.entries {
			if !now.Before(e.until) {
				delete(n.entries, k)
			}
		}
		for k := range n.entries { // map order is random
			if len(n.entries) < maxNegative*9/10 {
				break
			}
			delete(n.entries, k)
		}
	}
	n.entries[key] = negEntry{until: until, err: err}
}

// forget drops what was remembered of keys.
func (n *negative) forget(keys ...string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, k := range keys {
		delete(n.entries, k)
	}
}

func (n *negative) len() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return len(n.entries)
}

// Keys of the negative cache: a manifest reference, a blob in a
// repository, and a repository.
func manifestKey(up, repo, ref string) string { return "m\x00" + up + "\x00" + repo + "\x00" + ref }
func blobKey(up, repo, ref string) string     { return "b\x00" + up + "\x00" + repo + "\x00" + ref }
func repoKey(up, repo string) string          { return "r\x00" + up + "\x00" + repo }

// recall answers from memory of an earlier refusal of key or of the
// whole repository, counted in wharf_negative_hits_total.
func (c *Cache) recall(u Upstream, repo, key string) error {
	now := c.now()
	err := c.missing.get(repoKey(u.Name, repo), now)
	if err == nil {
		err = c.missing.get(key, now)
	}
	if err != nil {
		c.metrics.negative.WithLabelValues(u.Name).Inc()
	}
	return err
}

// remember keeps an upstream "does not exist" or "denied" for the
// upstream's negative_ttl: for key, and for the whole repository when a
// manifest request was answered NAME_UNKNOWN (a tag list's NAME_UNKNOWN
// only says the repository has no tags yet). Outages and bad answers are
// never remembered.
func (c *Cache) remember(u Upstream, repo, key string, err error) {
	if u.NegativeTTL <= 0 || !(errors.Is(err, ErrNotFound) || errors.Is(err, ErrDenied)) {
		return
	}
	var oc OCICoder
	if strings.HasPrefix(key, "m\x00") && errors.Is(err, ErrNotFound) && errors.As(err, &oc) && slices.Contains(oc.OCICodes(), "NAME_UNKNOWN") {
		key = repoKey(u.Name, repo)
	}
	now := c.now()
	c.missing.add(key, err, now.Add(u.NegativeTTL), now)
}

// found forgets what upstream said of repo as a whole: a repository whose
// manifest it just served exists, and its tag list (a 404 while it had no
// tags) is worth asking for again.
func (c *Cache) found(u Upstream, repo string) {
	c.missing.forget(repoKey(u.Name, repo), tagsKey(u.Name, repo))
}

// Back-off of stale tags: a tag whose revalidation found upstream
// unavailable is served stale without asking again until its back-off
// ends, 1 s after the first failure, doubling up to maxRetryWait, so that
// a broken repository costs upstream one request per back-off, not one
// per client request. Bounded as the negative cache is; no timers.
const (
	firstRetryWait = time.Second
	maxRetryWait   = time.Minute
)

type retries struct {
	mu sync.Mutex
	m  map[string]retry
}

type retry struct {
	until time.Time
	wait  time.Duration
}

// waiting reports whether key's back-off runs at now.
func (r *retries) waiting(key string, now time.Time) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	e, ok := r.m[key]
	return ok && now.Before(e.until)
}

// failed starts key's next back-off.
func (r *retries) failed(key string, now time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.m == nil {
		r.m = map[string]retry{}
	}
	e, ok := r.m[key]
	if !ok && len(r.m) >= maxNegative {
		for k, e := range r.m { // expired first, then at random
			if !now.Before(e.until) || len(r.m) >= maxNegative*9/10 {
				delete(r.m, k)
			}
		}
	}
	e.wait = min(max(2*e.wait, firstRetryWait), maxRetryWait)
	e.until = now.Add(e.wait)
	r.m[key] = e
}

// ok ends key's back-off: upstream answered.
func (r *retries) ok(key string) {
	r.mu.Lock()
	delete(r.m, key)
	r.mu.Unlock()
}
