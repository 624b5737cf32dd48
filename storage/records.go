package storage

import (
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"runtime/debug"
	"slices"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/opencontainers/go-digest"
)

// Blob records: what the index knows of each stored blob.

// BlobInfo is the index record of a stored blob.
type BlobInfo struct {
	Size      int64     `json:"size"`
	MediaType string    `json:"mediaType,omitempty"`
	Accessed  time.Time `json:"accessed"`
	// Sources name whoever's own bytes verified as this blob: the
	// upstream its first fill read, and any that served it since. The
	// cache decides by them whether another upstream's word is enough to
	// serve it there. None on records of Wharfs before sources were kept
	// (and on blobs adopted after a crash: Unsourced).
	Sources []string `json:"sources,omitempty"`
}

// Unsourced is the source of a blob whose origin is unknown: a file a
// crash left without its record. No upstream has this name (names hold no
// spaces), so none is taken to have served it.
const Unsourced = "(unknown origin)"

// Blob returns the index record for dgst, or ErrNotFound.
func (s *Store) Blob(dgst digest.Digest) (BlobInfo, error) {
	var bi BlobInfo
	err := s.get(blobKey(dgst), &bi)
	return bi, err
}

// recordBlob writes dgst's record; a record already there keeps its
// sources (the new ones are added) and, if mediaType is "", its type.
func (s *Store) recordBlob(dgst digest.Digest, size int64, mediaType string, sources []string) error {
	key := blobKey(dgst)
	s.small.remove(dgst)
	return s.tally(func() (int64, int64, error) {
		fresh := false
		err := retryConflict(func() error { // the retry of a conflict sees the other's record
			return s.db.Update(func(txn *badger.Txn) error {
				bi := BlobInfo{Size: size, MediaType: mediaType, Accessed: time.Now(), Sources: sources}
				old, err := readBlob(txn, dgst)
				fresh = errors.Is(err, badger.ErrKeyNotFound)
				if err == nil {
					bi.MediaType = cmp.Or(mediaType, old.MediaType)
					bi.Sources = union(old.Sources, sources)
				}
				return setJSON(txn, key, bi)
			})
		})
		if !fresh {
			return 0, 0, err
		}
		return size, 1, err
	})
}

// updateBlob rewrites dgst's record with fn; ErrNotFound if it has none.
func (s *Store) updateBlob(dgst digest.Digest, fn func(*BlobInfo)) error {
	s.small.remove(dgst)
	err := retryConflict(func() error {
		return s.db.Update(func(txn *badger.Txn) error {
			bi, err := readBlob(txn, dgst)
			if err != nil {
				return err
			}
			fn(&bi)
			return setJSON(txn, blobKey(dgst), bi)
		})
	})
	if errors.Is(err, badger.ErrKeyNotFound) {
		return fmt.Errorf("blob %s: %w", dgst, ErrNotFound)
	}
	return err
}

func readBlob(txn *badger.Txn, dgst digest.Digest) (BlobInfo, error) {
	var bi BlobInfo
	item, err := txn.Get(blobKey(dgst))
	if err != nil {
		return bi, err
	}
	return bi, item.Value(func(v []byte) error { return json.Unmarshal(v, &bi) })
}

// SetMediaType rewrites the media type of dgst's record: a blob fetched
// as a blob first, then as a manifest, is a manifest.
func (s *Store) SetMediaType(dgst digest.Digest, mt string) error {
	return s.updateBlob(dgst, func(bi *BlobInfo) { bi.MediaType = mt })
}

// AddSource records that source's own bytes verified as blob dgst, here
// and, with a remote tier, soon in the bucket for the other replicas (the
// upload queue gives it the blob's sources, and the blob if it lacks it).
func (s *Store) AddSource(dgst digest.Digest, source string) error {
	if err := s.updateBlob(dgst, func(bi *BlobInfo) { bi.Sources = union(bi.Sources, []string{source}) }); err != nil {
		return err
	}
	return s.queueUpload(dgst)
}

