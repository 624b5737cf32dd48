package replicate

import (
	"errors"
	"fmt"
	"maps"
	"slices"

	"github.com/wharf-registry/wharf/route"
)

// RuleConfig is one entry of the configuration file's replication:
// block; Rule checks it.
type RuleConfig struct {
	Name      string            `yaml:"name"`
	Sources   []string          `yaml:"sources"`
	Tags      string            `yaml:"tags"`   // a regular expression on tags
	Semver    string            `yaml:"semver"` // or a semantic version range
	Target    string            `yaml:"target"`
	Rename    map[string]string `yaml:"rename"`
	Platforms []string          `yaml:"platforms"`
	Referrers *bool             `yaml:"referrers"`
	Index     string            `yaml:"index"`
	OnPull    bool              `yaml:"on_pull"`
	Schedule  string            `yaml:"schedule"`
}

// Rule checks rc and turns it into a Rule.
func (rc RuleConfig) Rule() (Rule, error) {
	r := Rule{Name: rc.Name, Sources: rc.Sources, Target: rc.Target, Rename: renamesOf(rc.Rename),
		SkipReferrers: rc.Referrers != nil && !*rc.Referrers, OnPull: rc.OnPull, Schedule: rc.Schedule}
	fail := func(err error) (Rule, error) {
		return Rule{}, fmt.Errorf("replication rule %s: %w", rc.Name, err)
	}
	var err error
	switch {
	case rc.Tags != "" && rc.Semver != "":
		return fail(errors.New("set tags (a regular expression) or semver (a range), not both"))
	case rc.Tags != "":
		r.Tags, err = route.Regexp(rc.Tags)
	case rc.Semver != "":
		r.Tags, err = route.Semver(rc.Semver)
	}
	if err != nil {
		return fail(err)
	}
	for _, s := range rc.Platforms {
		p, err := ParsePlatform(s)
		if err != nil {
			return fail(err)
		}
		r.Platforms = append(r.Platforms, p)
	}
	switch rc.Index {
	case "", "verbatim":
	case "filter":
		r.FilterIndex = true
	default:
		return fail(fmt.Errorf("index %q: want verbatim or filter", rc.Index))
	}
	if !rc.OnPull && rc.Schedule == "" {
		return fail(errors.New("no trigger: set on_pull, schedule, or both (a rule also runs with wharf replicate RULE --now)"))
	}
	return r, nil
}

// renamesOf is a rule's rename map as the rename list jobs take; the longest
// prefix wins either way (replicate.TargetRepo), so the order is only for
// reading.
func renamesOf(m map[string]string) []Rename {
	var out []Rename
	for _, from := range slices.Sorted(maps.Keys(m)) {
		out = append(out, Rename{From: from, To: m[from]})
	}
	return out
}
