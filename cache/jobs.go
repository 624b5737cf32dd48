package cache

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/wharf-registry/wharf/storage"
)

// Prefetch jobs warm the cache with a list of images and, with a push
// target, copy them there blob for blob. A job lives in the index from the
// moment it is accepted, is saved at every step, and is picked up again
// after a restart: it is never reported done unless every image is.

// Job and image states.
const (
	StateQueued    = "queued"
	StateRunning   = "running"
	StateDone      = "done"
	StateFailed    = "failed"    // a job none of whose images made it, or one image
	StatePartial   = "partial"   // a job some of whose images failed
	StateCancelled = "cancelled" // by DELETE /api/v1/jobs/{id}
)

// ErrJobNotFound says no job has the id asked for.
var ErrJobNotFound = errors.New("no such job")

// ImageRef is one image a job is asked for, already routed to an upstream.
type ImageRef struct {
	Source     string // as the user wrote it, for reports
	Upstream   string
	Repo       string
	Ref        string // tag or digest
	Tag        string // with a digest Ref: the tag to push it under
	TargetRepo string // repository on the push target; "" without one
}

// JobSpec is a prefetch request the proxy has validated.
type JobSpec struct {
	Images    []ImageRef
	Platforms []Platform // empty: every platform
	PushTo    string     // a configured target, or ""
	Pin       bool       // pin each image against eviction
}

// ErrJobNotSaved says a job could not be written to the index: it was not
// accepted, or (as the job's Error) it stopped.
var ErrJobNotSaved = errors.New("job state could not be saved")

// Job is a job's report without its images, which are read a page at a
// time (Cache.JobImages): it is what the API answers for a job and what
// the index keeps as the job's record, whatever the number of images.
type Job struct {
	ID        string     `json:"id"`
	State     string     `json:"state"`
	Error     string     `json:"error,omitempty"` // why the job as a whole failed
	Platforms []string   `json:"platforms,omitempty"`
	PushTo    string     `json:"push_to,omitempty"`
	Pin       bool       `json:"pin,omitempty"`
	Cancel    bool       `json:"cancel_requested,omitempty"` // kept so that a restart finishes the cancel
	Created   time.Time  `json:"created"`
	Started   *time.Time `json:"started,omitempty"`
	Finished  *time.Time `json:"finished,omitempty"`
	Images    int        `json:"images"`
	Tally
}

// Tally counts a job's images by state and sums their byte counts; it is
// kept up to date with every change of an image, so that reading a job
// never means reading its images.
type Tally struct {
	Queued       int   `json:"images_queued"`
	Running      int   `json:"images_running"`
	Done         int   `json:"images_done"`
	Failed       int   `json:"images_failed"`
	Cancelled    int   `json:"images_cancelled"`
	BytesTotal   int64 `json:"bytes_total"`
	BytesDone    int64 `json:"bytes_done"`
	BytesFetched int64 `json:"bytes_fetched"`
	BytesPushed  int64 `json:"bytes_pushed"`
}

// count adds (sign 1) or takes away (-1) img's part of the tally.
func (t *Tally) count(img *Image, sign int) {
	switch img.State {
	case StateQueued:
		t.Queued += sign
	case StateRunning:
		t.Running += sign
	case StateDone:
		t.Done += sign
	case StateFailed:
		t.Failed += sign
	case StateCancelled:
		t.Cancelled += sign
	}
	n := int64(sign)
	t.BytesTotal += n * img.BytesTotal
	t.BytesDone += n * img.BytesDone
	t.BytesFetched += n * img.BytesFetched
	t.BytesPushed += n * img.BytesPushed
}

// Image is the report of one image of a job. Byte counts are of blobs:
// fetched from upstream by this job, already cached, pushed to the target,
// and done out of total (for progress bars).
type Image struct {
	Index        int            `json:"index"` // its place in the job, and the key of its page
	Source       string         `json:"source"`
	Upstream     string         `json:"upstream"`
	Repository   string         `json:"repository"`
	Reference    string         `json:"reference"`
	Tag          string         `json:"tag,omitempty"` // pushed under, when Reference is a digest
	Target       string         `json:"target,omitempty"`
	TargetRepo   string         `json:"target_repository,omitempty"`
	State        string         `json:"state"`
	Digest       digest.Digest  `json:"digest,omitempty"`
	MediaType    string         `json:"media_type,omitempty"`
	NotCopied    []SkippedChild `json:"not_copied,omitempty"`
	BytesTotal   int64          `json:"bytes_total"`
	BytesDone    int64          `json:"bytes_done"`
	BytesFetched int64          `json:"bytes_fetched"`
	BytesCached  int64          `json:"bytes_cached"`
	BytesPushed  int64          `json:"bytes_pushed"`
	BlobsPushed  int            `json:"blobs_pushed"`
	BlobsSkipped int            `json:"blobs_skipped"`
	BlobsMounted int            `json:"blobs_mounted"`
	Started      *time.Time     `json:"started,omitempty"`
	Finished     *time.Time     `json:"finished,omitempty"`
	Seconds      float64        `json:"seconds,omitempty"`
	Error        string         `json:"error,omitempty"`
}