// union is a's names and those of b it lacks, in order.
func union(a, b []string) []string {
	out := slices.Clone(a)
	for _, n := range b {
		if !slices.Contains(out, n) {
			out = append(out, n)
		}
	}
	return out
}

// retryConflict runs a read-modify-write transaction again when it
// conflicted with a concurrent one (two commits or removals of one blob),
// a few times.
func retryConflict(update func() error) error {
	var err error
	for range 5 {
		if err = update(); !errors.Is(err, badger.ErrConflict) {
			return err
		}
	}
	return err
}

// blobCounts is how many times a store counted its blob records, for the
// tests of totals.go.
var blobCounts atomic.Int64

// countBlobs sets the totals from every blob record: a start after a
// crash, or the first of an older store.
func (s *Store) countBlobs() error {
	blobCounts.Add(1)
	// Read without decoding each record whole: at a million blobs,
	// decoding them all was most of the start-up.
	err := s.eachBlobUse(func(_ digest.Digest, size int64, _ time.Time) {
		s.size.Add(size)
		s.blobs.Add(1)
	})
	if err != nil {
		return fmt.Errorf("read index: %w", err)
	}
	// The count read every blob record once: give back the memory it
	// passed through now, not minutes later, so a large store idles small.
	debug.FreeOSMemory()
	return nil
}

// eachBlob calls fn with every blob record, in digest order.
func (s *Store) eachBlob(fn func(digest.Digest, BlobInfo) error) error {
	return s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{PrefetchValues: true, Prefix: []byte(prefixBlob)})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			var bi BlobInfo
			if err := it.Item().Value(func(v []byte) error { return json.Unmarshal(v, &bi) }); err != nil {
				return err
			}
			if err := fn(digest.Digest(it.Item().Key()[len(prefixBlob):]), bi); err != nil {
				return err
			}
		}
		return nil
	})
}

// eachBlobUse calls fn with every blob record's size and last access, in
// digest order, reading them without decoding each record whole (as
// recordSize does): eviction's walk, and the count after a crash.
func (s *Store) eachBlobUse(fn func(dgst digest.Digest, size int64, accessed time.Time)) error {
	return s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{PrefetchValues: true, PrefetchSize: 1000, Prefix: []byte(prefixBlob)})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			var size int64
			var accessed time.Time
			if err := it.Item().Value(func(v []byte) (err error) {
				size, accessed, err = recordUse(v)
				return err
			}); err != nil {
				return err
			}
			fn(digest.Digest(it.Item().Key()[len(prefixBlob):]), size, accessed)
		}
		return nil
	})
}

// recordUse is a blob record's size and last access, read from the fields
// json.Marshal writes (a media type's quotes are escaped, so the first
// `,"accessed":"` is the field's); a record written otherwise is decoded
// whole.
func recordUse(v []byte) (int64, time.Time, error) {
	const field = `,"accessed":"`
	if i := bytes.Index(v, []byte(field)); i > 0 {
		rest := v[i+len(field):]
		if end := bytes.IndexByte(rest, '"'); end > 0 {
			if t, err := time.Parse(time.RFC3339Nano, string(rest[:end])); err == nil {
				if n, err := recordSize(v); err == nil {
					return n, t, nil
				}
			}
		}
	}
	var bi BlobInfo
	err := json.Unmarshal(v, &bi)
	return bi.Size, bi.Accessed, err
}

// recordSize is the size of a blob record, read from its leading "size"
// field (json.Marshal writes BlobInfo's fields in order) without decoding
// the rest; a record written otherwise is decoded whole.
func recordSize(v []byte) (int64, error) {
	const lead = `{"size":`
	if rest, ok := bytes.CutPrefix(v, []byte(lead)); ok {
		end := bytes.IndexAny(rest, ",}")
		if end > 0 {
			if n, err := strconv.ParseInt(string(rest[:end]), 10, 64); err == nil {
				return n, nil
			}
		}
	}
	var bi BlobInfo
	err := json.Unmarshal(v, &bi)
	return bi.Size, err
}
