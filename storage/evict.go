package storage

import (
	"encoding/json"
	"errors"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/opencontainers/go-digest"
)

// accessLog records blob reads in memory; Evict and Close fold it into the
// index, so serving a blob costs a map write, not a database write.
type accessLog struct {
	mu   sync.Mutex
	seen map[digest.Digest]time.Time
}

// Touch notes that dgst was just served, for least-recently-used eviction.
func (s *Store) Touch(dgst digest.Digest) {
	s.access.mu.Lock()
	if s.access.seen == nil {
		s.access.seen = map[digest.Digest]time.Time{}
	}
	now := time.Now()
	s.access.seen[dgst] = now
	s.access.mu.Unlock()
	if s.bucket != nil {
		s.use.note(dgst, now)
	}
}

// flushAccess writes the remembered access times into the blob records.
func (s *Store) flushAccess() error {
	s.access.mu.Lock()
	seen := s.access.seen
	s.access.seen = nil
	s.access.mu.Unlock()
	if len(seen) == 0 {
		return nil
	}
	// In transactions of accessChunk: one for them all outgrows what the
	// index takes in one, and a busy minute touches many thousands.
	var err error
	batch := make(map[digest.Digest]time.Time, min(len(seen), accessChunk))
	flush := func() {
		if err == nil && len(batch) > 0 {
			err = s.db.Update(func(txn *badger.Txn) error { return writeAccess(txn, batch) })
		}
		if err == nil {
			for d := range batch {
				delete(seen, d) // written: what is left is kept below
			}
		}
		clear(batch)
	}
	for dgst, at := range seen {
		batch[dgst] = at
		if len(batch) == accessChunk {
			flush()
		}
	}
	flush()
	if err != nil {
		// Not written (a full disk): keep them for the next flush, and for
		// Evict to order by.
		s.access.mu.Lock()
		for dgst, at := range seen {
			if at.After(s.access.seen[dgst]) {
				if s.access.seen == nil {
					s.access.seen = map[digest.Digest]time.Time{}
				}
				s.access.seen[dgst] = at
			}
		}
		s.access.mu.Unlock()
	}
	return err
}

func latest(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// Evicted describes one blob Evict removed.
type Evicted struct {
	Digest   digest.Digest
	Size     int64
	Accessed time.Time
}

// Evict removes least recently used blobs until the store holds at most
// target bytes, skipping those keep says must stay (pinned, being read).
// It returns what it removed and the oldest access time left.
func (s *Store) Evict(target int64, keep func(digest.Digest) bool) ([]Evicted, time.Time, error) {
	if err := s.flushAccess(); err != nil && !errors.Is(err, ErrNoSpace) {
		return nil, time.Time{}, err
	}
	// On a full disk the access times stay in memory: they order too.
	s.access.mu.Lock()
	seen := maps.Clone(s.access.seen)
	s.access.mu.Unlock()
	var all []Evicted
	err := s.eachBlobUse(func(dgst digest.Digest, size int64, accessed time.Time) {
		all = append(all, Evicted{Digest: dgst, Size: size, Accessed: latest(accessed, seen[dgst])})
	})
	if err != nil {
		return nil, time.Time{}, err
	}
	slices.SortFunc(all, func(a, b Evicted) int { return a.Accessed.Compare(b.Accessed) })
	// Plan the removals, then make them evictBatch at a time: a file
	// each, and one index transaction for the batch (one per blob held
	// eviction to a couple of thousand blobs a second). keep is asked
	// again just before each batch: a blob a client started reading
	// meanwhile stays.
	var plan []Evicted
	oldest := time.Time{}
	projected := s.size.Load()
	for _, e := range all {
		if projected <= target || keep(e.Digest) {
			if oldest.IsZero() || e.Accessed.Before(oldest) {
				oldest = e.Accessed
			}
			continue
		}
		plan = append(plan, e)
		projected -= e.Size
	}
	var gone []Evicted
	for len(plan) > 0 {
		batch := plan[:min(evictBatch, len(plan))]
		plan = plan[len(batch):]
		batch = slices.DeleteFunc(slices.Clone(batch), func(e Evicted) bool { return keep(e.Digest) })
		dgsts := make([]digest.Digest, len(batch))
		for i, e := range batch {
			dgsts[i] = e.Digest
		}
		if err := s.removeBlobs(dgsts); err != nil {
			return gone, oldest, err
		}
		gone = append(gone, batch...)
	}
	return gone, oldest, nil
}

// evictBatch is how many blobs one eviction transaction removes.
const evictBatch = 256

// TagRef is one tag record, for walking pins.
type TagRef struct {
	Upstream, Repo, Tag string
	Digest              digest.Digest
}

// AllTags lists every tag record.
func (s *Store) AllTags() ([]TagRef, error) {
	var refs []TagRef
	err := s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{PrefetchValues: true, Prefix: []byte(prefixTag)})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			parts := splitKey(it.Item().Key()[len(prefixTag):])
			if len(parts) != 3 {
				continue
			}
			var ti TagInfo
			if err := it.Item().Value(func(v []byte) error { return json.Unmarshal(v, &ti) }); err != nil {
				return err
			}
			refs = append(refs, TagRef{Upstream: parts[0], Repo: parts[1], Tag: parts[2], Digest: ti.Digest})
		}
		return nil
	})
	return refs, err
}

// accessChunk is how many access times one transaction writes.
const accessChunk = 1000

// writeAccess records later access times in txn.
func writeAccess(txn *badger.Txn, seen map[digest.Digest]time.Time) error {
	for dgst, at := range seen {
		item, err := txn.Get(blobKey(dgst))
		if err != nil {
			continue // evicted meanwhile
		}
		var bi BlobInfo
		if err := item.Value(func(v []byte) error { return json.Unmarshal(v, &bi) }); err != nil {
			return err
		}
		if at.After(bi.Accessed) {
			bi.Accessed = at
			if err := setJSON(txn, blobKey(dgst), bi); err != nil {
				return err
			}
		}
	}
	return nil
}
