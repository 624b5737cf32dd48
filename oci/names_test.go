package oci

import (
	"regexp"
	"strings"
	"testing"
)

// The spec's pattern, for checking the hand-written validator against.
var specName = regexp.MustCompile(`^[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*$`)

func TestValidNameMatchesTheSpecPattern(t *testing.T) {
	names := []string{"a", "library/alpine", "ghcr.io/org/app", "a__b", "a___b", "a_b", "a--b", "a-b-c", "a.b.c",
		"a..b", "a._b", "-a", "a-", "a/", "/a", "a//b", "A", "a b", "a/b_", "registry.k8s.io/pause", "x/y/z/w",
		"a__", "__a", "a.-b", "0", "9-9", "a:5000/b", strings.Repeat("a", 255), strings.Repeat("a", 256)}
	for _, n := range names {
		want := specName.MatchString(n) && len(n) <= maxNameLength
		if got := ValidName(n); got != want {
			t.Errorf("ValidName(%q) = %v, spec says %v", n, got, want)
		}
	}
}

func FuzzValidName(f *testing.F) {
	for _, s := range []string{"a", "a__b", "a/b.c-d", "a___b", "--", "a/-"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, n string) {
		want := specName.MatchString(n) && len(n) <= maxNameLength
		if got := ValidName(n); got != want {
			t.Fatalf("ValidName(%q) = %v, spec says %v", n, got, want)
		}
	})
}
