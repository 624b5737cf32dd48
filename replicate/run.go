package replicate

import (
	"cmp"
	"context"
	"sync"

	"github.com/opencontainers/go-digest"
	"golang.org/x/sync/errgroup"

	"github.com/wharf-registry/wharf/audit"
)

// Running jobs: each job is a goroutine that copies its images a few at a
// time and settles the job's state, or, on shutdown, leaves it to be
// resumed.

// run is a job in memory while it is queued or running.
type run struct {
	mu        sync.Mutex
	job       Job
	images    []*Image
	cancel    context.CancelFunc
	cancelled bool          // by the user, not by shutdown
	saveErr   error         // the job's state could not be written: it stops and fails
	done      chan struct{} // closed when the job's goroutine ends
	locks     map[digest.Digest]*sync.Mutex
	onTarget  map[string]bool // "<target repo>@<digest>" this job saw on the target
	platforms []Platform      // the job's filter
}

// newRun prepares job to run; ctx is what its goroutine runs on, ended by
// r.cancel.
func newRun(job Job, images []*Image) (r *run, ctx context.Context) {
	ctx, cancel := context.WithCancel(context.Background())
	return &run{job: job, images: images, cancel: cancel, cancelled: job.Cancel, done: make(chan struct{}),
		locks: map[digest.Digest]*sync.Mutex{}, onTarget: map[string]bool{}, platforms: parsePlatforms(job.Platforms)}, ctx
}

// startJob runs r, whose records are saved, on ctx.
func (c *Jobs) startJob(ctx context.Context, r *run) {
	c.mu.Lock()
	c.jobs[r.job.ID] = r
	c.jobsRunning.Add(1)
	c.mu.Unlock()
	if c.closing.Load() || r.cancelled {
		r.cancel() // shutting down: resumed at the next start; or cancelled before a restart
	}
	go c.runJob(ctx, r)
}

// runJob copies the job's images, a few at a time, and settles its state.
// On shutdown it leaves the job as it stands, to be resumed.
func (c *Jobs) runJob(ctx context.Context, r *run) {
	defer c.jobsRunning.Done()
	defer close(r.done)
	defer r.cancel()
	if ctx.Err() == nil {
		c.share(r, false) // this replica's, for the fleet to take over if it goes down
	}
	select {
	case c.jobSlots <- struct{}{}:
		defer func() { <-c.jobSlots }()
	case <-ctx.Done():
	}
	r.update(func(j *Job) {
		if ctx.Err() == nil {
			now := c.now().UTC()
			j.State, j.Started = StateRunning, &now
		}
	})
	c.save(r)
	c.metrics.jobs.Inc()
	defer c.metrics.jobs.Dec()
	var g errgroup.Group
	g.SetLimit(c.jobImages)
	for _, img := range r.images {
		if ctx.Err() != nil {
			break
		}
		if r.state(img) == StateDone {
			continue
		}
		g.Go(func() error {
			c.copyImage(ctx, r, img)
			return nil
		})
	}
	g.Wait()
	if c.closing.Load() && !r.isCancelled() && r.failure() == nil {
		c.save(r) // shutting down: resumed at the next start
		c.forget(r)
		return
	}
	c.settle(r)
}

// settle ends a job: every image not done is accounted for (cancelled, or
// failed with the job's own failure), the job's state follows, and all of
// it is saved. A job whose final state cannot be saved stays in memory,
// failed, so that the API still shows it until the next start resumes it.
func (c *Jobs) settle(r *run) {
	fail := r.failure()
	for _, img := range r.images {
		r.change(img, func(img *Image) {
			if img.State != StateQueued && img.State != StateRunning {
				return
			}
			if fail != nil {
				img.State, img.Error = StateFailed, "not copied: "+ErrJobNotSaved.Error()
			} else {
				img.State = StateCancelled
			}
		})
	}
	r.update(func(j *Job) {
		now := c.now().UTC()
		j.Finished = &now
		j.State = settledState(j.Tally, j.Images)
		if fail != nil {
			j.State = StateFailed
		}
	})
	if err := c.persist(r, r.images...); err != nil {
		c.metrics.jobSaveFailed.Inc()
		r.update(func(j *Job) {
			j.State, j.Error = StateFailed, cmp.Or(j.Error, ErrJobNotSaved.Error()+": "+err.Error())
		})
		c.log.Error("prefetch job's end not saved; it is resumed at the next start", "job", r.job.ID, "error", err)
	} else {
		c.forget(r)
		c.share(r, true)
	}
	snap := r.snapshot()
	c.log.Info("prefetch job finished", "job", snap.ID, "state", snap.State, "images", snap.Images,
		"done", snap.Done, "failed", snap.Failed, "cancelled", snap.Cancelled)
}

// forget drops a job whose record says all there is to say.
func (c *Jobs) forget(r *run) {
	c.mu.Lock()
	delete(c.jobs, r.job.ID)
	c.mu.Unlock()
}

// settledState decides a finished job's state from its images'.
func settledState(t Tally, images int) State {
	switch {
	case t.Done == images:
		return StateDone
	case t.Cancelled > 0:
		return StateCancelled
	case t.Done == 0:
		return StateFailed
	}
	return StatePartial
}

