package storage

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"github.com/dgraph-io/badger/v4"
	"golang.org/x/sys/unix"
)

// Badger's memtables: the most its flushes (at close, say) write at once
// is numMemtables × memTableSize.
const numMemtables = 2

// memTableSize is one memtable's size (a variable for the tests' churn).
var memTableSize int64 = 4 << 20

// db is the Badger index behind a lock that lets it be reopened: read-only
// when the store opens on a full filesystem, read-write again once there
// is room. Writes pass the space gate first.
type db struct {
	dir string
	sp  *space

	mu       sync.RWMutex
	bdb      *badger.DB
	readOnly bool
	// writes is held shared by every write and exclusively by the
	// value log's collection, one file at a time (see collect): Badger
	// reads the memtable's version unsynchronised when a collection
	// starts, which a concurrent write races. Reads go on meanwhile.
	writes sync.RWMutex
}

// valueLogFileSize is the size of one value-log file: the unit the index's
// collection rewrites (a variable for the tests' churn).
var valueLogFileSize int64 = 64 << 20

// badgerOptions: every table's index and Bloom filter stay in memory,
// which a lookup in a large store would otherwise reload through a cache
// (at 100,000 blobs, manifests by tag were a third slower with a 16 MiB
// index cache); the block cache fills only as blocks are read.
func badgerOptions(dir string, readOnly bool) badger.Options {
	return badger.DefaultOptions(dir).
		WithLogger(nil).
		WithReadOnly(readOnly).
		WithMemTableSize(memTableSize).
		WithNumMemtables(numMemtables).
		WithBlockCacheSize(64 << 20).
		WithIndexCacheSize(0).
		WithValueThreshold(64 << 10).
		WithValueLogFileSize(valueLogFileSize).
		WithNumCompactors(2)
}

// openDB opens the index read-write, or read-only when the filesystem has
// no room for what opening read-write writes (a new log file's header, the
// flush of a log left by a crash).
func openDB(dir string, sp *space) (*db, error) {
	d := &db{dir: dir, sp: sp, readOnly: sp.critical()}
	if err := trimHoles(dir); err != nil {
		return nil, err
	}
	if _, err := os.Stat(filepath.Join(dir, badger.ManifestFilename)); d.readOnly && errors.Is(err, fs.ErrNotExist) {
		// A new index cannot be opened read-only, and there is no room
		// to create one: an empty one in memory stands in, taking no
		// writes, until reopen finds room (a first deployment on a
		// nearly full disk serves, passing misses through).
		var err error
		d.bdb, err = badger.Open(badgerOptions("", false).WithInMemory(true))
		return d, err
	}
	var err error
	for range 8 {
		d.bdb, err = badger.Open(badgerOptions(dir, d.readOnly))
		if err == nil || !d.readOnly {
			return d, err
		}
		// Read-only, Badger refuses a log a crash left unfinished (it
		// would cut it, a write). Make that cut as Badger itself would.
		if !cutLog(dir, err) {
			break
		}
	}
	return nil, fmt.Errorf("the filesystem under the store is full (%d bytes free) and the index cannot be opened read-only: free %d bytes: %w",
		sp.free(), sp.reserve, err)
}

// truncateNeeded is how Badger says, read-only, which write-ahead log to
// cut where: "... opening fid: 1 ... end offset: 1622 < size: 4096 ...
// Log truncate required". Badger wraps its errors as text, so the text it
// is.
var truncateNeeded = regexp.MustCompile(`fid: (\d+) .*end offset: (\d+) < size: (\d+)`)

// cutLog cuts the write-ahead log an open refused at the offset where
// Badger found its last complete transaction: what a read-write open
// does first. It reports whether it cut anything.
func cutLog(dir string, err error) bool {
	if !strings.Contains(err.Error(), badger.ErrTruncateNeeded.Error()) {
		return false
	}
	m := truncateNeeded.FindStringSubmatch(err.Error())
	if m == nil {
		return false
	}
	fid, _ := strconv.Atoi(m[1])
	end, _ := strconv.ParseInt(m[2], 10, 64)
	return os.Truncate(filepath.Join(dir, fmt.Sprintf("%05d.mem", fid)), end) == nil
}

// ReadOnly reports whether the index was opened read-only for lack of
// space: the store serves what it holds and stores nothing.
func (s *Store) ReadOnly() bool {
	s.db.mu.RLock()
	defer s.db.mu.RUnlock()
	return s.db.readOnly
}

