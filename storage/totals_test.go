package storage

import (
	"fmt"
	"testing"

	"github.com/opencontainers/go-digest"
)

// A store stopped cleanly starts without reading its blob records; one
// that crashed counts them, and never trusts totals from before the crash.
func TestTotalsOutliveACleanStopOnly(t *testing.T) {
	root := t.TempDir()
	commit := func(s *Store, data string) {
		t.Helper()
		w, err := s.Create(digest.FromString(data), "application/octet-stream")
		if err != nil {
			t.Fatal(err)
		}
		w.Write([]byte(data))
		if err := w.Commit(int64(len(data))); err != nil {
			t.Fatal(err)
		}
	}
	s, err := Open(root, Options{})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		commit(s, fmt.Sprintf("blob %d", i)) // 6 bytes each
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.recordBlob(digest.FromString("late"), 4, "", nil); err != errClosed {
		t.Fatalf("a record after Close: %v, want %v", err, errClosed)
	}

	counted := blobCounts.Load()
	s, err = Open(root, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if b, n := s.Size(); b != 18 || n != 3 {
		t.Fatalf("after a clean stop: %d bytes, %d blobs; want 18, 3", b, n)
	}
	if got := blobCounts.Load() - counted; got != 0 {
		t.Fatalf("a start after a clean stop counted the blob records %d times", got)
	}
	commit(s, "blob 3")
	if err := s.removeBlob(digest.FromString("blob 0")); err != nil {
		t.Fatal(err)
	}
	commit(s, "a blob of 16 B.")
	crash(t, s)

	s = open(t, root)
	if b, n := s.Size(); b != 33 || n != 4 {
		t.Fatalf("after a crash: %d bytes, %d blobs; want 33, 4", b, n)
	}
	if got := blobCounts.Load() - counted; got != 1 {
		t.Fatalf("a start after a crash counted the blob records %d times, want 1", got)
	}
}

// A store that opened read-only kept the totals a clean stop left (it can
// delete nothing): once it is writable they go, so that a crash after its
// first write leaves a start that counts, not one that trusts them.
func TestTotalsGoWhenAReadOnlyIndexBecomesWritable(t *testing.T) {
	root := t.TempDir()
	d := &disk{}
	d.avail.Store(1 << 30)
	s, err := Open(root, Options{MinFree: 64 * mib, Statfs: d.statfs})
	if err != nil {
		t.Fatal(err)
	}
	put(t, s, "before")
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	d.avail.Store(0)
	s, err = Open(root, Options{MinFree: 64 * mib, Statfs: d.statfs})
	if err != nil || !s.ReadOnly() {
		t.Fatalf("open on a full filesystem: %v, read-only %v", err, s != nil && s.ReadOnly())
	}
	d.set(s, 1<<30)
	if err := s.db.reopen(); err != nil || s.ReadOnly() {
		t.Fatalf("reopen with room: %v", err)
	}
	put(t, s, "after the reopen")
	crash(t, s)

	counted := blobCounts.Load()
	s = open(t, root)
	if _, n := s.Size(); n != 2 || blobCounts.Load() != counted+1 {
		t.Fatalf("after a crash: %d blobs, counted %d times; want 2 blobs, counted once", n, blobCounts.Load()-counted)
	}
}

// crash stops s as a crash would for its index: closed (what a crash loses
// of it, its write-ahead log gives back), the totals not recorded.
func crash(t *testing.T, s *Store) {
	t.Helper()
	close(s.stop)
	<-s.done
	if err := s.db.close(); err != nil {
		t.Fatal(err)
	}
	s.lock.Close()
}
