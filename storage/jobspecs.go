package storage

import (
	"context"
	"errors"
	"fmt"
	"path"
	"strings"
	"time"

	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"
)

// A fleet's jobs in the bucket: each running job's spec, with the replica
// that runs it, one object per job, so that another replica can finish a
// job whose replica is gone. A job's index records stay the truth for the
// replica that runs it; the bucket's copy is only for taking it over, and
// is deleted when the job ends.

// jobSpecsPrefix holds <job id>.json objects.
const jobSpecsPrefix = "/wharf/jobs"

// maxJobSpec bounds one job's spec: its images, as JSON.
const maxJobSpec = 64 << 20

// jobSpecTimeout bounds a write of a job's spec: a job starts after it.
const jobSpecTimeout = 5 * time.Second

// SharesJobs reports whether jobs can be taken over: the store has a
// bucket.
func (s *Store) SharesJobs() bool { return s.bucket != nil }

func jobSpecKey(id string) (string, error) {
	if id == "" || strings.ContainsAny(id, "/.") {
		return "", fmt.Errorf("job id %q", id)
	}
	return path.Join(jobSpecsPrefix, id+".json"), nil
}

// PutJobSpec writes job id's spec to the bucket.
func (s *Store) PutJobSpec(id string, doc []byte) error {
	k, err := jobSpecKey(id)
	if err != nil || s.bucket == nil {
		return err
	}
	if s.bucket.Down() {
		return errors.New("the bucket is down")
	}
	ctx, cancel := context.WithTimeout(context.Background(), jobSpecTimeout)
	defer cancel()
	err = s.bucket.d.PutContent(ctx, k, doc)
	s.bucket.note(err)
	return err
}

// JobSpec reads job id's spec from the bucket: ErrNotFound if it has none.
func (s *Store) JobSpec(id string) ([]byte, error) {
	k, err := jobSpecKey(id)
	if err != nil || s.bucket == nil {
		return nil, ErrNotFound
	}
	ctx, cancel := context.WithTimeout(context.Background(), pinTimeout)
	defer cancel()
	doc, err := s.bucket.d.GetContent(ctx, k)
	if missing(err) {
		return nil, ErrNotFound
	}
	s.bucket.note(err)
	if err == nil && len(doc) > maxJobSpec {
		err = fmt.Errorf("job %s's spec is %d bytes", id, len(doc))
	}
	return doc, err
}

// DeleteJobSpec removes job id's spec: the job has ended.
func (s *Store) DeleteJobSpec(id string) error {
	k, err := jobSpecKey(id)
	if err != nil || s.bucket == nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), pinTimeout)
	defer cancel()
	if err = s.bucket.d.Delete(ctx, k); missing(err) {
		return nil
	}
	s.bucket.note(err)
	return err
}

// JobSpecs lists the ids of the jobs whose specs the bucket holds, with
// when each was written.
func (s *Store) JobSpecs() (map[string]time.Time, error) {
	out := map[string]time.Time{}
	if s.bucket == nil {
		return out, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), pinTimeout)
	defer cancel()
	err := s.bucket.walk(ctx, jobSpecsPrefix, func(fi storagedriver.FileInfo) error {
		if id, ok := strings.CutSuffix(path.Base(fi.Path()), ".json"); ok && !fi.IsDir() {
			out[id] = fi.ModTime()
		}
		return nil
	})
	s.bucket.note(err)
	return out, err
}
