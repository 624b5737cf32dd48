package storage

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/opencontainers/go-digest"
)

func put(t *testing.T, s *Store, data string) digest.Digest {
	t.Helper()
	d := digest.FromString(data)
	w, err := s.Create(d, "")
	if err != nil {
		t.Fatal(err)
	}
	w.Write([]byte(data))
	if err := w.Commit(int64(len(data))); err != nil {
		t.Fatal(err)
	}
	return d
}

func TestCheckFindsAndRepairs(t *testing.T) {
	root := t.TempDir()
	s := open(t, root)
	good := put(t, s, "good")
	corrupt := put(t, s, "corrupt")
	dangling := put(t, s, "dangling")
	p, _ := s.blobPath(corrupt)
	os.WriteFile(p, []byte("tampered"), 0o644)
	p, _ = s.blobPath(dangling)
	os.Remove(p)
	// An orphan: a verified file whose record was lost in a crash.
	orphan := digest.FromString("orphan")
	p, _ = s.blobPath(orphan)
	os.MkdirAll(filepath.Dir(p), 0o755)
	os.WriteFile(p, []byte("orphan"), 0o644)
	// A file that is neither: wrong bytes and no record.
	junk := digest.FromString("junk")
	p, _ = s.blobPath(junk)
	os.MkdirAll(filepath.Dir(p), 0o755)
	os.WriteFile(p, []byte("not junk"), 0o644)

	kinds := func(ps []Problem) map[digest.Digest]string {
		m := map[digest.Digest]string{}
		for _, p := range ps {
			m[p.Digest] = p.Kind
		}
		return m
	}
	var calls int
	ps, err := s.Check(CheckOptions{Verify: true, Progress: func(done, total int) { calls++ }})
	if err != nil {
		t.Fatal(err)
	}
	want := map[digest.Digest]string{corrupt: "corrupt", dangling: "dangling", orphan: "orphan", junk: "corrupt"}
	if got := kinds(ps); len(got) != len(want) || got[corrupt] != "corrupt" || got[dangling] != "dangling" || got[orphan] != "orphan" || got[junk] != "corrupt" {
		t.Fatalf("problems: %v", ps)
	}
	if calls == 0 {
		t.Fatal("no progress reported")
	}
	if _, err := s.Check(CheckOptions{Verify: true, Repair: true}); err != nil {
		t.Fatal(err)
	}
	if ps, _ := s.Check(CheckOptions{Verify: true}); len(ps) != 0 {
		t.Fatalf("after repair: %v", ps)
	}
	if _, err := s.Blob(orphan); err != nil {
		t.Fatalf("orphan not indexed: %v", err)
	}
	if _, _, err := s.Open(corrupt); err == nil {
		t.Fatal("corrupt file kept")
	}
	if b, n := s.Size(); n != 2 || b != int64(len("good")+len("orphan")) {
		t.Fatalf("totals after repair: %d blobs, %d bytes", n, b)
	}
	_ = good
}

func TestReadSmallRefusesDamagedBytes(t *testing.T) {
	s := open(t, t.TempDir())
	d := put(t, s, `{"a":1}`)
	p, _ := s.blobPath(d)
	os.WriteFile(p, []byte(`{"a":2}`), 0o644)
	if _, _, err := s.ReadSmall(d, 100); err == nil {
		t.Fatal("damaged manifest read back")
	}
}

// A record whose file was deleted behind the store's back heals on first
// access instead of answering "not found" forever.
func TestOpenDropsARecordWithoutAFile(t *testing.T) {
	s := open(t, t.TempDir())
	d := put(t, s, "vanishing")
	p, _ := s.blobPath(d)
	os.Remove(p)
	if _, _, err := s.Open(d); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Open: %v", err)
	}
	if _, err := s.Blob(d); !errors.Is(err, ErrNotFound) {
		t.Fatalf("record kept: %v", err)
	}
	if b, n := s.Size(); b != 0 || n != 0 {
		t.Fatalf("totals: %d bytes, %d blobs", b, n)
	}
}
