package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/wharf-registry/wharf/api"
	"github.com/wharf-registry/wharf/replicate"
	"github.com/wharf-registry/wharf/route"
)

// ruleConfig is one entry of replication: in the config file.
type ruleConfig struct {
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

// rule checks rc and turns it into a replicate.Rule.
func (rc ruleConfig) rule() (replicate.Rule, error) {
	r := replicate.Rule{Name: rc.Name, Sources: rc.Sources, Target: rc.Target, Rename: renames(rc.Rename),
		SkipReferrers: rc.Referrers != nil && !*rc.Referrers, OnPull: rc.OnPull, Schedule: rc.Schedule}
	fail := func(err error) (replicate.Rule, error) {
		return replicate.Rule{}, fmt.Errorf("replication rule %s: %w", rc.Name, err)
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
		p, err := replicate.ParsePlatform(s)
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

// rules checks every replication rule.
func (c *fileConfig) rules() ([]replicate.Rule, error) {
	var out []replicate.Rule
	for _, rc := range c.Replication {
		r, err := rc.rule()
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, nil
}

// replicateCmd lists the rules, or runs one now.
func replicateCmd(args []string, stdout, stderr io.Writer, tty bool) error {
	fs := flag.NewFlagSet("replicate", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cf := addClientFlags(fs)
	now := fs.Bool("now", false, "run the rule now: push what is new or moved upstream")
	wait := fs.Bool("wait", false, "with --now, follow the run's job to its end")
	rest, err := parseInterleaved(fs, args)
	if err != nil {
		return err
	}
	if len(rest) > 1 || (len(rest) == 1) != *now || (*wait && !*now) {
		return errors.New("usage: wharf replicate [RULE --now [--wait]]")
	}
	c, err := cf.client()
	if err != nil {
		return err
	}
	ctx := context.Background()
	if !*now {
		var list api.RuleList
		if err := c.call(ctx, http.MethodGet, "/api/v1/replication", "", nil, &list); err != nil {
			return err
		}
		tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "RULE\tTARGET\tTRIGGERS\tLAST RUN\tPENDING\tLAG\tFAILURES")
		for _, r := range list.Rules {
			last := "-"
			if r.LastRun != nil {
				last = r.LastRun.At.Format("2006-01-02 15:04:05") + " " + r.LastRun.Trigger + " " + r.LastRun.State
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%.0fs\t%d\n", r.Name, r.Target, strings.Join(r.Triggers, ","), last, r.Pending, r.LagSeconds, r.Failures)
		}
		return tw.Flush()
	}
	var out api.RuleRun
	if err := c.call(ctx, http.MethodPost, "/api/v1/replication/"+url.PathEscape(rest[0])+"/run", "application/json", []byte("{}"), &out); err != nil {
		return err
	}
	if out.Problems != "" {
		fmt.Fprintln(stderr, "some repositories were not listed:", out.Problems)
	}
	if out.Job == nil {
		fmt.Fprintln(stderr, "nothing new to replicate")
		return nil
	}
	fmt.Fprintln(stdout, out.Job.ID)
	if !*wait {
		return nil
	}
	job, err := follow(ctx, c, *out.Job, stderr, tty)
	if err != nil {
		return err
	}
	if job.State != api.StateDone {
		return fmt.Errorf("job %s ended %s", job.ID, job.State)
	}
	return nil
}

// renames is a rule's rename map as the rename list jobs take; the longest
// prefix wins either way (replicate.TargetRepo), so the order is only for
// reading.
func renames(m map[string]string) []replicate.Rename {
	var out []replicate.Rename
	for _, from := range slices.Sorted(maps.Keys(m)) {
		out = append(out, replicate.Rename{From: from, To: m[from]})
	}
	return out
}
