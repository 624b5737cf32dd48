package auth

import (
	"slices"

	"github.com/wharf-registry/wharf/route"
)

// What an identity may do: pull, push and the API's rights, by rules.

// MayPull reports whether id may read repo of upstream: manifests, blobs,
// tags, referrers, and its name in the catalog.
func (a *Auth) MayPull(id Identity, upstream, repo string) bool {
	if id.Token || id.Loopback {
		return true
	}
	name := upstream + "/" + repo
	if matchAny(a.cfg.Anonymous, name) {
		return true
	}
	if id.User == "" {
		return false
	}
	for _, r := range a.cfg.Rules {
		if a.applies(r, id) && (matchAny(r.Pull, name) || slices.Contains(r.API, RightAdmin)) {
			return true
		}
	}
	return false
}

// MayPush reports whether id's jobs may push to repo of target: a rule's
// push patterns, admin, the API token, or loopback where it holds the API.
func (a *Auth) MayPush(id Identity, target, repo string) bool {
	return a.mayPush(id, func(p string) bool { return route.Match(p, target+"/"+repo) })
}

// MayPushTo reports whether id may push to some repository of target: to
// run a replication rule of that target by hand.
func (a *Auth) MayPushTo(id Identity, target string) bool {
	return a.mayPush(id, func(p string) bool { return route.MayMatchUpstream(p, target) })
}

func (a *Auth) mayPush(id Identity, match func(pattern string) bool) bool {
	if id.Token || (id.Loopback && a.cfg.LoopbackAPI) {
		return true
	}
	for _, r := range a.cfg.Rules {
		if a.applies(r, id) && (slices.Contains(r.API, RightAdmin) || slices.ContainsFunc(r.Push, match)) {
			return true
		}
	}
	return false
}

// MayAPI reports whether id holds right on /api/v1.
func (a *Auth) MayAPI(id Identity, right string) bool {
	if id.Token || (id.Loopback && a.cfg.LoopbackAPI) {
		return true
	}
	for _, r := range a.cfg.Rules {
		if a.applies(r, id) && (slices.Contains(r.API, right) || slices.Contains(r.API, RightAdmin)) {
			return true
		}
	}
	return false
}

// Credentials reports whether any credential can be checked: users or an
// API token.
func (a *Auth) Credentials() bool { return a.users != nil || a.cfg.APIToken != "" }

// MustLogIn is true when id presented no credentials and may pull nothing
// at all: then GET /v2/ asks for credentials, as registries do, and
// `docker login` works.
func (a *Auth) MustLogIn(id Identity) bool {
	return id.User == "" && !id.Token && !id.Loopback && len(a.cfg.Anonymous) == 0
}

func (a *Auth) applies(r Rule, id Identity) bool {
	return id.User != "" && (slices.Contains(r.Users, id.User) || slices.Contains(r.Users, "*"))
}

func matchAny(patterns []string, name string) bool {
	for _, p := range patterns {
		if route.Match(p, name) {
			return true
		}
	}
	return false
}
