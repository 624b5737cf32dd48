package storage

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/dgraph-io/badger/v4"
	"github.com/opencontainers/go-digest"
)

// Prefetch jobs, pins and where pushed blobs live on push targets. The
// store keeps jobs as opaque documents, what a job is belongs to the cache:
// one for the job and one per image, so that a step of one image of a
// large job rewrites a few hundred bytes, not the whole job.
const (
	prefixJob        = "j\x00" // j <id>                   → job document (JSON)
	prefixJobImage   = "i\x00" // i <id> <index, 6 digits> → image document (JSON)
	prefixPin        = "p\x00" // p <up> <repo> <ref>      → digest (string)
	prefixPushed     = "x\x00" // x <target> <digest>      → repository (string)
	prefixReplicated = "y\x00" // y <rule> <up> <repo> <tag> → digest last pushed by the rule
)

// MaxJobImages bounds the images of one job: image records are numbered
// with six digits.
const MaxJobImages = 999_999

// smallWrite is how many image records go in the same transaction as the
// job's own record; more go through a WriteBatch, which splits them into
// transactions Badger can take, however many there are.
const smallWrite = 64

func jobImageKey(id string, i int) []byte { return key(prefixJobImage, id, fmt.Sprintf("%06d", i)) }

// PutJob stores the record of job id and those of the images given by
// index. A few images are written in one transaction with the job's record;
// many are written in bounded batches first and the job's record last, so
// a job never appears with fewer image records than it was given, whatever
// the number of images or the moment of a crash. Images not given keep
// their records.
func (s *Store) PutJob(id string, job []byte, images map[int][]byte) error {
	for i := range images {
		if i < 0 || i > MaxJobImages {
			return fmt.Errorf("storage: job %s: image index %d out of range", id, i)
		}
	}
	if len(images) > smallWrite {
		err := s.db.batch(func(wb *badger.WriteBatch) error {
			for i, doc := range images {
				if err := wb.Set(jobImageKey(id, i), doc); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return err
		}
		images = nil
	}
	return s.db.Update(func(txn *badger.Txn) error {
		if err := txn.Set(key(prefixJob, id), job); err != nil {
			return err
		}
		for i, doc := range images {
			if err := txn.Set(jobImageKey(id, i), doc); err != nil {
				return err
			}
		}
		return nil
	})
}

// Job returns the record of job id, or ErrNotFound.
func (s *Store) Job(id string) ([]byte, error) {
	var doc []byte
	err := s.db.View(func(txn *badger.Txn) error {
		item, err := txn.Get(key(prefixJob, id))
		if err != nil {
			return err
		}
		doc, err = item.ValueCopy(nil)
		return err
	})
	if errors.Is(err, badger.ErrKeyNotFound) {
		return nil, fmt.Errorf("job %s: %w", id, ErrNotFound)
	}
	return doc, err
}

// JobImages calls fn with the index and record of each image of job id
// after index after (-1 for all), in order, until fn returns false. It
// reads one record at a time: a page of a job of any size costs the page.
func (s *Store) JobImages(id string, after int, fn func(i int, doc []byte) bool) error {
	prefix := key(prefixJobImage, id, "")
	return s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{PrefetchValues: false, Prefix: prefix})
		defer it.Close()
		start := prefix
		if after >= 0 {
			start = jobImageKey(id, after+1)
		}
		for it.Seek(start); it.Valid(); it.Next() {
			i, err := strconv.Atoi(string(it.Item().Key()[len(prefix):]))
			if err != nil {
				continue
			}
			doc, err := it.Item().ValueCopy(nil)
			if err != nil {
				return err
			}
			if !fn(i, doc) {
				return nil
			}
		}
		return nil
	})
}

// Jobs returns the records of every job (not their images), in id order.
func (s *Store) Jobs() ([][]byte, error) {
	var docs [][]byte
	err := s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{PrefetchValues: true, Prefix: []byte(prefixJob)})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			doc, err := it.Item().ValueCopy(nil)
			if err != nil {
				return err
			}
			docs = append(docs, doc)
		}
		return nil
	})
	return docs, err
}

