package api

import "github.com/wharf-registry/wharf/replicate"

// From replicate's records to the wire types: the contract stays put when
// the records change.

func jobOf(j replicate.Job) Job {
	return Job{ID: j.ID, State: State(j.State), Error: j.Error, Platforms: j.Platforms, PushTo: j.PushTo, Pin: j.Pin,
		SkipReferrers: j.SkipReferrers, FilterIndex: j.FilterIndex, Rule: j.Rule, RetryOf: j.RetryOf, Owner: j.Owner, Cancel: j.Cancel,
		Created: j.Created, Started: j.Started, Finished: j.Finished, Images: j.Images,
		Queued: j.Queued, Running: j.Running, Done: j.Done, Failed: j.Failed, Cancelled: j.Cancelled,
		BytesTotal: j.BytesTotal, BytesDone: j.BytesDone, BytesFetched: j.BytesFetched, BytesPushed: j.BytesPushed}
}

func imageOf(i replicate.Image) Image {
	img := Image{Index: i.Index, Source: i.Source, Upstream: i.Upstream, Repository: i.Repository, Reference: i.Reference,
		Tag: i.Tag, Target: i.Target, TargetRepo: i.TargetRepo, State: State(i.State), Digest: i.Digest, MediaType: i.MediaType,
		BytesTotal: i.BytesTotal, BytesDone: i.BytesDone, BytesFetched: i.BytesFetched, BytesCached: i.BytesCached,
		BytesPushed: i.BytesPushed, BlobsPushed: i.BlobsPushed, BlobsSkipped: i.BlobsSkipped, BlobsMounted: i.BlobsMounted,
		Referrers: i.Referrers, FilteredDigest: i.FilteredDigest, Note: i.Note, Started: i.Started, Finished: i.Finished,
		Seconds: i.Seconds, Error: i.Error}
	for _, c := range i.NotCopied {
		img.NotCopied = append(img.NotCopied, SkippedChild{Digest: c.Digest, Platform: c.Platform})
	}
	return img
}

func pinOf(p replicate.Pin) Pin {
	return Pin{Upstream: p.Upstream, Repository: p.Repository, Reference: p.Reference, Digest: p.Digest}
}

func ruleOf(s replicate.RuleStatus) Rule {
	r := Rule{Name: s.Name, Target: s.Target, Triggers: s.Triggers, NextRun: s.NextRun, Pending: s.Pending,
		LagSeconds: s.LagSeconds, Runs: s.Runs, Failures: s.Failures}
	if l := s.LastRun; l != nil {
		r.LastRun = &Run{Trigger: l.Trigger, At: l.At, Job: l.Job, State: l.State, Images: l.Images, Error: l.Error}
	}
	for _, l := range s.LastRuns {
		r.LastRuns = append(r.LastRuns, Run{Trigger: l.Trigger, At: l.At, Job: l.Job, State: l.State, Images: l.Images, Error: l.Error})
	}
	return r
}

func renamesOf(rs []Rename) []replicate.Rename {
	out := make([]replicate.Rename, len(rs))
	for i, r := range rs {
		out[i] = replicate.Rename{From: r.From, To: r.To}
	}
	return out
}

// each converts a list.
func each[T, U any](in []T, f func(T) U) []U {
	out := make([]U, len(in))
	for i, v := range in {
		out[i] = f(v)
	}
	return out
}
