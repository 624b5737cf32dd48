// Package route holds what every part of Wharf must read the same way
// about a name: the patterns pins, access rules and replication match on
// "<upstream>/<repo>". It imports nothing of Wharf's.
package route

import (
	"fmt"
	"path"
	"strings"
)

// Match reports whether name ("<upstream>/<repo>", maybe with ":<tag>")
// matches pattern. A pattern is a path.Match glob, where * stays within one
// path element, except that a pattern ending in "/*" also matches
// everything below it: "docker.io/*" is all of Docker Hub, as a reader
// expects, and "ghcr.io/org/*" all of org's repositories at any depth.
func Match(pattern, name string) bool {
	if ok, _ := path.Match(pattern, name); ok {
		return true
	}
	dir, ok := strings.CutSuffix(pattern, "/*")
	if !ok {
		return false
	}
	for i := strings.LastIndexByte(name, '/'); i > 0; i = strings.LastIndexByte(name[:i], '/') {
		if ok, _ := path.Match(dir, name[:i]); ok {
			return true
		}
	}
	return false
}

// Check rejects a malformed pattern at start rather than never matching.
func Check(pattern string) error {
	if pattern == "" {
		return fmt.Errorf("empty pattern")
	}
	if _, err := path.Match(pattern, ""); err != nil {
		return fmt.Errorf("pattern %q: %w", pattern, err)
	}
	return nil
}

// MayMatchUpstream reports whether pattern can match a name under the
// upstream called name: what start-up checks use to see which upstreams an
// access rule reaches.
func MayMatchUpstream(pattern, upstream string) bool {
	first, _, _ := strings.Cut(pattern, "/")
	ok, _ := path.Match(first, upstream)
	return ok
}
