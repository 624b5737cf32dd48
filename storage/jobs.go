package storage

import (
	"errors"
	"fmt"
	"strings"

	"github.com/dgraph-io/badger/v4"
	"github.com/opencontainers/go-digest"
)

// Prefetch jobs, pins and where pushed blobs live on push targets. The
// store keeps jobs as opaque documents, what a job is belongs to the cache:
// one for the job and one per image, so that a step of one image of a
// large job rewrites a few hundred bytes, not the whole job.
const (
	prefixJob      = "j\x00" // j <id>                   → job document (JSON)
	prefixJobImage = "i\x00" // i <id> <index, 6 digits> → image document (JSON)
	prefixPin      = "p\x00" // p <up> <repo> <ref>      → digest (string)
	prefixPushed   = "x\x00" // x <target> <digest>      → repository (string)
)

// JobDoc is a job's stored documents: the job's own and its images', in
// order.
type JobDoc struct {
	Job    []byte
	Images [][]byte
}

func jobImageKey(id string, i int) []byte { return key(prefixJobImage, id, fmt.Sprintf("%06d", i)) }

// PutJob stores the document of job id and those of the images given by
// index, in one transaction. Images not given keep their documents.
func (s *Store) PutJob(id string, job []byte, images map[int][]byte) error {
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

// Job returns the documents of job id, or ErrNotFound.
func (s *Store) Job(id string) (JobDoc, error) {
	var doc JobDoc
	err := s.db.View(func(txn *badger.Txn) error {
		item, err := txn.Get(key(prefixJob, id))
		if err != nil {
			return err
		}
		if doc.Job, err = item.ValueCopy(nil); err != nil {
			return err
		}
		doc.Images, err = jobImages(txn, id)
		return err
	})
	if errors.Is(err, badger.ErrKeyNotFound) {
		return JobDoc{}, ErrNotFound
	}
	return doc, err
}

func jobImages(txn *badger.Txn, id string) ([][]byte, error) {
	var docs [][]byte
	prefix := key(prefixJobImage, id, "")
	it := txn.NewIterator(badger.IteratorOptions{PrefetchValues: true, Prefix: prefix})
	defer it.Close()
	for it.Rewind(); it.Valid(); it.Next() {
		doc, err := it.Item().ValueCopy(nil)
		if err != nil {
			return nil, err
		}
		docs = append(docs, doc)
	}
	return docs, nil
}

// Jobs returns the documents of every job, in id order; without images
// only the jobs' own.
func (s *Store) Jobs(images bool) ([]JobDoc, error) {
	var docs []JobDoc
	err := s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{PrefetchValues: true, Prefix: []byte(prefixJob)})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			doc := JobDoc{}
			var err error
			if doc.Job, err = it.Item().ValueCopy(nil); err != nil {
				return err
			}
			if images {
				if doc.Images, err = jobImages(txn, string(it.Item().Key()[len(prefixJob):])); err != nil {
					return err
				}
			}
			docs = append(docs, doc)
		}
		return nil
	})
	return docs, err
}

// DeleteJob forgets job id and its images.
func (s *Store) DeleteJob(id string) error {
	wb := s.db.NewWriteBatch()
	defer wb.Cancel()
	if err := wb.Delete(key(prefixJob, id)); err != nil {
		return err
	}
	err := s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: key(prefixJobImage, id, "")})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			if err := wb.Delete(it.Item().KeyCopy(nil)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	return wb.Flush()
}

// Pin is a manifest reference (tag or digest) of one upstream repository
// and the digest it resolved to when pinned: that content eviction spares,
// even if the tag moves on.
type Pin struct {
	Upstream, Repo, Ref string
	Digest              digest.Digest
}

// AddPin pins p until RemovePin.
func (s *Store) AddPin(p Pin) error {
	return s.db.Update(func(txn *badger.Txn) error {
		return txn.Set(key(prefixPin, p.Upstream, p.Repo, p.Ref), []byte(p.Digest))
	})
}

// RemovePin unpins p; it reports ErrNotFound if p was not pinned.
func (s *Store) RemovePin(p Pin) error {
	k := key(prefixPin, p.Upstream, p.Repo, p.Ref)
	return s.db.Update(func(txn *badger.Txn) error {
		if _, err := txn.Get(k); errors.Is(err, badger.ErrKeyNotFound) {
			return ErrNotFound
		}
		return txn.Delete(k)
	})
}

// Pins lists every pin, ordered by upstream, repository and reference.
func (s *Store) Pins() ([]Pin, error) {
	var pins []Pin
	err := s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{PrefetchValues: true, Prefix: []byte(prefixPin)})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			parts := splitKey(it.Item().Key()[len(prefixPin):])
			if len(parts) != 3 {
				continue
			}
			p := Pin{Upstream: parts[0], Repo: parts[1], Ref: parts[2]}
			if err := it.Item().Value(func(b []byte) error { p.Digest = digest.Digest(b); return nil }); err != nil {
				return err
			}
			pins = append(pins, p)
		}
		return nil
	})
	return pins, err
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
