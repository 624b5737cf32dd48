package storage

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/opencontainers/go-digest"
)

// Store is the content-addressed blob store plus its Badger index. It is safe
// for concurrent use.
type Store struct {
	root  string
	db    *badger.DB
	size  atomic.Int64
	blobs atomic.Int64

	// In-memory read caches, written through: a warm manifest request
	// touches neither Badger nor the disk.
	access  accessLog
	small   *lru[digest.Digest, smallBlob]
	tags    *lru[string, TagInfo]
	members *lru[string, struct{}]
}

// Cache bounds: bytes of small blobs, and entries of tags and memberships.
const (
	smallBlobCache = 16 << 20 // bytes
	tagCache       = 20_000   // entries, ~200 bytes each
	memberCache    = 100_000  // entries, ~150 bytes each
)

type smallBlob struct {
	info BlobInfo
	data []byte
}

// Open opens (creating if needed) the store under root. Leftover temporary
// files from an earlier run are removed: a fill that did not commit is never
// served.
func Open(root string) (*Store, error) {
	s := &Store{
		root:    root,
		small:   newLRU[digest.Digest](smallBlobCache, func(b smallBlob) int { return len(b.data) }),
		tags:    newLRU[string](tagCache, func(TagInfo) int { return 1 }),
		members: newLRU[string](memberCache, func(struct{}) int { return 1 }),
	}
	opts := badger.DefaultOptions(filepath.Join(root, "index")).
		WithLogger(nil).
		WithMemTableSize(8 << 20).
		WithNumMemtables(2).
		WithBlockCacheSize(8 << 20).
		WithIndexCacheSize(4 << 20).
		WithValueLogFileSize(64 << 20).
		WithNumCompactors(2)
	db, err := badger.Open(opts)
	if err != nil {
		return nil, fmt.Errorf("open index: %w", err)
	}
	s.db = db
	// Only now, holding the index's lock, is this the only store on root:
	// a second process opening a live root fails above and must not remove
	// the temporary files of the fills running in the first.
	if err := os.RemoveAll(s.tmpDir()); err != nil {
		db.Close()
		return nil, fmt.Errorf("clean temp dir: %w", err)
	}
	if err := os.MkdirAll(s.tmpDir(), 0o755); err != nil {
		db.Close()
		return nil, fmt.Errorf("create store: %w", err)
	}
	if err := s.countBlobs(); err != nil {
		db.Close()
		return nil, err
	}
	return s, nil
}

// Close records pending access times and closes the index.
func (s *Store) Close() error {
	ferr := s.flushAccess()
	if err := s.db.Close(); err != nil {
		return err
	}
	return ferr
}

// Size reports the bytes and number of blobs recorded in the store, for
// metrics; it is kept as a running total rather than walked.
func (s *Store) Size() (bytes, blobs int64) { return s.size.Load(), s.blobs.Load() }

func (s *Store) tmpDir() string { return filepath.Join(s.root, "docker", "registry", "v2", "tmp") }

// ReadSmall returns a stored blob of at most max bytes, and its record, from
// memory when it was read recently; manifests are read this way.
func (s *Store) ReadSmall(dgst digest.Digest, max int64) ([]byte, BlobInfo, error) {
	if b, ok := s.small.get(dgst); ok {
		return b.data, b.info, nil
	}
	bi, err := s.Blob(dgst)
	if err != nil {
		return nil, BlobInfo{}, err
	}
	if bi.Size > max {
		return nil, BlobInfo{}, fmt.Errorf("blob %s: %d bytes is over the %d byte limit", dgst, bi.Size, max)
	}
	f, _, err := s.Open(dgst)
	if err != nil {
		return nil, BlobInfo{}, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, max+1))
	if err != nil {
		return nil, BlobInfo{}, err
	}
	if int64(len(data)) != bi.Size || digest.FromBytes(data) != dgst {
		// Damaged on disk: treat as absent so it is fetched again.
		return nil, BlobInfo{}, fmt.Errorf("blob %s on disk does not match its digest: %w", dgst, ErrNotFound)
	}
	s.small.put(dgst, smallBlob{info: bi, data: data})
	return data, bi, nil
}

// BlobInfo is the index record of a stored blob.
type BlobInfo struct {
	Size      int64     `json:"size"`
	MediaType string    `json:"mediaType,omitempty"`
	Accessed  time.Time `json:"accessed"`
}

// Blob returns the index record for dgst, or ErrNotFound.
func (s *Store) Blob(dgst digest.Digest) (BlobInfo, error) {
	var bi BlobInfo
	err := s.get(blobKey(dgst), &bi)
	return bi, err
}

func (s *Store) recordBlob(dgst digest.Digest, size int64, mediaType string) error {
	key := blobKey(dgst)
	fresh := false
	err := retryConflict(func() error { // the retry of a conflict sees the other's record
		return s.db.Update(func(txn *badger.Txn) error {
			_, err := txn.Get(key)
			fresh = errors.Is(err, badger.ErrKeyNotFound)
			return setJSON(txn, key, BlobInfo{Size: size, MediaType: mediaType, Accessed: time.Now()})
		})
	})
	if err == nil && fresh {
		s.size.Add(size)
		s.blobs.Add(1)
	}
	return err
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

func (s *Store) countBlobs() error {
	return s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{PrefetchValues: true, Prefix: []byte(prefixBlob)})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			var bi BlobInfo
			if err := it.Item().Value(func(v []byte) error { return json.Unmarshal(v, &bi) }); err != nil {
				return fmt.Errorf("read index: %w", err)
			}
			s.size.Add(bi.Size)
			s.blobs.Add(1)
		}
		return nil
	})
}
