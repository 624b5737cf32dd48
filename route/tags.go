package route

import (
	"fmt"
	"regexp"

	"github.com/Masterminds/semver/v3"
)

// Semver returns a filter of tags by a semantic version range such as
// ">=1.2 <2" or "~1.4", read by the same library and rules as skopeo
// sync's images-by-semver: a tag that is no version (latest, a digest's
// tag) never matches; "v1.2.3" and "1.2" are versions.
func Semver(constraint string) (func(tag string) bool, error) {
	c, err := semver.NewConstraint(constraint)
	if err != nil {
		return nil, fmt.Errorf("semver range %q: %w", constraint, err)
	}
	return func(tag string) bool {
		v, err := semver.NewVersion(tag)
		return err == nil && c.Check(v)
	}, nil
}

// Regexp returns a filter of tags by a regular expression (unanchored, as
// skopeo's images-by-tag-regex).
func Regexp(expr string) (func(tag string) bool, error) {
	re, err := regexp.Compile(expr)
	if err != nil {
		return nil, fmt.Errorf("tag expression %q: %w", expr, err)
	}
	return re.MatchString, nil
}
