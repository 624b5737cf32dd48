package storage

import (
	"os"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
)

// Badger keeps values of 64 KiB and more (job records, large manifests) in
// value-log files that only its garbage collection shrinks: nothing else
// reclaims what overwritten and deleted records leave there, and months of
// churn would grow them without bound. The store collects them itself,
// every indexGCEvery, rewriting each log file at least half garbage until
// none is. Smaller records live in the LSM tree, which Badger's own
// compactions keep to its live size.

// indexGCEvery is how often the value log is collected (a variable for
// the tests).
var indexGCEvery = 10 * time.Minute

// indexGCDiscard is the share of a log file that must be garbage for it
// to be rewritten.
const indexGCDiscard = 0.5

// IndexStats are the index's size on disk and what its collection did.
type IndexStats struct {
	LSMBytes, LogBytes int64 // the tree's tables, and the value-log files
	GCRuns             int64 // collections run
	GCRewrites         int64 // value-log files rewritten
	GCReclaimedBytes   int64 // value-log bytes freed
}

// indexGC is what the collections did, for IndexStats.
type indexGC struct {
	runs, rewrites, reclaimed atomic.Int64
	last                      time.Time // the watch loop's only
}

// IndexStats reports the index's files and its collections.
func (s *Store) IndexStats() IndexStats {
	lsm, vlog := indexFiles(s.db.dir)
	return IndexStats{LSMBytes: lsm, LogBytes: vlog, GCRuns: s.gc.runs.Load(), GCRewrites: s.gc.rewrites.Load(), GCReclaimedBytes: s.gc.reclaimed.Load()}
}

// CollectIndex runs the value log's garbage collection now, as the store
// does every 10 minutes: wharf check runs it, and tests.
func (s *Store) CollectIndex() (rewrites int, reclaimed int64) {
	return s.db.collect(&s.gc)
}

// collect rewrites value-log files while Badger finds one worth it.
func (d *db) collect(gc *indexGC) (rewrites int, reclaimed int64) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	if d.readOnly || d.dir == "" {
		return 0, 0
	}
	_, before := indexFiles(d.dir)
	for rewrites < 1000 { // bounded: each call rewrites at most one file
		// ErrNoRewrite: nothing worth it; ErrRejected: a collection is
		// already running, or the index is closing.
		d.writes.Lock()
		err := d.bdb.RunValueLogGC(indexGCDiscard)
		d.writes.Unlock()
		if err != nil {
			break
		}
		rewrites++
	}
	_, after := indexFiles(d.dir)
	reclaimed = max(before-after, 0)
	gc.runs.Add(1)
	gc.rewrites.Add(int64(rewrites))
	gc.reclaimed.Add(reclaimed)
	return rewrites, reclaimed
}

// maybeCollect collects every indexGCEvery: from the watch loop.
func (s *Store) maybeCollect(now time.Time) {
	if s.gc.last.IsZero() {
		s.gc.last = now // not at start: opening is slow enough
		return
	}
	if now.Sub(s.gc.last) >= indexGCEvery {
		s.gc.last = now
		s.db.collect(&s.gc)
	}
}

// indexFiles sums the disk the index's tables and value-log files take
// (Badger creates a value-log file at twice its size, sparse).
func indexFiles(dir string) (lsm, vlog int64) {
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		fi, err := e.Info()
		if err != nil {
			continue
		}
		switch {
		case strings.HasSuffix(e.Name(), ".vlog"):
			vlog += onDisk(fi)
		case strings.HasSuffix(e.Name(), ".sst"):
			lsm += onDisk(fi)
		}
	}
	return lsm, vlog
}

// onDisk is the disk a file takes: its allocated blocks, not its length.
func onDisk(fi os.FileInfo) int64 {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return st.Blocks * 512
	}
	return fi.Size()
}
