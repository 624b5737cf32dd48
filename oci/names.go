package oci

import (
	"strings"

	"github.com/opencontainers/go-digest"
)

// ValidName reports whether name matches the OCI distribution spec's
// repository pattern,
//
//	[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*
//
// written out by hand: it runs on every request, where the regexp was a
// fifth of the cost of a warm manifest.
func ValidName(name string) bool {
	if name == "" || len(name) > maxNameLength {
		return false
	}
	for _, comp := range strings.Split(name, "/") {
		if !validComponent(comp) {
			return false
		}
	}
	return true
}

// validComponent: alphanumeric runs joined by ".", "_", "__" or "-"+.
func validComponent(c string) bool {
	alnum := func(b byte) bool { return b >= 'a' && b <= 'z' || b >= '0' && b <= '9' }
	i := 0
	for {
		start := i
		for i < len(c) && alnum(c[i]) {
			i++
		}
		if i == start {
			return false // empty run: leading, trailing or doubled separator
		}
		if i == len(c) {
			return true
		}
		switch {
		case c[i] == '.':
			i++
		case c[i] == '_':
			i++
			if i < len(c) && c[i] == '_' {
				i++
			}
		case c[i] == '-':
			for i < len(c) && c[i] == '-' {
				i++
			}
		default:
			return false
		}
	}
}

const maxNameLength = 255

// ParseDigest accepts the digests the store keeps: "sha256:" and 64, or
// "sha512:" and 128, lowercase hex digits, checked by hand because it runs
// on every request (go-digest's Parse is a regexp match).
func ParseDigest(s string) (digest.Digest, bool) {
	alg, hex, _ := strings.Cut(s, ":")
	want := 0
	switch alg {
	case "sha256":
		want = 64
	case "sha512":
		want = 128
	}
	if want == 0 || len(hex) != want || strings.IndexFunc(hex, func(c rune) bool { return !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') }) >= 0 {
		return "", false
	}
	return digest.Digest(s), true
}
