package api

import (
	"cmp"
	"net/http"
	"slices"
	"strconv"
	"time"

	"github.com/distribution/distribution/v3/registry/api/errcode"

	"github.com/wharf-registry/wharf/auth"
	"github.com/wharf-registry/wharf/cache"
	"github.com/wharf-registry/wharf/httpx"
)

// CacheStatus is GET /api/v1/cache: how full the cache is, how well it did
// over the last hour and who it served most, for the fleet. The hit ratio
// and the top repositories count since each replica started.
type CacheStatus struct {
	Replicas []ReplicaCache `json:"replicas"`
	// Minutes are the last hour's manifest and blob reads, summed over
	// the fleet, oldest first; minutes without reads are left out.
	Minutes []Minute `json:"minutes"`
	// TopByBytes and TopByPulls are the repositories served the most
	// bytes and the most manifest GETs, among those the caller may pull.
	TopByBytes  []RepoUse `json:"top_by_bytes"`
	TopByPulls  []RepoUse `json:"top_by_pulls"`
	Unreachable []string  `json:"unreachable,omitempty"` // replicas whose part is missing
}

// ReplicaCache is one replica's local store.
type ReplicaCache struct {
	Replica       string `json:"replica,omitempty"` // its advertised address in a fleet
	SizeBytes     int64  `json:"size_bytes"`
	MaxSizeBytes  int64  `json:"max_size_bytes"` // 0: unbounded
	Blobs         int64  `json:"blobs"`
	FillsInFlight int    `json:"fills_in_flight"`
}

// Minute is one minute's reads.
type Minute struct {
	Start  time.Time `json:"start"`
	Hits   int64     `json:"hits"`
	Misses int64     `json:"misses"`
}

// RepoUse is what one repository was served.
type RepoUse struct {
	Upstream   string `json:"upstream"`
	Repository string `json:"repository"`
	Pulls      int64  `json:"pulls"`
	Bytes      int64  `json:"bytes"`
}

// peerTop is how many repositories of each list a replica sends a peer
// to merge: more than the page shows, so the fleet's top is near-exact.
const peerTop = 200

// cacheStatus answers GET /api/v1/cache[?top=N]. Anyone with an API
// identity sees the figures; repositories only as far as they may pull
// them (the jobs right: all).
func (a *api) cacheStatus(w http.ResponseWriter, r *http.Request) error {
	id := httpx.Identity(r.Context())
	all := a.auth.MayAPI(id, auth.RightJobs)
	if !all && httpx.Anonymous(id) {
		return a.mayAPI(r, auth.RightJobs)
	}
	top := 10
	if v := r.URL.Query().Get("top"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 100 {
			return httpx.OCIError(http.StatusBadRequest, errcode.ErrorCodePaginationNumberInvalid, "top must be a number from 1 to 100")
		}
		top = n
	}
	u := a.cache.Usage()
	repos := slices.DeleteFunc(u.Repositories, func(ru cache.RepoUse) bool { return !all && !a.auth.MayPull(id, ru.Upstream, ru.Repository) })
	mine := ReplicaCache{SizeBytes: u.SizeBytes, MaxSizeBytes: u.MaxSizeBytes, Blobs: u.Blobs, FillsInFlight: u.FillsInFlight}
	if a.fleet != nil {
		mine.Replica = a.fleet.Self()
	}
	st := CacheStatus{Replicas: []ReplicaCache{mine}, Minutes: each(u.Minutes, minuteOf),
		TopByBytes: each(cache.TopRepositories(repos, "bytes", peerTop), repoUseOf), TopByPulls: each(cache.TopRepositories(repos, "pulls", peerTop), repoUseOf)}
	if peerCall(r) {
		return httpx.WriteJSON(w, r, st)
	}
	parts, missing := gather[CacheStatus](a, r)
	st = mergeCache(top, append(parts, st)...)
	st.Unreachable = missing
	return httpx.WriteJSON(w, r, st)
}

// mergeCache is the fleet's status from each replica's: replicas listed,
// minutes and repositories summed, the top n kept.
func mergeCache(n int, parts ...CacheStatus) CacheStatus {
	var out CacheStatus
	minutes := map[time.Time]*Minute{}
	repos := map[[2]string]*cache.RepoUse{}
	for _, p := range parts {
		out.Replicas = append(out.Replicas, p.Replicas...)
		for _, m := range p.Minutes {
			if minutes[m.Start] == nil {
				minutes[m.Start] = &Minute{Start: m.Start}
			}
			minutes[m.Start].Hits += m.Hits
			minutes[m.Start].Misses += m.Misses
		}
		// A repository in both of a replica's lists is one use, not two.
		seen := map[[2]string]bool{}
		for _, ru := range append(slices.Clone(p.TopByBytes), p.TopByPulls...) {
			k := [2]string{ru.Upstream, ru.Repository}
			if seen[k] {
				continue
			}
			seen[k] = true
			if repos[k] == nil {
				repos[k] = &cache.RepoUse{Upstream: ru.Upstream, Repository: ru.Repository}
			}
			repos[k].Bytes += ru.Bytes
			repos[k].Pulls += ru.Pulls
		}
	}
	slices.SortFunc(out.Replicas, func(a, b ReplicaCache) int { return cmp.Compare(a.Replica, b.Replica) })
	out.Minutes = []Minute{}
	for _, m := range minutes {
		out.Minutes = append(out.Minutes, *m)
	}
	slices.SortFunc(out.Minutes, func(a, b Minute) int { return a.Start.Compare(b.Start) })
	var list []cache.RepoUse
	for _, ru := range repos {
		list = append(list, *ru)
	}
	out.TopByBytes = each(cache.TopRepositories(list, "bytes", n), repoUseOf)
	out.TopByPulls = each(cache.TopRepositories(list, "pulls", n), repoUseOf)
	return out
}

func minuteOf(m cache.Minute) Minute { return Minute(m) }

func repoUseOf(r cache.RepoUse) RepoUse { return RepoUse(r) }

// Me is GET /api/v1/me: who the caller is and which API rights it holds,
// so that the status page asks only for what it may see.
type Me struct {
	User   string          `json:"user,omitempty"`
	Token  bool            `json:"token,omitempty"`
	Rights map[string]bool `json:"rights"`
}

func (a *api) me(w http.ResponseWriter, r *http.Request) error {
	id := httpx.Identity(r.Context())
	if httpx.Anonymous(id) && !a.auth.MayAPI(id, auth.RightJobs) {
		if err := a.mayAPI(r, auth.RightJobs); err != nil {
			return err
		}
	}
	me := Me{User: id.User, Token: id.Token, Rights: map[string]bool{}}
	for _, right := range []string{auth.RightPrefetch, auth.RightJobs, auth.RightPins, auth.RightAdmin} {
		me.Rights[right] = a.auth.MayAPI(id, right)
	}
	return httpx.WriteJSON(w, r, me)
}
