package storage

import (
	"errors"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"

	"github.com/opencontainers/go-digest"
)

// disk is a filesystem whose free space a test sets.
type disk struct{ avail atomic.Int64 }

func (d *disk) statfs() (uint64, uint64, error) { return uint64(d.avail.Load()), 1 << 30, nil }

// set changes the free space, and makes the store read it at once.
func (d *disk) set(s *Store, n int64) {
	d.avail.Store(n)
	s.sp.mu.Lock()
	s.sp.at = s.sp.at.AddDate(-1, 0, 0)
	s.sp.mu.Unlock()
}

const mib = 1 << 20

func openDisk(t *testing.T, root string, d *disk) *Store {
	t.Helper()
	s, err := Open(root, Options{MinFree: 64 * mib, Statfs: d.statfs})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.avail.Store(1 << 30); s.Close() })
	return s
}

// Below min_free nothing new is stored, not even a blob already being
// written; below the reserve the index takes no writes; with room again,
// both work.
func TestFullDiskRefusesWritesWithoutFailingReads(t *testing.T) {
	d := &disk{}
	d.avail.Store(1 << 30)
	s := openDisk(t, t.TempDir(), d)
	kept := put(t, s, "stored while there was room")
	if err := s.PutTag("u", "r", "1", TagInfo{Digest: kept}); err != nil {
		t.Fatal(err)
	}

	// A fill under way when the filesystem fills up stops at the next MiB.
	big := make([]byte, 3*mib)
	w, err := s.Create(digest.FromBytes(big), "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(big[:mib/2]); err != nil {
		t.Fatal(err)
	}
	d.set(s, 32*mib) // under min_free, over the reserve
	if _, err := w.Write(big[mib/2:]); !errors.Is(err, ErrNoSpace) {
		t.Fatalf("writing on under min_free: %v", err)
	}
	w.Cancel()
	if _, err := s.Create(digest.FromString("new"), ""); !errors.Is(err, ErrNoSpace) {
		t.Fatalf("Create under min_free: %v", err)
	}
	if err := s.PutTag("u", "r", "2", TagInfo{Digest: kept}); err != nil {
		t.Fatalf("the index refused a write over its reserve: %v", err)
	}

	d.set(s, 4*mib) // under half the reserve (32 MiB)
	for name, err := range map[string]error{
		"PutTag":     s.PutTag("u", "r", "3", TagInfo{Digest: kept}),
		"AddMembers": s.AddMembers("u", "r", kept),
		"PutJob":     s.PutJob("j", []byte(`{}`), map[int][]byte{0: []byte(`{}`)}),
	} {
		if !errors.Is(err, ErrNoSpace) {
			t.Errorf("%s under the reserve: %v", name, err)
		}
	}
	if ti, err := s.Tag("u", "r", "1"); err != nil || ti.Digest != kept {
		t.Fatalf("reading under the reserve: %v %v", ti, err)
	}
	if f, _, err := s.Open(kept); err != nil {
		t.Fatalf("opening a stored blob under the reserve: %v", err)
	} else {
		f.Close()
	}

	d.set(s, 1<<30)
	put(t, s, "stored once there is room again")
}

// The ballast is made when the store opens, not in the middle of its first
// fills, kept while there is room, and given up the moment the filesystem
// falls under the reserve.
func TestBallast(t *testing.T) {
	d := &disk{}
	d.avail.Store(1 << 30)
	root := t.TempDir()
	s := openDisk(t, root, d)
	fi, err := os.Stat(filepath.Join(root, "reserve"))
	if err != nil || fi.Size() != s.sp.reserve || s.sp.reserve != 32*mib {
		t.Fatalf("ballast: %v %v, reserve %d", fi, err, s.sp.reserve)
	}
	d.set(s, 8*mib)
	s.sp.free()
	if _, err := os.Stat(filepath.Join(root, "reserve")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("ballast kept under the reserve: %v", err)
	}
	d.set(s, 70*mib) // not enough for min_free and the ballast
	s.sp.keepBallast()
	if _, err := os.Stat(filepath.Join(root, "reserve")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("ballast made again without room: %v", err)
	}
}

