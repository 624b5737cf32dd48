package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"text/tabwriter"

	"github.com/wharf-registry/wharf/api"
	"github.com/wharf-registry/wharf/replicate"
)

// rules checks every replication rule.
func (c *fileConfig) rules() ([]replicate.Rule, error) {
	var out []replicate.Rule
	for _, rc := range c.Replication {
		r, err := rc.Rule()
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, nil
}

// replicateCmd lists the rules, or runs one now.
func replicateCmd(args []string, stdout, stderr io.Writer, tty bool) error {
	fs := newCommand("replicate", stdout, stderr)
	cf := addClientFlags(fs.FlagSet)
	now := fs.Bool("now", false, "run the rule now: push what is new or moved upstream")
	wait := fs.Bool("wait", false, "with --now, follow the run's job to its end")
	dry := fs.Bool("dry-run", false, "list what a run of RULE would push now (images, and images signed since), pushing nothing")
	output := fs.String("output", "text", "text or json (the API's fields)")
	rest, err := fs.parse(args)
	if err != nil {
		return err
	}
	if len(rest) > 1 || (len(rest) == 1) != (*now || *dry) || (*wait && !*now) || (*now && *dry) {
		return usagef("replicate", "usage: wharf replicate [RULE --now [--wait] | RULE --dry-run]")
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
		if *output == "json" {
			return writeJob(stdout, list)
		}
		tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "RULE\tTARGET\tTRIGGERS\tLAST RUN\tPENDING\tLAG\tFAILURES")
		for _, r := range list.Rules {
			last := "-"
			if r.LastRun != nil {
				last = r.LastRun.At.Format("2006-01-02 15:04:05") + " " + r.LastRun.Trigger + " " + r.LastRun.State
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%.0fs\t%d\n", r.Name, r.Target, strings.Join(r.Triggers, ","), last, r.Pending, r.LagSeconds, r.Failures)
			for _, l := range r.LastRuns { // each trigger's own: a later run of one hides no other's
				what := l.State
				if l.Job != "" {
					what += fmt.Sprintf(", %d images, job %s", l.Images, l.Job)
				}
				fmt.Fprintf(tw, "\t\t  %s\t%s %s\t\t\t\n", l.Trigger, l.At.Format("2006-01-02 15:04:05"), what)
			}
		}
		return tw.Flush()
	}
	var out api.RuleRun
	if *dry {
		if err := c.call(ctx, http.MethodPost, "/api/v1/replication/"+url.PathEscape(rest[0])+"/run?dry_run=true", "application/json", []byte("{}"), &out); err != nil {
			return err
		}
		if *output == "json" {
			return writeJob(stdout, out)
		}
		for _, p := range out.WouldPush {
			fmt.Fprintf(stdout, "%-9s %s -> %s %s\n", p.Why, p.Source, p.Target, p.Digest)
		}
		if out.Problems != "" {
			fmt.Fprintln(stderr, "some repositories were not listed:", out.Problems)
		}
		if len(out.WouldPush) == 0 {
			fmt.Fprintln(stderr, "nothing new to replicate")
		}
		return nil
	}
	if err := c.call(ctx, http.MethodPost, "/api/v1/replication/"+url.PathEscape(rest[0])+"/run", "application/json", []byte("{}"), &out); err != nil {
		return err
	}
	if *output == "json" && !*wait {
		return writeJob(stdout, out)
	}
	if out.Problems != "" {
		fmt.Fprintln(stderr, "some repositories were not listed:", out.Problems)
	}
	if out.Job == nil {
		fmt.Fprintln(stderr, "nothing new to replicate")
		return nil
	}
	if *output != "json" {
		fmt.Fprintln(stdout, out.Job.ID)
	}
	if !*wait {
		return nil
	}
	job, err := follow(ctx, c, *out.Job, stderr, tty)
	if err != nil {
		return err
	}
	if *output == "json" {
		if err := writeJob(stdout, job); err != nil {
			return err
		}
	}
	if job.State != api.StateDone {
		return fmt.Errorf("job %s ended %s", job.ID, job.State)
	}
	return nil
}
