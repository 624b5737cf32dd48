package replicate

import (
	"crypto/hmac"
	"encoding/json"
	"errors"
	"slices"
	"time"

	"github.com/wharf-registry/wharf/storage"
)

// Jobs outlive their replica. With a fleet on a bucket, each job's spec
// (its images and where they go) is written to the bucket with the
// replica that runs it. A replica whose peers find it down leaves its jobs
// there: the live replica that owns a job's id (rendezvous, as for blobs)
// takes it over, claims it in the bucket and runs it from the start;
// images already on the target cost a HEAD each, since pushes are
// idempotent. The replica that comes back finds its job claimed and drops
// its own copy. A job's end is written over its spec, which the fleet
// forgets an hour later.

// Fleet is the replicas jobs move between; cluster.Cluster is one.
type Fleet interface {
	Self() string
	Live() []string
	OwnerOf(key string) (peer string, self bool)
	// Seal authenticates what replicas leave each other in the bucket.
	Seal(kind string, doc []byte) string
}

// sharedJob is a job's spec in the bucket, sealed with the fleet's
// secret: a spec anyone else wrote is never run.
type sharedJob struct {
	Seal    string  `json:"seal,omitempty"` // Fleet.Seal of the spec without it
	Replica string  `json:"replica"`
	Ended   bool    `json:"ended,omitempty"`
	Job     Job     `json:"job"`
	Images  []Image `json:"images,omitempty"` // until it ends
}

// endedSpecLife is how long an ended job's spec stays in the bucket: long
// enough for its first replica to come back and drop its own copy.
const endedSpecLife = time.Hour

// SetFleet lets jobs move between replicas: call it before Resume. every
// is how often this replica looks for jobs to take over (0: 2s).
func (c *Jobs) SetFleet(f Fleet, every time.Duration) {
	if !c.store.SharesJobs() {
		return
	}
	c.fleet = f
	c.rejected = map[string]bool{}
	c.stopAdopt = make(chan struct{})
	c.adoptDone = make(chan struct{})
	if every <= 0 {
		every = 2 * time.Second
	}
	go c.adoptLoop(every)
}

func (c *Jobs) adoptLoop(every time.Duration) {
	defer close(c.adoptDone)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-c.stopAdopt:
			return
		case <-t.C:
			c.adoptOrphans()
		}
	}
}

// share writes r's spec to the bucket; a bucket that does not take it
// leaves the job to this replica alone.
func (c *Jobs) share(r *run, ended bool) {
	if c.fleet == nil {
		return
	}
	s := sharedJob{Replica: c.fleet.Self(), Ended: ended, Job: r.snapshot()}
	if !ended {
		r.mu.Lock()
		for _, img := range r.images {
			s.Images = append(s.Images, Image{Index: img.Index, Source: img.Source, Upstream: img.Upstream, Repository: img.Repository,
				Reference: img.Reference, Tag: img.Tag, Target: img.Target, TargetRepo: img.TargetRepo, State: StateQueued})
		}
		r.mu.Unlock()
	}
	doc, err := json.Marshal(s)
	if err == nil {
		s.Seal = c.fleet.Seal("job", doc)
		doc, err = json.Marshal(s)
	}
	if err == nil {
		err = c.store.PutJobSpec(s.Job.ID, doc)
	}
	if err != nil {
		c.log.Warn("a job's spec did not reach the bucket: no other replica can finish it", "job", s.Job.ID, "error", err)
	}
}

// errUnsealed is a job spec the fleet did not write.
var errUnsealed = errors.New("its seal is not the fleet's (another cluster.secret_file, or written by someone else): ignored")

// spec reads job id's spec from the bucket, if the fleet sealed it.
func (c *Jobs) spec(id string) (sharedJob, error) {
	var s sharedJob
	doc, err := c.store.JobSpec(id)
	if err == nil {
		err = json.Unmarshal(doc, &s)
	}
	if err != nil {
		return s, err
	}
	seal := s.Seal
	s.Seal = ""
	unsealed, err := json.Marshal(s)
	if err != nil || !hmac.Equal([]byte(seal), []byte(c.fleet.Seal("job", unsealed))) || s.Job.ID != id {
		return sharedJob{}, errUnsealed
	}
	return s, nil
}

// claimedElsewhere reports whether another replica took job id over while
// this one was away.
func (c *Jobs) claimedElsewhere(id string) (by string, claimed bool) {
	if c.fleet == nil {
		return "", false
	}
	s, err := c.spec(id)
	if err != nil || s.Replica == c.fleet.Self() {
		return "", false
	}
	return s.Replica, true
}

// adoptOrphans takes over the jobs of replicas that are down, those whose
// ids this replica owns among the live, and forgets ended specs.
func (c *Jobs) adoptOrphans() {
	specs, err := c.store.JobSpecs()
	if err != nil {
		return // the bucket's trouble is reported where it is used
	}
	live := c.fleet.Live()
	for id, written := range specs {
		if c.closing.Load() {
			return
		}
		if _, self := c.fleet.OwnerOf("job\x00" + id); !self {
			continue
		}
		if _, err := c.Job(id); err == nil {
			continue // this replica's, or known here
		}
		if c.rejected[id] {
			continue
		}
		s, err := c.spec(id)
		switch {
		case errors.Is(err, storage.ErrNotFound):
			continue
		case err != nil:
			if len(c.rejected) > 10_000 {
				clear(c.rejected)
			}
			c.rejected[id] = true // said once
			c.log.Warn("a job's spec in the bucket is not taken over", "job", id, "error", err)
			continue
		case s.Ended:
			if time.Since(written) > endedSpecLife {
				c.store.DeleteJobSpec(id)
			}
			continue
		case s.Replica == c.fleet.Self() || slices.Contains(live, s.Replica):
			continue
		}
		c.adopt(s)
	}
}

// adopt runs s here, from the start, as this replica's.
func (c *Jobs) adopt(s sharedJob) {
	job := s.Job
	job.State, job.Started, job.Finished, job.Tally, job.Error = StateQueued, nil, nil, Tally{}, ""
	images := make([]*Image, len(s.Images))
	for i := range s.Images {
		img := s.Images[i]
		img.State = StateQueued
		images[i] = &img
		job.Tally.count(&img, 1)
	}
	if len(images) != job.Images {
		c.log.Warn("a job's spec in the bucket is not whole; not taking it over", "job", job.ID, "images", len(images), "want", job.Images)
		return
	}
	r, ctx := newRun(job, images)
	if err := c.persist(r, images...); err != nil {
		r.cancel()
		c.metrics.jobSaveFailed.Inc()
		return
	}
	c.log.Warn("took over a job whose replica is down", "job", job.ID, "from", s.Replica, "images", len(images))
	c.startJob(ctx, r) // which claims it in the bucket: the replica that comes back drops its copy
}