// DeleteJob forgets job id and its images: the job's record first, so a
// crash half way leaves image records without a job (which
// SweepJobImages removes), never a job missing some of its images.
func (s *Store) DeleteJob(id string) error {
	if err := s.db.Update(func(txn *badger.Txn) error { return txn.Delete(key(prefixJob, id)) }); err != nil {
		return err
	}
	return s.deleteJobImages(id)
}

func (s *Store) deleteJobImages(id string) error {
	var keys [][]byte
	err := s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: key(prefixJobImage, id, "")})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			keys = append(keys, it.Item().KeyCopy(nil))
		}
		return nil
	})
	if err != nil || len(keys) == 0 {
		return err
	}
	return s.db.batch(func(wb *badger.WriteBatch) error {
		for _, k := range keys {
			if err := wb.Delete(k); err != nil {
				return err
			}
		}
		return nil
	})
}

// SweepJobImages removes image records whose job has no record: left by a
// crash while a job was being written or forgotten.
func (s *Store) SweepJobImages() error {
	var orphans []string
	err := s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte(prefixJobImage)})
		defer it.Close()
		for it.Rewind(); it.Valid(); {
			id, _, _ := strings.Cut(string(it.Item().Key()[len(prefixJobImage):]), "\x00")
			if _, err := txn.Get(key(prefixJob, id)); errors.Is(err, badger.ErrKeyNotFound) {
				orphans = append(orphans, id)
			} else if err != nil {
				return err
			}
			it.Seek(key(prefixJobImage, id+"\x01")) // past this job's images
		}
		return nil
	})
	for _, id := range orphans {
		if err == nil {
			err = s.deleteJobImages(id)
		}
	}
	return err
}

// PushedTo returns a repository of push target target last seen holding
// dgst, so a later push elsewhere on that target can mount it instead of
// uploading it; "" if none is known.
func (s *Store) PushedTo(target string, dgst digest.Digest) string {
	var repo string
	_ = s.db.View(func(txn *badger.Txn) error {
		item, err := txn.Get(key(prefixPushed, target, dgst.String()))
		if err != nil {
			return err
		}
		return item.Value(func(b []byte) error { repo = string(b); return nil })
	})
	return repo
}

// SetPushedTo records that repo of target holds dgst.
func (s *Store) SetPushedTo(target string, dgst digest.Digest, repo string) error {
	if strings.ContainsRune(repo, 0) {
		return errors.New("storage: repository name holds NUL")
	}
	return s.db.Update(func(txn *badger.Txn) error { return txn.Set(key(prefixPushed, target, dgst.String()), []byte(repo)) })
}

// Replicated is the digest replication rule last pushed for a tag, "" if
// none, and a print of the referrers (signatures, attestations, SBOMs) it
// pushed with it: what tells a new or moved tag, or one signed since, from
// one already on the target.
func (s *Store) Replicated(rule, up, repo, tag string) (dgst digest.Digest, referrers string) {
	_ = s.db.View(func(txn *badger.Txn) error {
		item, err := txn.Get(key(prefixReplicated, rule, up, repo, tag))
		if err != nil {
			return err
		}
		return item.Value(func(b []byte) error {
			d, r, _ := strings.Cut(string(b), " ")
			dgst, referrers = digest.Digest(d), r
			return nil
		})
	})
	return dgst, referrers
}

// SetReplicated records that rule pushed dgst for a tag, with the
// referrers whose print is referrers.
func (s *Store) SetReplicated(rule, up, repo, tag string, dgst digest.Digest, referrers string) error {
	for _, part := range []string{rule, up, repo, tag} {
		if strings.ContainsRune(part, 0) {
			return errors.New("storage: name holds NUL")
		}
	}
	v := string(dgst)
	if referrers != "" {
		v += " " + referrers
	}
	return s.db.Update(func(txn *badger.Txn) error {
		return txn.Set(key(prefixReplicated, rule, up, repo, tag), []byte(v))
	})
}
