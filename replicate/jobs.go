package replicate

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

	"github.com/wharf-registry/wharf/cache"
	"github.com/wharf-registry/wharf/storage"
)

// Prefetch jobs warm the cache with a list of images and, with a push
// target, copy them there blob for blob. A job lives in the index from the
// moment it is accepted, is saved at every step, and is picked up again
// after a restart: it is never reported done unless every image is.

// State is a job's or an image's state.
type State string

// Job and image states.
const (
	StateQueued    State = "queued"
	StateRunning   State = "running"
	StateDone      State = "done"
	StateFailed    State = "failed"    // a job none of whose images made it, or one image
	StatePartial   State = "partial"   // a job some of whose images failed
	StateCancelled State = "cancelled" // by DELETE /api/v1/jobs/{id}
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
	Owner     string     // the user who asked, "" for the token or loopback
	RetryOf   string     // the job whose failed images these are
	// SkipReferrers leaves signatures, attestations and SBOMs behind;
	// by default they travel with their image.
	SkipReferrers bool
	// FilterIndex pushes, with Platforms, indexes that list only the
	// copied children (a new digest) instead of the source's verbatim.
	FilterIndex bool
	Rule        string // the replication rule whose run this is, if any
}

// ErrJobNotSaved says a job could not be written to the index: it was not
// accepted, or (as the job's Error) it stopped.
var ErrJobNotSaved = errors.New("job state could not be saved")

// Job is a job's report without its images, which are read a page at a
// time (Jobs.Images): it is what the API answers for a job and what
// the index keeps as the job's record, whatever the number of images.
type Job struct {
	ID        string   `json:"id"`
	State     State    `json:"state"`
	Error     string   `json:"error,omitempty"` // why the job as a whole failed
	Platforms []string `json:"platforms,omitempty"`
	PushTo    string   `json:"push_to,omitempty"`
	Pin       bool     `json:"pin,omitempty"`
	// SkipReferrers: the job copies no referrers (referrers: false).
	SkipReferrers bool `json:"skip_referrers,omitempty"`
	// FilterIndex: indexes are pushed listing only the copied platforms (index: filter).
	FilterIndex bool       `json:"filter_index,omitempty"`
	Rule        string     `json:"rule,omitempty"`             // the replication rule whose run this is
	RetryOf     string     `json:"retry_of,omitempty"`         // the job whose failed images this one runs again
	Owner       string     `json:"owner,omitempty"`            // who submitted it: users see and cancel their own
	Cancel      bool       `json:"cancel_requested,omitempty"` // kept so that a restart finishes the cancel
	Created     time.Time  `json:"created"`
	Started     *time.Time `json:"started,omitempty"`
	Finished    *time.Time `json:"finished,omitempty"`
	Images      int        `json:"images"`
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
	State        State          `json:"state"`
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
	Referrers    int            `json:"referrers,omitempty"` // signatures, attestations, SBOMs copied with it
	// FilteredDigest is the digest of the index pushed instead of the
	// source's (index: filter), and Note says so in words.
	FilteredDigest digest.Digest `json:"filtered_digest,omitempty"`
	Note           string        `json:"note,omitempty"`
	Started        *time.Time    `json:"started,omitempty"`
	Finished       *time.Time    `json:"finished,omitempty"`
	Seconds        float64       `json:"seconds,omitempty"`
	Error          string        `json:"error,omitempty"`
}

// SkippedChild is a child of an index left out by the platform filter.
type SkippedChild struct {
	Digest   digest.Digest `json:"digest"`
	Platform string        `json:"platform,omitempty"`
}

// HasTarget reports whether jobs may push to a target of that name.
func (c *Jobs) HasTarget(name string) bool { _, ok := c.targets[name]; return ok }

// targetNames lists the targets configured, sorted.
func (c *Jobs) targetNames() []string { return slices.Sorted(maps.Keys(c.targets)) }

// Submit accepts a job, stores it whole and starts it. It fails for a job
// that names something not configured (the proxy has checked everything
// else) and, with ErrJobNotSaved, when the index cannot take it: then
// nothing starts.
func (c *Jobs) Submit(spec JobSpec) (Job, error) {
	if len(spec.Images) == 0 {
		return Job{}, errors.New("a job needs at least one image")
	}
	if len(spec.Images) > storage.MaxJobImages {
		return Job{}, fmt.Errorf("a job takes at most %d images", storage.MaxJobImages)
	}
	if spec.PushTo != "" {
		if _, ok := c.targets[spec.PushTo]; !ok {
			return Job{}, fmt.Errorf("%w: no push target %q", cache.ErrUnknown, spec.PushTo)
		}
	}
	var rnd [4]byte
	rand.Read(rnd[:])
	now := c.now().UTC()
	job := Job{
		ID:            fmt.Sprintf("%016x%s", now.UnixNano(), hex.EncodeToString(rnd[:])),
		State:         StateQueued,
		PushTo:        spec.PushTo,
		Pin:           spec.Pin,
		Owner:         spec.Owner,
		SkipReferrers: spec.SkipReferrers,
		FilterIndex:   spec.FilterIndex,
		Rule:          spec.Rule,
		RetryOf:       spec.RetryOf,
		Created:       now,
		Images:        len(spec.Images),
	}
	for _, p := range spec.Platforms {
		job.Platforms = append(job.Platforms, p.String())
	}
	images := make([]*Image, 0, len(spec.Images))
	for i, ref := range spec.Images {
		if !c.cache.HasUpstream(ref.Upstream) {
			return Job{}, fmt.Errorf("%w %q", cache.ErrUnknown, ref.Upstream)
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

// Wait returns the report of job id once it has finished, or as it
// stands when ctx ends.
func (c *Jobs) Wait(ctx context.Context, id string) (Job, error) {
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

// Cancel stops job id and returns its final report once it has stopped
// (or ctx ends). The request is saved first, so a restart finishes it.
// Cancelling a finished job changes nothing.
func (c *Jobs) Cancel(ctx context.Context, id string) (Job, error) {
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

// ErrNothingToRetry says a job has no failed images to run again, or has
// not ended.
var ErrNothingToRetry = errors.New("nothing to retry")

// Retry starts a job of the failed images of job id, which has ended, with
// its options: a push target back from an outage, a right granted, a
// project created. owner is who asks.
func (c *Jobs) Retry(id, owner string) (Job, error) {
	job, err := c.Job(id)
	if err != nil {
		return Job{}, err
	}
	if job.Finished == nil {
		return Job{}, fmt.Errorf("%w: job %s has not ended", ErrNothingToRetry, id)
	}
	spec := JobSpec{PushTo: job.PushTo, Platforms: parsePlatforms(job.Platforms), Pin: job.Pin, Owner: owner,
		SkipReferrers: job.SkipReferrers, FilterIndex: job.FilterIndex, Rule: job.Rule, RetryOf: id}
	var bad error
	err = c.store.JobImages(id, -1, func(_ int, doc []byte) bool {
		var img Image
		if bad = json.Unmarshal(doc, &img); bad != nil {
			return false
		}
		if img.State == StateFailed {
			spec.Images = append(spec.Images, ImageRef{Source: img.Source, Upstream: img.Upstream, Repo: img.Repository,
				Ref: img.Reference, Tag: img.Tag, TargetRepo: img.TargetRepo})
		}
		return true
	})
	if err = cmp.Or(err, bad); err != nil {
		return Job{}, err
	}
	if len(spec.Images) == 0 {
		return Job{}, fmt.Errorf("%w: job %s has no failed images", ErrNothingToRetry, id)
	}
	return c.Submit(spec)
}
