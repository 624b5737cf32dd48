package storage

import (
	"errors"
	"io"
	"math"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"
)

// ErrNoSpace is returned by writes refused because the filesystem under the
// store's root is (nearly) full: a blob below MinFree, an index record below
// the index's reserve. Callers serve without storing.
var ErrNoSpace = errors.New("storage: not enough free space")

// A full filesystem must never take the index down. Badger writes its
// write-ahead log and new tables through memory-mapped files, and a write
// to a mapped page the filesystem has no room for is a SIGBUS, not an
// error. So:
//
//   - below MinFree, no blob or manifest is stored (fills pass through);
//   - below the reserve, no index record is written;
//   - a ballast file of reserve bytes is kept under the root while there is
//     room, and removed the moment something else (a foreign file, another
//     program) eats the filesystem below the reserve, so that Badger's
//     background flushes and a clean close still find room;
//   - a store opened with less than half the reserve free opens its index
//     read-only, and reopens it read-write once MinFree is free again.

// space reads the free space of the filesystem under a store's root.
type space struct {
	statfs  func() (avail, total uint64, err error)
	minFree int64  // below it, nothing new is stored
	reserve int64  // the ballast's size; index writes stop below half of it
	ballast string // path of the ballast file

	mu    sync.Mutex
	at    time.Time
	avail int64
}

// readingAge is how long a statfs reading is trusted: fills check the
// space every MiB they write.
const readingAge = 10 * time.Millisecond

func newSpace(root string, opts Options) (*space, error) {
	sp := &space{statfs: opts.Statfs, ballast: filepath.Join(root, "reserve")}
	if sp.statfs == nil {
		sp.statfs = func() (uint64, uint64, error) { return statfs(root) }
	}
	_, total, err := sp.statfs()
	if err != nil {
		return nil, err
	}
	sp.minFree = max(opts.MinFree, int64(opts.MinFreeRatio*float64(total)))
	if sp.minFree > 0 {
		// Room for Badger to flush both its memtables, at least.
		sp.reserve = min(max(sp.minFree/2, 2*numMemtables*memTableSize), 64<<20)
	}
	return sp, nil
}

func statfs(path string) (avail, total uint64, err error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(path, &st); err != nil {
		return 0, 0, err
	}
	return uint64(st.Bavail) * uint64(st.Bsize), uint64(st.Blocks) * uint64(st.Bsize), nil
}

// free is the free space now (a reading at most readingAge old). When it
// falls under the reserve the ballast goes, and the reading is taken again.
func (sp *space) free() int64 {
	sp.mu.Lock()
	defer sp.mu.Unlock()
	if time.Since(sp.at) < readingAge {
		return sp.avail
	}
	sp.read()
	if sp.avail < sp.reserve && os.Remove(sp.ballast) == nil {
		sp.read()
	}
	return sp.avail
}

// read takes a reading; sp.mu must be held. A filesystem that cannot say
// is taken to have room: statfs failing must not stop the store.
func (sp *space) read() {
	avail, _, err := sp.statfs()
	sp.avail, sp.at = math.MaxInt64, time.Now()
	if err == nil {
		sp.avail = int64(min(avail, math.MaxInt64))
	}
}

// forget drops the reading, so that the next one is taken afresh.
func (sp *space) forget() {
	sp.mu.Lock()
	sp.at = time.Time{}
	sp.mu.Unlock()
}

// low reports whether the filesystem is under MinFree: nothing new may be
// stored.
func (sp *space) low() bool { return sp.minFree > 0 && sp.free() < sp.minFree }

// critical reports whether the filesystem is under half the reserve: the
// index may take no more writes.
func (sp *space) critical() bool { return sp.reserve > 0 && sp.free() < sp.reserve/2 }

// keepBallast puts the ballast back once there is room for it and MinFree
// besides.
func (sp *space) keepBallast() {
	if sp.reserve == 0 {
		return
	}
	if _, err := os.Stat(sp.ballast); err == nil || sp.free() < sp.minFree+sp.reserve {
		return
	}
	f, err := os.CreateTemp(filepath.Dir(sp.ballast), "reserve-")
	if err != nil {
		return
	}
	defer os.Remove(f.Name())
	_, err = io.CopyN(f, zeros{}, sp.reserve)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil && cerr == nil {
		os.Rename(f.Name(), sp.ballast)
	}
	sp.forget()
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}