// SkippedChild is a child of an index left out by the platform filter.
type SkippedChild struct {
	Digest   digest.Digest `json:"digest"`
	Platform string        `json:"platform,omitempty"`
}

// HasTarget reports whether jobs may push to a target of that name.
func (c *Cache) HasTarget(name string) bool { _, ok := c.targets[name]; return ok }

// Submit accepts a job, stores it whole and starts it. It fails for a job
// that names something not configured (the proxy has checked everything
// else) and, with ErrJobNotSaved, when the index cannot take it: then
// nothing starts.
func (c *Cache) Submit(spec JobSpec) (Job, error) {
	if len(spec.Images) == 0 {
		return Job{}, errors.New("a job needs at least one image")
	}
	if len(spec.Images) > storage.MaxJobImages {
		return Job{}, fmt.Errorf("a job takes at most %d images", storage.MaxJobImages)
	}
	if spec.PushTo != "" {
		if _, ok := c.targets[spec.PushTo]; !ok {
			return Job{}, fmt.Errorf("%w: no push target %q", ErrUnknown, spec.PushTo)
		}
	}
	var rnd [4]byte
	rand.Read(rnd[:])
	now := c.now().UTC()
	job := Job{
		ID:      fmt.Sprintf("%016x%s", now.UnixNano(), hex.EncodeToString(rnd[:])),
		State:   StateQueued,
		PushTo:  spec.PushTo,
		Pin:     spec.Pin,
		Created: now,
		Images:  len(spec.Images),
	}
	for _, p := range spec.Platforms {
		job.Platforms = append(job.Platforms, p.String())
	}
	images := make([]*Image, 0, len(spec.Images))
	for i, ref := range spec.Images {
		if _, err := c.upstream(ref.Upstream); err != nil {
			return Job{}, err
		}
		img := &Image{Index: i, Source: ref.Source, Upstream: ref.Upstream, Repository: ref.Repo, Reference: ref.Ref, Tag: ref.Tag, State: StateQueued}
		if spec.PushTo != "" {
			if ref.TargetRepo == "" {
				return Job{}, fmt.Errorf("image %s has no target repository", ref.Source)
			}
			img.TargetRepo = ref.TargetRepo
			img.Target = targetRef(ref.TargetRepo, cmp.Or(ref.Tag, ref.Ref))
		}
		job.Tally.count(img, 1)
		images = append(images, img)
	}
	c.prune()
	r, ctx := newRun(job, images)
	if err := c.persist(r, images...); err != nil {
		r.cancel()
		c.metrics.jobSaveFailed.Inc()
		return Job{}, fmt.Errorf("%w: %w", ErrJobNotSaved, err)
	}
	c.startJob(ctx, r)
	return r.snapshot(), nil
}

func targetRef(repo, ref string) string {
	if _, err := digest.Parse(ref); err == nil {
		return repo + "@" + ref
	}
	return repo + ":" + ref
}

// ResumeJobs restarts every job the index holds as queued or running: the
// ones a shutdown or a crash interrupted. Images already done stay done;
// the others start over, and blobs already on the target are skipped. A
// job whose records cannot be read whole is failed, with the reason,
// never run with part of its images.
func (c *Cache) ResumeJobs() error {
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

// resume reads a job's images back and starts it again.
func (c *Cache) resume(job Job) error {
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
func (c *Cache) persist(r *run, imgs ...*Image) error {
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
func (c *Cache) save(r *run, imgs ...*Image) {
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
func (c *Cache) Job(id string) (Job, error) {
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

// MaxImagesPage bounds a page of JobImages.
const MaxImagesPage = 1000

// JobImages returns up to n images of job id (at most MaxImagesPage) after
// index after (-1: from the first), those in one of states if any are
// given, and whether more may follow.
func (c *Cache) JobImages(id string, states []string, after, n int) ([]Image, bool, error) {
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

// WaitJob returns the report of job id once it has finished, or as it
// stands when ctx ends.
func (c *Cache) WaitJob(ctx context.Context, id string) (Job, error) {
	c.mu.Lock()
	r, ok := c.jobs[id]
	c.mu.Unlock()
	if ok {
		select {
		case <-r.done:
		case <-ctx.Done():
			return r.snapshot(), nil
		}
	}
	return c.Job(id)
}

// Jobs returns every job's report, oldest first. It reads the jobs'
// records only, never their images.
func (c *Cache) Jobs() ([]Job, error) {
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
func (c *Cache) prune() {
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

// CancelJob stops job id and returns its final report once it has stopped
// (or ctx ends). The request is saved first, so a restart finishes it.
// Cancelling a finished job changes nothing.
func (c *Cache) CancelJob(ctx context.Context, id string) (Job, error) {
	c.mu.Lock()
	r, ok := c.jobs[id]
	c.mu.Unlock()
	if !ok {
		return c.Job(id)
	}
	r.update(func(j *Job) { r.cancelled, j.Cancel = true, true })
	c.save(r)
	r.cancel()
	select {
	case <-r.done:
	case <-ctx.Done():
	}
	return r.snapshot(), nil
}