// copyImage runs one image and records how it ended.
func (c *Jobs) copyImage(ctx context.Context, r *run, img *Image) {
	start := c.now().UTC()
	r.change(img, func(img *Image) {
		img.State, img.Started, img.Finished, img.Error = StateRunning, &start, nil, ""
		// Counts are of this attempt: after a restart, what the first one
		// pushed shows as skipped.
		img.BytesDone, img.BytesFetched, img.BytesCached, img.BytesPushed = 0, 0, 0, 0
		img.BlobsPushed, img.BlobsSkipped, img.BlobsMounted = 0, 0, 0
	})
	c.save(r, img)
	err := c.promote(ctx, r, img)
	if r.failure() != nil || (c.closing.Load() && !r.isCancelled()) {
		// Stopped by a failure to save or by a shutdown: settle or the
		// next start decides.
		r.change(img, func(img *Image) { img.State = StateQueued })
		return
	}
	r.change(img, func(img *Image) {
		end := c.now().UTC()
		img.Finished, img.Seconds = &end, end.Sub(start).Seconds()
		switch {
		case r.cancelled:
			img.State = StateCancelled
		case err != nil:
			img.State, img.Error = StateFailed, public(err)
		default:
			img.State, img.BytesDone = StateDone, img.BytesTotal // resumed chunks may have counted twice
		}
	})
	state := r.state(img)
	c.metrics.images.WithLabelValues(string(state)).Inc()
	c.auditPush(r, img, state)
	if state == StateDone && r.job.Rule != "" && img.Tag != "" {
		// What the rule pushed: the next run leaves it be until it moves
		// or is signed again.
		var refs string
		if !r.job.SkipReferrers {
			var err error
			if refs, err = c.referrerPrint(ctx, img.Upstream, img.Repository, img.Digest); err != nil {
				refs = "unknown" // the next run looks again
			}
		}
		if err := c.store.SetReplicated(r.job.Rule, img.Upstream, img.Repository, img.Tag, img.Digest, refs); err != nil {
			c.log.Warn("replicated tag not recorded; the next run pushes it again", "rule", r.job.Rule, "image", img.Source, "error", err)
		}
	}
	if err != nil && !r.isCancelled() {
		c.log.Warn("prefetch image failed", "job", r.job.ID, "image", img.Source, "error", err)
	}
	c.save(r, img)
}

// update changes the job's own fields under its lock.
func (r *run) update(fn func(*Job)) {
	r.mu.Lock()
	defer r.mu.Unlock()
	fn(&r.job)
}

// change applies fn to img under the job's lock and carries the effect on
// the image's state and bytes over to the job's tally.
func (r *run) change(img *Image, fn func(*Image)) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.job.Tally.count(img, -1)
	fn(img)
	r.job.Tally.count(img, 1)
}

// state reads an image's state under the job's lock.
func (r *run) state(img *Image) State {
	r.mu.Lock()
	defer r.mu.Unlock()
	return img.State
}

func (r *run) isCancelled() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.cancelled
}

// failure is the error that stopped the job, if its state could not be
// saved.
func (r *run) failure() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.saveErr
}

// snapshot is a copy of the job's report.
func (r *run) snapshot() Job {
	r.mu.Lock()
	defer r.mu.Unlock()
	j := r.job
	j.Platforms = append([]string(nil), r.job.Platforms...)
	return j
}

// lock serialises pushes of one digest within a job, so the second push of
// a shared layer finds the first on the target and mounts or skips it.
func (r *run) lock(dgst digest.Digest) *sync.Mutex {
	r.mu.Lock()
	defer r.mu.Unlock()
	l, ok := r.locks[dgst]
	if !ok {
		l = &sync.Mutex{}
		r.locks[dgst] = l
	}
	return l
}

// seenOnTarget reports whether this job already found or put dgst in repo
// on its target; sawOnTarget records that it did. A job of thousands of
// tags sharing their layers asks the target about each blob once.
func (r *run) seenOnTarget(repo string, dgst digest.Digest) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.onTarget[repo+"@"+dgst.String()]
}

func (r *run) sawOnTarget(repo string, dgst digest.Digest) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.onTarget[repo+"@"+dgst.String()] = true
}

// auditPush records an image a job put on its target, or failed to.
func (c *Jobs) auditPush(r *run, img *Image, state State) {
	if c.audit == nil || r.job.PushTo == "" || state == StateQueued {
		return
	}
	r.mu.Lock()
	snap := *img
	r.mu.Unlock()
	rec := audit.Record{Action: audit.Push, Upstream: snap.Upstream, Target: r.job.PushTo, Repository: cmp.Or(snap.TargetRepo, snap.Repository),
		Reference: cmp.Or(snap.Tag, snap.Reference), Digest: string(cmp.Or(snap.FilteredDigest, snap.Digest)), Kind: "image",
		Result: "pushed", Job: r.job.ID, Rule: r.job.Rule, Error: snap.Error}
	switch state {
	case StateFailed:
		rec.Result = "failed"
	case StateCancelled:
		rec.Result = "cancelled"
	}
	c.audit.Write(rec)
}
