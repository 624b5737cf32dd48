package cache

import (
	"cmp"
	"slices"
	"sync"
	"time"
)

// What the status page shows of the cache: how well it does over the last
// hour and who uses it, kept in memory by this replica since it started
// (a restart starts over; Prometheus keeps the history).

// usageMinutes is how far back the hit ratio goes, a minute per slot.
const usageMinutes = 60

// maxUsageRepos bounds the repositories counted: past it, new ones are
// not, so that a client walking random names cannot grow memory.
const maxUsageRepos = 100_000

// Minute is one minute's manifest and blob reads, as hits and misses.
type Minute struct {
	Start  time.Time `json:"start"`
	Hits   int64     `json:"hits"`
	Misses int64     `json:"misses"`
}

// RepoUse is what one repository was served since start.
type RepoUse struct {
	Upstream   string `json:"upstream"`
	Repository string `json:"repository"`
	Pulls      int64  `json:"pulls"` // manifest GETs
	Bytes      int64  `json:"bytes"` // manifest and blob bytes sent
}

// Usage is the cache's state and recent use.
type Usage struct {
	SizeBytes     int64     `json:"size_bytes"`
	MaxSizeBytes  int64     `json:"max_size_bytes"` // 0: unbounded
	Blobs         int64     `json:"blobs"`
	FillsInFlight int       `json:"fills_in_flight"`
	Minutes       []Minute  `json:"minutes"` // the last hour, oldest first, minutes without reads left out
	Repositories  []RepoUse `json:"-"`
}

type usage struct {
	mu      sync.Mutex
	minutes [usageMinutes]Minute
	repos   map[[2]string]*RepoUse
}

func (u *usage) count(now time.Time, hit bool) {
	start := now.Truncate(time.Minute)
	u.mu.Lock()
	defer u.mu.Unlock()
	m := &u.minutes[start.Unix()/60%usageMinutes]
	if !m.Start.Equal(start) {
		*m = Minute{Start: start}
	}
	if hit {
		m.Hits++
	} else {
		m.Misses++
	}
}

// Served counts what a client was sent from repo of upstream up: bytes,
// and a pull when it was a manifest GET.
func (c *Cache) Served(up, repo string, bytes int64, pull bool) {
	u := &c.usage
	u.mu.Lock()
	defer u.mu.Unlock()
	key := [2]string{up, repo}
	r := u.repos[key]
	if r == nil {
		if u.repos == nil {
			u.repos = map[[2]string]*RepoUse{}
		}
		if len(u.repos) >= maxUsageRepos {
			return
		}
		r = &RepoUse{Upstream: up, Repository: repo}
		u.repos[key] = r
	}
	r.Bytes += bytes
	if pull {
		r.Pulls++
	}
}

// Usage reports the store's size, the fills running, the last hour's
// hits and misses and every repository's use; the caller picks the top
// of the list it may see (TopRepositories).
func (c *Cache) Usage() Usage {
	bytes, blobs := c.store.Size()
	c.mu.Lock()
	fills := len(c.fills)
	c.mu.Unlock()
	out := Usage{SizeBytes: bytes, MaxSizeBytes: c.maxSize, Blobs: blobs, FillsInFlight: fills, Minutes: []Minute{}}
	since := c.now().Truncate(time.Minute).Add(-(usageMinutes - 1) * time.Minute)
	u := &c.usage
	u.mu.Lock()
	for _, m := range u.minutes {
		if !m.Start.Before(since) {
			out.Minutes = append(out.Minutes, m)
		}
	}
	out.Repositories = make([]RepoUse, 0, len(u.repos))
	for _, r := range u.repos {
		out.Repositories = append(out.Repositories, *r)
	}
	u.mu.Unlock()
	slices.SortFunc(out.Minutes, func(a, b Minute) int { return a.Start.Compare(b.Start) })
	return out
}

// TopRepositories is the n repositories of list with the most of by
// ("bytes" or "pulls"), most first, ties by name.
func TopRepositories(list []RepoUse, by string, n int) []RepoUse {
	val := func(r RepoUse) int64 {
		if by == "pulls" {
			return r.Pulls
		}
		return r.Bytes
	}
	list = slices.Clone(list)
	slices.SortFunc(list, func(a, b RepoUse) int {
		return cmp.Or(cmp.Compare(val(b), val(a)), cmp.Compare(a.Upstream, b.Upstream), cmp.Compare(a.Repository, b.Repository))
	})
	return list[:min(n, len(list))]
}
