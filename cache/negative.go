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
	var oc interface{ OCICodes() []string }
	if strings.HasPrefix(key, "m\x00") && errors.Is(err, ErrNotFound) && errors.As(err, &oc) && slices.Contains(oc.OCICodes(), "NAME_UNKNOWN") {
		key = repoKey(u.Name, repo)
	}
	now := c.now()
	c.missing.add(key, err, now.Add(u.NegativeTTL), now)
}
