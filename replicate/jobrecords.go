package replicate

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"

	"github.com/wharf-registry/wharf/storage"
)

// A job in the index: one record for the job (its report, with the tally)
// and one per image, written as the job goes and read back a page at a
// time, or whole when a job resumes.

// Resume restarts every job the index holds as queued or running: the
// ones a shutdown or a crash interrupted. Images already done stay done;
// the others start over, and blobs already on the target are skipped. A
// job whose records cannot be read whole is failed, with the reason,
// never run with part of its images.
func (c *Jobs) Resume() error {
	if err := c.store.SweepJobImages(); err != nil {
		c.log.Warn("leftover prefetch image records not removed", "error", err)
	}
	docs, err := c.store.Jobs()
	if err != nil {
		return err
	}
	var errs []error
	for _, doc := range docs {
		var job Job
		if err := json.Unmarshal(doc, &job); err != nil {
			errs = append(errs, fmt.Errorf("prefetch job record unreadable: %w", err))
			continue
		}
		if job.State != StateQueued && job.State != StateRunning {
			continue
		}
		if err := c.resume(job); err != nil {
			errs = append(errs, fmt.Errorf("prefetch job %s: %w", job.ID, err))
		}
	}
	return errors.Join(errs...)
}

// resume reads a job's images back and starts it again, unless another
// replica took it over meanwhile.
func (c *Jobs) resume(job Job) error {
	if by, claimed := c.claimedElsewhere(job.ID); claimed {
		c.log.Info("prefetch job taken over by another replica while this one was down; dropping this one's copy", "job", job.ID, "replica", by)
		return c.store.DeleteJob(job.ID)
	}
	var images []*Image
	var bad error
	err := c.store.JobImages(job.ID, -1, func(i int, doc []byte) bool {
		img := &Image{}
		if bad = json.Unmarshal(doc, img); bad != nil {
			return false
		}
		img.Index = i
		images = append(images, img)
		return true
	})
	if err = cmp.Or(err, bad); err == nil && job.Images == 0 {
		job.Images = len(images) // a record from before jobs counted their images
	}
	if err == nil && len(images) != job.Images {
		err = fmt.Errorf("%d of its %d image records are missing", job.Images-len(images), job.Images)
	}
	job.Tally = Tally{}
	for _, img := range images {
		if img.State != StateDone {
			img.State = StateQueued
		}
		job.Tally.count(img, 1)
	}
	r, ctx := newRun(job, images)
	if err != nil {
		r.cancel()
		// Fail it where everyone sees it, rather than run part of it.
		now := c.now().UTC()
		r.update(func(j *Job) { j.State, j.Error, j.Finished = StateFailed, "not resumed: "+err.Error(), &now })
		if serr := c.persist(r); serr != nil {
			c.metrics.jobSaveFailed.Inc()
		}
		return err
	}
	r.job.State = StateQueued
	if err := c.persist(r, images...); err != nil {
		r.cancel()
		c.metrics.jobSaveFailed.Inc()
		return fmt.Errorf("%w: %w", ErrJobNotSaved, err)
	}
	c.log.Info("prefetch job resumed", "job", job.ID, "images", len(images), "done", r.job.Done)
	c.startJob(ctx, r)
	return nil
}

// persist writes the job's record and those of imgs to the index.
func (c *Jobs) persist(r *run, imgs ...*Image) error {
	r.mu.Lock()
	doc, err := json.Marshal(r.job)
	docs := make(map[int][]byte, len(imgs))
	for _, img := range imgs {
		if err == nil {
			docs[img.Index], err = json.Marshal(img)
		}
	}
	r.mu.Unlock()
	if err != nil {
		return err
	}
	return c.store.PutJob(r.job.ID, doc, docs)
}

// save persists a step of a running job. A job whose state cannot be
// written stops and fails, with the reason as its error and in
// wharf_prefetch_job_save_failures_total: it must never go on doing work
// its record does not show.
func (c *Jobs) save(r *run, imgs ...*Image) {
	err := c.persist(r, imgs...)
	if err == nil {
		return
	}
	c.metrics.jobSaveFailed.Inc()
	c.log.Error("prefetch job state not saved; the job stops", "job", r.job.ID, "error", err)
	r.update(func(j *Job) {
		if r.saveErr == nil {
			r.saveErr = err
			j.Error = fmt.Sprintf("%v: %v", ErrJobNotSaved, err)
		}
	})
	r.cancel()
}

// Job returns the report of job id.
func (c *Jobs) Job(id string) (Job, error) {
	c.mu.Lock()
	r, ok := c.jobs[id]
	c.mu.Unlock()
	if ok {
		return r.snapshot(), nil
	}
	doc, err := c.store.Job(id)
	if errors.Is(err, storage.ErrNotFound) {
		return Job{}, fmt.Errorf("%w: %s", ErrJobNotFound, id)
	}
	if err != nil {
		return Job{}, err
	}
	var job Job
	return job, json.Unmarshal(doc, &job)
}

// MaxImagesPage bounds a page of Images.
const MaxImagesPage = 1000

// Images returns up to n images of job id (at most MaxImagesPage) after
// index after (-1: from the first), those in one of states if any are
// given, and whether more may follow.
func (c *Jobs) Images(id string, states []State, after, n int) ([]Image, bool, error) {
	n = min(max(n, 1), MaxImagesPage)
	var page []Image
	more := false
	take := func(img *Image) bool {
		if len(states) > 0 && !slices.Contains(states, img.State) {
			return true
		}
		if len(page) == n {
			more = true
			return false
		}
		cp := *img
		cp.NotCopied = slices.Clone(img.NotCopied)
		page = append(page, cp)
		return true
	}
	c.mu.Lock()
	r, live := c.jobs[id]
	c.mu.Unlock()
	if live {
		r.mu.Lock()
		defer r.mu.Unlock()
		for _, img := range r.images[min(max(after+1, 0), len(r.images)):] {
			if !take(img) {
				break
			}
		}
		return page, more, nil
	}
	if _, err := c.Job(id); err != nil {
		return nil, false, err
	}
	var bad error
	err := c.store.JobImages(id, after, func(i int, doc []byte) bool {
		var img Image
		if bad = json.Unmarshal(doc, &img); bad != nil {
			return false
		}
		img.Index = i
		return take(&img)
	})
	return page, more, cmp.Or(err, bad)
}

// List returns every job's report, oldest first. It reads the jobs'
// records only, never their images.
func (c *Jobs) List() ([]Job, error) {
	docs, err := c.store.Jobs()
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	live := make(map[string]*run, len(c.jobs))
	maps.Copy(live, c.jobs)
	c.mu.Unlock()
	jobs := make([]Job, 0, len(docs))
	for _, doc := range docs {
		var job Job
		if err := json.Unmarshal(doc, &job); err != nil {
			continue
		}
		if r, ok := live[job.ID]; ok {
			job = r.snapshot()
		}
		jobs = append(jobs, job)
	}
	return jobs, nil
}

// prune forgets the oldest finished jobs beyond Config.KeepJobs.
func (c *Jobs) prune() {
	docs, err := c.store.Jobs()
	if err != nil {
		return
	}
	var finished []string
	for _, doc := range docs {
		var j Job
		if json.Unmarshal(doc, &j) == nil && j.Finished != nil {
			finished = append(finished, j.ID)
		}
	}
	for _, id := range finished[:max(0, len(finished)-c.keepJobs)] {
		if err := c.store.DeleteJob(id); err != nil {
			c.log.Warn("old prefetch job not forgotten", "job", id, "error", err)
		}
	}
}
