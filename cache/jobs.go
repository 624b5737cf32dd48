package cache

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
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

// Job is a job's report, as the API returns it and the index stores it.
type Job struct {
	ID        string     `json:"id"`
	State     string     `json:"state"`
	Platforms []string   `json:"platforms,omitempty"`
	PushTo    string     `json:"push_to,omitempty"`
	Pin       bool       `json:"pin,omitempty"`
	Created   time.Time  `json:"created"`
	Started   *time.Time `json:"started,omitempty"`
	Finished  *time.Time `json:"finished,omitempty"`
	Images    []*Image   `json:"images"`
}

// Image is the report of one image of a job. Byte counts are of blobs:
// fetched from upstream by this job, already cached, pushed to the target,
// and done out of total (for progress bars).
type Image struct {
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
	index        int            // in Job.Images, and so in the index
}

// SkippedChild is a child of an index left out by the platform filter.
type SkippedChild struct {
	Digest   digest.Digest `json:"digest"`
	Platform string        `json:"platform,omitempty"`
}

// HasTarget reports whether jobs may push to a target of that name.
func (c *Cache) HasTarget(name string) bool { _, ok := c.targets[name]; return ok }

// Submit accepts a job and starts it. It fails only for a job that names
// something not configured; the proxy has checked everything else.
func (c *Cache) Submit(spec JobSpec) (Job, error) {
	if len(spec.Images) == 0 {
		return Job{}, errors.New("a job needs at least one image")
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
	}
	for _, p := range spec.Platforms {
		job.Platforms = append(job.Platforms, p.String())
	}
	for i, ref := range spec.Images {
		if _, err := c.upstream(ref.Upstream); err != nil {
			return Job{}, err
		}
		img := &Image{index: i, Source: ref.Source, Upstream: ref.Upstream, Repository: ref.Repo, Reference: ref.Ref, Tag: ref.Tag, State: StateQueued}
		if spec.PushTo != "" {
			if ref.TargetRepo == "" {
				return Job{}, fmt.Errorf("image %s has no target repository", ref.Source)
			}
			img.TargetRepo = ref.TargetRepo
			img.Target = targetRef(ref.TargetRepo, cmp.Or(ref.Tag, ref.Ref))
		}
		job.Images = append(job.Images, img)
	}
	c.prune()
	r := c.startJob(job)
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
// the others start over, and blobs already on the target are skipped.
func (c *Cache) ResumeJobs() error {
	heads, err := c.store.Jobs(false)
	if err != nil {
		return err
	}
	for _, head := range heads {
		var j Job
		if err := json.Unmarshal(head.Job, &j); err != nil {
			c.log.Warn("prefetch job unreadable; not resumed", "error", err)
			continue
		}
		if j.State != StateQueued && j.State != StateRunning {
			continue
		}
		job, err := c.Job(j.ID)
		if err != nil {
			c.log.Warn("prefetch job unreadable; not resumed", "job", j.ID, "error", err)
			continue
		}
		for _, img := range job.Images {
			if img.State != StateDone {
				img.State = StateQueued
			}
		}
		job.State = StateQueued
		c.log.Info("prefetch job resumed", "job", job.ID, "images", len(job.Images))
		c.startJob(job)
	}
	return nil
}

// save writes the job's own record and those of imgs to the index. A
// failed write is logged: the job goes on, and at worst a restart repeats
// some of its work.
func (c *Cache) save(r *run, imgs ...*Image) {
	r.mu.Lock()
	head := r.job
	head.Images = nil
	doc, err := json.Marshal(head)
	docs := make(map[int][]byte, len(imgs))
	for _, img := range imgs {
		if err == nil {
			docs[img.index], err = json.Marshal(img)
		}
	}
	r.mu.Unlock()
	if err == nil {
		err = c.store.PutJob(head.ID, doc, docs)
	}
	if err != nil {
		c.log.Error("prefetch job not saved", "job", head.ID, "error", err)
	}
}

// saveAll writes the job and every image.
func (c *Cache) saveAll(r *run) { c.save(r, r.job.Images...) }

// decodeJob reads a job back from its records.
func decodeJob(doc storage.JobDoc) (Job, error) {
	var job Job
	if err := json.Unmarshal(doc.Job, &job); err != nil {
		return Job{}, err
	}
	job.Images = make([]*Image, len(doc.Images))
	for i, d := range doc.Images {
		job.Images[i] = &Image{index: i}
		if err := json.Unmarshal(d, job.Images[i]); err != nil {
			return Job{}, err
		}
	}
	return job, nil
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
	return decodeJob(doc)
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

// Jobs returns every job's report, oldest first.
func (c *Cache) Jobs() ([]Job, error) {
	docs, err := c.store.Jobs(true)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	live := make(map[string]*run, len(c.jobs))
	for id, r := range c.jobs {
		live[id] = r
	}
	c.mu.Unlock()
	jobs := make([]Job, 0, len(docs))
	for _, doc := range docs {
		job, err := decodeJob(doc)
		if err != nil {
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
	docs, err := c.store.Jobs(false)
	if err != nil {
		return
	}
	var finished []string
	for _, doc := range docs {
		var j Job
		if json.Unmarshal(doc.Job, &j) == nil && j.Finished != nil {
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
// (or ctx ends). Cancelling a finished job changes nothing.
func (c *Cache) CancelJob(ctx context.Context, id string) (Job, error) {
	c.mu.Lock()
	r, ok := c.jobs[id]
	c.mu.Unlock()
	if !ok {
		return c.Job(id)
	}
	r.update(func(*Job) { r.cancelled = true })
	r.cancel()
	select {
	case <-r.done:
	case <-ctx.Done():
	}
	return r.snapshot(), nil
}
