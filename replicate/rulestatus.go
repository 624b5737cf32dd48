package replicate

import (
	"maps"
	"slices"

	"github.com/prometheus/client_golang/prometheus"
)

// Status reports every rule, in the order configured.
func (rs *Rules) Status() []RuleStatus {
	out := make([]RuleStatus, 0, len(rs.rules))
	now := rs.jobs.now()
	for _, r := range rs.rules {
		r.mu.Lock()
		s := RuleStatus{Name: r.Name, Target: r.Target, Pending: len(r.pending), Runs: r.runs, Failures: r.failures, Triggers: []string{"manual"}}
		if r.OnPull {
			s.Triggers = append(s.Triggers, "on_pull")
		}
		if r.sched != nil {
			s.Triggers = append(s.Triggers, "schedule "+r.Schedule)
			if !r.next.IsZero() {
				next := r.next
				s.NextRun = &next
			}
		}
		for _, p := range r.pending {
			s.LagSeconds = max(s.LagSeconds, now.Sub(p.since).Seconds())
		}
		if r.last != nil {
			last := *r.last
			s.LastRun = &last
		}
		for _, t := range slices.Sorted(maps.Keys(r.lasts)) {
			s.LastRuns = append(s.LastRuns, r.lasts[t])
		}
		r.mu.Unlock()
		if s.LastRun != nil && s.LastRun.Job != "" {
			if job, err := rs.jobs.Job(s.LastRun.Job); err == nil {
				s.LastRun.State = string(job.State)
				s.Failures += job.Failed
			}
		}
		for i, l := range s.LastRuns {
			if job, err := rs.jobs.Job(l.Job); l.Job != "" && err == nil {
				s.LastRuns[i].State = string(job.State)
			}
		}
		out = append(out, s)
	}
	return out
}

var (
	descPending  = prometheus.NewDesc("wharf_replication_pending", "Tags waiting for a replication rule's next run, by rule.", []string{"rule"}, nil)
	descLag      = prometheus.NewDesc("wharf_replication_lag_seconds", "Time since a rule's oldest pending tag was seen, by rule.", []string{"rule"}, nil)
	descRuns     = prometheus.NewDesc("wharf_replication_runs_total", "Runs of a replication rule, by rule (those with nothing new included).", []string{"rule"}, nil)
	descFailures = prometheus.NewDesc("wharf_replication_failures_total", "Runs that could not start and images that failed, by rule (since start, last run's images).", []string{"rule"}, nil)
)

// rulesCollector reports the rules' state at each scrape; rule names come
// from the config, so the series are bounded.
type rulesCollector struct{ rs *Rules }

func (c rulesCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descPending, descLag, descRuns, descFailures} {
		ch <- d
	}
}

func (c rulesCollector) Collect(ch chan<- prometheus.Metric) {
	for _, s := range c.rs.Status() {
		ch <- prometheus.MustNewConstMetric(descPending, prometheus.GaugeValue, float64(s.Pending), s.Name)
		ch <- prometheus.MustNewConstMetric(descLag, prometheus.GaugeValue, s.LagSeconds, s.Name)
		ch <- prometheus.MustNewConstMetric(descRuns, prometheus.CounterValue, float64(s.Runs), s.Name)
		ch <- prometheus.MustNewConstMetric(descFailures, prometheus.CounterValue, float64(s.Failures), s.Name)
	}
}
