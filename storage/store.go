package storage

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/opencontainers/go-digest"
)

// Store is the content-addressed blob store plus its Badger index. It is safe
// for concurrent use.
type Store struct {
	gc       indexGC // the index's value-log collections
	root     string
	bucket   *Bucket   // nil: the root is the only tier
	replica  string    // this store's name in the remote tier
	use      remoteUse // blobs served, to tell the remote tier
	useEvery time.Duration
	up       uploads // blobs the bucket still needs
	db       *db
	sp       *space
	lock     *os.File // flock of <root>/wharf.lock: one store per root
	stop     chan struct{}
	done     chan struct{}
	size     atomic.Int64 // bytes of the blobs recorded (see totals.go)
	blobs    atomic.Int64
	tallies  tallies

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
	tagCache       = 200_000  // entries, ~200 bytes each
	memberCache    = 400_000  // entries, ~150 bytes each
)

type smallBlob struct {
	info BlobInfo
	data []byte
}

// Options tune a store. The zero value keeps no reserve of free space.
type Options struct {
	// MinFree is the free space (bytes, and MinFreeRatio of the
	// filesystem, whichever is more) below which nothing new is stored:
	// fills pass through, and the index keeps a reserve for its own
	// writes (see space.go).
	MinFree      int64
	MinFreeRatio float64
	// Statfs reports the free and total bytes of the filesystem under
	// root; nil: statfs(2). Tests fill a disk with it.
	Statfs func() (avail, total uint64, err error)
	// Bucket is the shared tier or nil: every blob committed here is
	// uploaded to it soon after (see uploads.go), so the root is a fill
	// buffer and a hot cache in front of it.
	Bucket *Bucket
	// UploadRetry is the first pause before uploads to a bucket that
	// failed are tried again (0: a second); it doubles up to a minute.
	UploadRetry time.Duration
	// UseEvery is how often the blobs served are told to the bucket (gc's
	// last use), and those it lost queued for upload again (0: 5 minutes).
	UseEvery time.Duration
	// Replica names this store in the remote tier (its pin list); default
	// the host name, a pod's name in Kubernetes.
	Replica string
}

// Open opens (creating if needed) the store under root. Leftover temporary
// files from an earlier run are removed: a fill that did not commit is never
// served. On a filesystem with no room left the index opens read-only, and
// the store serves what it holds until there is room again.
func Open(root string, opts Options) (*Store, error) {
	s := &Store{
		root:     root,
		bucket:   opts.Bucket,
		replica:  opts.Replica,
		useEvery: cmp.Or(opts.UseEvery, remoteUseEvery),
		stop:     make(chan struct{}),
		done:     make(chan struct{}),
		small:    newLRU[digest.Digest](smallBlobCache, func(b smallBlob) int { return len(b.data) }),
		tags:     newLRU[string](tagCache, func(TagInfo) int { return 1 }),
		members:  newLRU[string](memberCache, func(struct{}) int { return 1 }),
	}
	if err := os.MkdirAll(filepath.Join(root, "index"), 0o755); err != nil {
		return nil, fmt.Errorf("create store: %w", err)
	}
	sp, err := newSpace(root, opts)
	if err != nil {
		return nil, fmt.Errorf("read free space: %w", err)
	}
	s.sp = sp
	// One store per root, whatever mode the index opens in: a second
	// process (wharf check, a second wharf serve) fails here, before it
	// touches the fills of the first.
	if s.lock, err = lockRoot(root); err != nil {
		return nil, err
	}
	if s.db, err = openDB(filepath.Join(root, "index"), sp); err != nil {
		s.lock.Close()
		return nil, fmt.Errorf("open index: %w", err)
	}
	if err := s.cleanTmp(); err != nil {
		s.db.close()
		s.lock.Close()
		return nil, err
	}
	if err := s.loadTotals(); err != nil {
		s.db.close()
		s.lock.Close()
		return nil, err
	}
	// The ballast now, before any fill: 64 MiB written and synced while
	// the first pulls run would slow them.
	s.sp.keepBallast()
	s.startUploads(cmp.Or(opts.UploadRetry, time.Second))
	go s.watch()
	return s, nil
}

// lockRoot takes an exclusive lock on <root>/wharf.lock, held until Close.
func lockRoot(root string) (*os.File, error) {
	f, err := os.OpenFile(filepath.Join(root, "wharf.lock"), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("lock store: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock store %s: another wharf is using it: %w", root, err)
	}
	return f, nil
}

// cleanTmp removes the temporary files of fills a crash interrupted. The
// directory itself stays: on a full filesystem it could not be made again.
func (s *Store) cleanTmp() error {
	ents, err := os.ReadDir(s.tmpDir())
	if errors.Is(err, os.ErrNotExist) {
		if err := os.MkdirAll(s.tmpDir(), 0o755); err != nil && !s.ReadOnly() {
			return fmt.Errorf("create store: %w", err)
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("clean temp dir: %w", err)
	}
	for _, e := range ents {
		if err := os.RemoveAll(filepath.Join(s.tmpDir(), e.Name())); err != nil {
			return fmt.Errorf("clean temp dir: %w", err)
		}
	}
	return nil
}

// watchEvery is how often the store looks at its filesystem's free space
// when nothing writes: to put the ballast back and to reopen an index
// opened read-only.
var watchEvery = time.Second // a variable for the tests

// watch keeps the ballast and reopens a read-only index once there is
// room, until Close.
func (s *Store) watch() {
	defer close(s.done)
	tick := time.NewTicker(watchEvery)
	defer tick.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-tick.C:
			s.sp.keepBallast()
			s.db.reopen()
			s.flushRemoteUse(false)
			s.maybeCollect(time.Now())
		}
	}
}

// Close records pending access times and closes the index. On a full
// filesystem the index is left for its write-ahead log to be replayed at
// the next open (Close then says so): a flush with no room would crash.
func (s *Store) Close() error {
	close(s.stop)
	<-s.done
	s.up.wg.Wait()
	s.flushRemoteUse(true)
	ferr := s.flushAccess()
	if errors.Is(ferr, ErrNoSpace) {
		ferr = nil // access times are a hint; losing them loses nothing
	}
	terr := s.sealTotals()
	if errors.Is(terr, ErrNoSpace) {
		terr = nil // the next start counts
	}
	err := s.db.close()
	s.lock.Close()
	return errors.Join(err, ferr, terr)
}

// Full reports whether the store takes nothing new now: its filesystem is
// under MinFree, or its index opened read-only. Fills then pass through
// from the start rather than fetch a blob they cannot keep.
// Bucket is the store's shared tier, or nil.
func (s *Store) Bucket() *Bucket { return s.bucket }

// PublishPins tells the remote tier which digests this replica pins.
func (s *Store) PublishPins(ctx context.Context, dgsts []digest.Digest) error {
	if s.bucket == nil {
		return nil
	}
	name := s.replica
	if name == "" {
		name, _ = os.Hostname()
	}
	return s.bucket.PutPins(ctx, cmp.Or(name, "wharf"), dgsts)
}

func (s *Store) Full() bool { return s.sp.low() || s.ReadOnly() }

// FreeSpace reports the free bytes of the filesystem under the store, and
// how many more it would take to reach MinFree (0 when there is room):
// while short is above 0 nothing new is stored, and eviction makes room.
func (s *Store) FreeSpace() (free, short int64) {
	free = s.sp.free()
	return free, max(0, s.sp.minFree-free)
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