// A store opened on a full filesystem opens its index read-only: what it
// holds is read, nothing is written, and it becomes read-write once there
// is room.
func TestOpenOnAFullDiskIsReadOnlyUntilThereIsRoom(t *testing.T) {
	root := t.TempDir()
	d := &disk{}
	d.avail.Store(1 << 30)
	s, err := Open(root, Options{MinFree: 64 * mib, Statfs: d.statfs})
	if err != nil {
		t.Fatal(err)
	}
	kept := put(t, s, "kept")
	s.PutTag("u", "r", "1", TagInfo{Digest: kept})
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	d.avail.Store(0)
	s = openDisk(t, root, d)
	if !s.ReadOnly() {
		t.Fatal("opened read-write on a full filesystem")
	}
	if ti, err := s.Tag("u", "r", "1"); err != nil || ti.Digest != kept {
		t.Fatalf("read-only index: %v %v", ti, err)
	}
	if err := s.PutTag("u", "r", "2", TagInfo{Digest: kept}); !errors.Is(err, ErrNoSpace) {
		t.Fatalf("write to a read-only index: %v", err)
	}
	if _, err := s.Create(digest.FromString("x"), ""); !errors.Is(err, ErrNoSpace) {
		t.Fatalf("Create on a read-only store: %v", err)
	}
	d.set(s, 1<<30)
	if err := s.db.reopen(); err != nil || s.ReadOnly() {
		t.Fatalf("reopen with room: %v, read-only %v", err, s.ReadOnly())
	}
	if err := s.PutTag("u", "r", "2", TagInfo{Digest: kept}); err != nil {
		t.Fatal(err)
	}
	put(t, s, "stored after the reopen")
}

// Closing on a filesystem with no room for the memtable's flush leaves the
// index for its log to be replayed, and says so, rather than crash.
func TestCloseOnAFullDisk(t *testing.T) {
	d := &disk{}
	d.avail.Store(1 << 30)
	s, err := Open(t.TempDir(), Options{MinFree: 64 * mib, Statfs: d.statfs})
	if err != nil {
		t.Fatal(err)
	}
	put(t, s, "in the memtable")
	d.set(s, mib)
	if err := s.Close(); !errors.Is(err, ErrNoSpace) {
		t.Fatalf("Close on a full disk: %v", err)
	}
}

// Eviction works on a full disk: a blob's file goes first, and its record's
// deletion does not wait for room; the access times in memory order it.
func TestEvictionOnAFullDisk(t *testing.T) {
	d := &disk{}
	d.avail.Store(1 << 30)
	s := openDisk(t, t.TempDir(), d)
	recent := put(t, s, "used just now")
	old := put(t, s, "used long ago")
	d.set(s, mib)   // under half the reserve
	s.Touch(recent) // known in memory only: the index takes no writes
	gone, _, err := s.Evict(int64(len("used just now")), func(digest.Digest) bool { return false })
	if err != nil || len(gone) != 1 || gone[0].Digest != old {
		t.Fatalf("evict on a full disk: %v %v", gone, err)
	}
	if b, n := s.Size(); b != int64(len("used just now")) || n != 1 {
		t.Fatalf("totals: %d bytes, %d blobs", b, n)
	}
}

// A new store on a nearly full filesystem starts (a first deployment must
// not crash-loop): its empty index stands in memory, takes no writes, and
// moves to disk, read-write, once there is room.
func TestNewStoreStartsOnAFullDisk(t *testing.T) {
	d := &disk{}
	d.avail.Store(4 * mib) // under half the reserve
	root := t.TempDir()
	s, err := Open(root, Options{MinFree: 64 * mib, Statfs: d.statfs})
	if err != nil {
		t.Fatal(err)
	}
	if !s.ReadOnly() {
		t.Fatal("a store opened on a full filesystem takes writes")
	}
	if _, err := s.Blob(digest.FromString("x")); !errors.Is(err, ErrNotFound) {
		t.Fatalf("a blob of the empty store: %v", err)
	}
	if err := s.PutTag("u", "r", "1", TagInfo{}); !errors.Is(err, ErrNoSpace) {
		t.Fatalf("a write while full: %v", err)
	}
	d.set(s, 1<<30)
	if err := s.db.reopen(); err != nil || s.ReadOnly() {
		t.Fatalf("with room again: %v, read-only %v", err, s.ReadOnly())
	}
	kept := put(t, s, "stored once there was room")
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openDisk(t, root, d)
	if _, err := s.Blob(kept); err != nil {
		t.Fatalf("after a restart: %v", err)
	}
}