// reopen makes a read-only index read-write once the filesystem has MinFree
// again.
func (d *db) reopen() error {
	d.mu.RLock()
	readOnly := d.readOnly
	d.mu.RUnlock()
	if !readOnly || d.sp.low() {
		return nil // the common case takes no exclusive lock
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.readOnly {
		return nil
	}
	if err := d.bdb.Close(); err != nil {
		return err
	}
	if err := trimHoles(d.dir); err != nil {
		return err
	}
	bdb, err := badger.Open(badgerOptions(d.dir, false))
	if err == nil {
		if err = forgetTotals(bdb); err != nil {
			bdb.Close()
		}
	}
	if err != nil {
		if bdb, rerr := badger.Open(badgerOptions(d.dir, true)); rerr == nil {
			d.bdb = bdb
		}
		return err
	}
	d.bdb, d.readOnly = bdb, false
	return nil
}

// close closes the index. A read-write index flushes its memtable into a
// new table on close; on a filesystem with no room for that, it is left
// open for the process to end, and its write-ahead log is replayed at the
// next open: nothing is lost, nothing crashes.
func (d *db) close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.readOnly && d.sp.reserve > 0 {
		need := 2*logBytes(d.dir) + 1<<20
		if d.sp.free() < need {
			os.Remove(d.sp.ballast) // what it is kept for
			d.sp.forget()
		}
		if free := d.sp.free(); free < need {
			return fmt.Errorf("index left for its log to be replayed (%d bytes free, its flush needs %d): %w", free, need, ErrNoSpace)
		}
	}
	return d.bdb.Close()
}

// logBytes is what Badger's write-ahead logs hold on disk: what flushing
// the memtables at close writes, about.
func logBytes(dir string) int64 {
	var n int64
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if filepath.Ext(e.Name()) != ".mem" {
			continue
		}
		var st syscall.Stat_t
		if syscall.Stat(filepath.Join(dir, e.Name()), &st) == nil {
			n += st.Blocks * 512
		}
	}
	return n
}

// trimHoles cuts Badger's memory-mapped logs (write-ahead .mem files and
// .vlog files) at their first hole, before Badger opens them. Badger makes
// them sparse at their full size and replays them by reading on until an
// empty entry; on tmpfs (a Kubernetes emptyDir in memory, say) reading a
// hole of a shared mapping allocates a page, and on a full filesystem that
// is a SIGBUS. What is written is contiguous from the start (the logs are
// appended to), so the cut drops nothing Badger would not drop itself; a
// file with nothing written at all goes.
func trimHoles(dir string) error {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range ents {
		if ext := filepath.Ext(e.Name()); ext != ".mem" && ext != ".vlog" {
			continue
		}
		if err := trimHole(filepath.Join(dir, e.Name())); err != nil {
			return fmt.Errorf("trim %s: %w", e.Name(), err)
		}
	}
	return nil
}

func trimHole(path string) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	hole, err := f.Seek(0, unix.SEEK_HOLE)
	switch {
	case err != nil || hole >= fi.Size():
		return nil // no hole, or a filesystem that cannot tell
	case hole == 0:
		return os.Remove(path)
	}
	return f.Truncate(hole)
}

// writable refuses a write the filesystem has no room for.
func (d *db) writable() error {
	if d.readOnly || d.sp.critical() {
		return ErrNoSpace
	}
	return nil
}

// View runs a read-only transaction.
func (d *db) View(fn func(*badger.Txn) error) error {
	d.mu.RLock()
	defer d.mu.RUnlock()
	return d.bdb.View(fn)
}

// Update runs a read-write transaction, if there is room for it.
func (d *db) Update(fn func(*badger.Txn) error) error {
	d.mu.RLock()
	defer d.mu.RUnlock()
	if err := d.writable(); err != nil {
		return err
	}
	d.writes.RLock()
	defer d.writes.RUnlock()
	return d.bdb.Update(fn)
}

// sync makes the index's writes so far outlive a crash.
func (d *db) sync() error {
	d.mu.RLock()
	defer d.mu.RUnlock()
	return d.bdb.Sync()
}

// updateFreeing runs a transaction that deletes what the caller has just
// freed on disk (a blob's file): its few bytes of log must not wait for
// room, or nothing could be evicted from a full disk. Only a read-only
// index refuses it.
func (d *db) updateFreeing(fn func(*badger.Txn) error) error {
	d.mu.RLock()
	defer d.mu.RUnlock()
	if d.readOnly {
		return ErrNoSpace
	}
	d.writes.RLock()
	defer d.writes.RUnlock()
	return d.bdb.Update(fn)
}

// batch writes what fn sets or deletes in bounded transactions, if there is
// room for it; fn must not use d.
func (d *db) batch(fn func(*badger.WriteBatch) error) error {
	d.mu.RLock()
	defer d.mu.RUnlock()
	if err := d.writable(); err != nil {
		return err
	}
	d.writes.RLock()
	defer d.writes.RUnlock()
	wb := d.bdb.NewWriteBatch()
	defer wb.Cancel()
	if err := fn(wb); err != nil {
		return err
	}
	return wb.Flush()
}
