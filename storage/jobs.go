package storage

import (
	"errors"
	"strings"

	"github.com/dgraph-io/badger/v4"
	"github.com/opencontainers/go-digest"
)

// Prefetch jobs, pins and where pushed blobs live on push targets. The
// store keeps these as opaque documents: what a job is belongs to the cache.
const (
	prefixJob    = "j\x00" // j <id>                   → job document (JSON)
	prefixPin    = "p\x00" // p <up> <repo> <ref>      → digest (string)
	prefixPushed = "x\x00" // x <target> <digest>      → repository (string)
)

// PutJob stores the document of job id, replacing any earlier one.
func (s *Store) PutJob(id string, doc []byte) error {
	return s.db.Update(func(txn *badger.Txn) error { return txn.Set(key(prefixJob, id), doc) })
}

// Job returns the document of job id, or ErrNotFound.
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
		return nil, ErrNotFound
	}
	return doc, err
}

// Jobs returns every job document, in id order.
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

// DeleteJob forgets job id.
func (s *Store) DeleteJob(id string) error {
	return s.db.Update(func(txn *badger.Txn) error { return txn.Delete(key(prefixJob, id)) })
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
