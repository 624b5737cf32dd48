package cache

import (
	"context"
	"slices"
	"sync"

	"github.com/opencontainers/go-digest"
	"golang.org/x/sync/errgroup"
)

// Running jobs: each job is a goroutine that copies its images a few at a
// time and settles the job's state, or, on shutdown, leaves it to be
// resumed.

// run is a job in memory while it is queued or running.
type run struct {
	mu        sync.Mutex
	job       Job
	cancel    context.CancelFunc
	cancelled bool          // by the user, not by shutdown
	done      chan struct{} // closed when the job's goroutine ends
	locks     map[digest.Digest]*sync.Mutex
	platforms []Platform // the job's filter
}

func (c *Cache) startJob(job Job) *run {
	ctx, cancel := context.WithCancel(context.Background())
	r := &run{job: job, cancel: cancel, done: make(chan struct{}), locks: map[digest.Digest]*sync.Mutex{},
		platforms: parsePlatforms(job.Platforms)}
	c.saveAll(r)
	c.mu.Lock()
	c.jobs[job.ID] = r
	c.jobsRunning.Add(1)
	c.mu.Unlock()
	if c.closing.Load() {
		cancel() // resumed at the next start
	}
	go c.runJob(ctx, r)
	return r
}

// runJob copies the job's images, a few at a time, and settles its state.
// On shutdown it leaves the job as it stands, to be resumed.
func (c *Cache) runJob(ctx context.Context, r *run) {
	defer c.jobsRunning.Done()
	defer close(r.done)
	defer r.cancel()
	defer func() {
		c.mu.Lock()
		delete(c.jobs, r.job.ID)
		c.mu.Unlock()
	}()
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
	for _, img := range r.job.Images {
		if img.State == StateDone || ctx.Err() != nil {
			continue
		}
		g.Go(func() error {
			c.copyImage(ctx, r, img)
			return nil
		})
	}
	g.Wait()
	if c.closing.Load() && !r.isCancelled() {
		c.save(r) // shutting down: resumed at the next start
		return
	}
	r.update(func(j *Job) {
		now := c.now().UTC()
		j.Finished = &now
		for _, img := range j.Images {
			if img.State == StateQueued || img.State == StateRunning {
				img.State = StateCancelled
			}
		}
		j.State = settle(j.Images)
	})
	c.saveAll(r)
	snap := r.snapshot()
	c.log.Info("prefetch job finished", "job", snap.ID, "state", snap.State, "images", len(snap.Images))
}

// settle decides a finished job's state from its images'.
func settle(imgs []*Image) string {
	var done, failed, cancelled int
	for _, img := range imgs {
		switch img.State {
		case StateDone:
			done++
		case StateCancelled:
			cancelled++
		default:
			failed++
		}
	}
	switch {
	case done == len(imgs):
		return StateDone
	case cancelled > 0:
		return StateCancelled
	case done == 0:
		return StateFailed
	}
	return StatePartial
}

// copyImage runs one image and records how it ended.
func (c *Cache) copyImage(ctx context.Context, r *run, img *Image) {
	start := c.now().UTC()
	r.update(func(*Job) {
		img.State, img.Started, img.Finished, img.Error = StateRunning, &start, nil, ""
		// Counts are of this attempt: after a restart, what the first one
		// pushed shows as skipped.
		img.BytesDone, img.BytesFetched, img.BytesCached, img.BytesPushed = 0, 0, 0, 0
		img.BlobsPushed, img.BlobsSkipped, img.BlobsMounted = 0, 0, 0
	})
	c.save(r, img)
	err := c.promote(ctx, r, img)
	if c.closing.Load() && !r.isCancelled() {
		r.update(func(*Job) { img.State = StateQueued })
		return
	}
	r.update(func(*Job) {
		end := c.now().UTC()
		img.Finished, img.Seconds = &end, end.Sub(start).Seconds()
		switch {
		case r.cancelled:
			img.State = StateCancelled
		case err != nil:
			img.State, img.Error = StateFailed, err.Error()
		default:
			img.State, img.BytesDone = StateDone, img.BytesTotal // resumed chunks may have counted twice
		}
	})
	c.metrics.images.WithLabelValues(img.State).Inc()
	if err != nil && !r.isCancelled() {
		c.log.Warn("prefetch image failed", "job", r.job.ID, "image", img.Source, "error", err)
	}
	c.save(r, img)
}

func (r *run) update(fn func(*Job)) {
	r.mu.Lock()
	defer r.mu.Unlock()
	fn(&r.job)
}

func (r *run) isCancelled() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.cancelled
}

// snapshot is a deep copy of the report.
func (r *run) snapshot() Job {
	r.mu.Lock()
	defer r.mu.Unlock()
	j := r.job
	j.Images = make([]*Image, len(r.job.Images))
	for i, img := range r.job.Images {
		cp := *img
		cp.NotCopied = slices.Clone(img.NotCopied)
		j.Images[i] = &cp
	}
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

// stopJobs interrupts every job, leaving each saved as it stood so that
// ResumeJobs picks it up, and waits for them to stop.
func (c *Cache) stopJobs() {
	c.closing.Store(true)
	c.mu.Lock()
	for _, r := range c.jobs {
		r.cancel()
	}
	c.mu.Unlock()
	c.jobsRunning.Wait()
}
