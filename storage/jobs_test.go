package storage

import (
	"errors"
	"fmt"
	"strings"
	"testing"
)

// images reads every image record of job id after index after.
func images(t *testing.T, s *Store, id string, after int) string {
	t.Helper()
	var parts []string
	err := s.JobImages(id, after, func(i int, doc []byte) bool {
		parts = append(parts, fmt.Sprintf("%d=%s", i, doc))
		return true
	})
	if err != nil {
		t.Fatal(err)
	}
	return strings.Join(parts, " ")
}

// A job is one record plus one per image: a step of one image rewrites only
// its own record, and deleting the job leaves nothing behind.
func TestJobRecords(t *testing.T) {
	s := open(t, t.TempDir())
	if err := s.PutJob("a", []byte(`A0`), map[int][]byte{0: []byte(`a0`), 1: []byte(`a1`), 10: []byte(`a10`)}); err != nil {
		t.Fatal(err)
	}
	if err := s.PutJob("b", []byte(`B0`), map[int][]byte{0: []byte(`b0`)}); err != nil {
		t.Fatal(err)
	}
	if err := s.PutJob("a", []byte(`A1`), map[int][]byte{1: []byte(`a1'`)}); err != nil {
		t.Fatal(err)
	}
	if doc, err := s.Job("a"); err != nil || string(doc) != "A1" {
		t.Fatalf("job a: %v %s", err, doc)
	}
	if got := images(t, s, "a", -1); got != "0=a0 1=a1' 10=a10" {
		t.Fatalf("images of a: %s", got)
	}
	if got := images(t, s, "a", 1); got != "10=a10" {
		t.Fatalf("images of a after 1: %s", got)
	}
	if docs, err := s.Jobs(); err != nil || len(docs) != 2 || string(docs[0]) != "A1" || string(docs[1]) != "B0" {
		t.Fatalf("jobs: %v %q", err, docs)
	}
	if err := s.DeleteJob("a"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Job("a"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("deleted job: %v", err)
	}
	if err := s.PutJob("a", []byte(`A2`), nil); err != nil {
		t.Fatal(err)
	}
	if got := images(t, s, "a", -1); got != "" {
		t.Fatalf("image records outlived their job: %s", got)
	}
	if got := images(t, s, "b", -1); got != "0=b0" {
		t.Fatalf("images of b: %s", got)
	}
}

// A job far larger than one Badger transaction is written whole.
func TestLargeJobIsWrittenWhole(t *testing.T) {
	s := open(t, t.TempDir())
	const n = 50_000
	docs := make(map[int][]byte, n)
	for i := range n {
		docs[i] = fmt.Appendf(nil, `{"source":"harbor-a.example.com/proj/app:%06d","state":"queued","padding":%q}`, i, strings.Repeat("x", 200))
	}
	if err := s.PutJob("big", []byte(`{}`), docs); err != nil {
		t.Fatalf("PutJob of %d images: %v", n, err)
	}
	count, last := 0, -1
	s.JobImages("big", -1, func(i int, doc []byte) bool {
		if i != last+1 || string(doc) != string(docs[i]) {
			t.Fatalf("image %d after %d: %s", i, last, doc)
		}
		count, last = count+1, i
		return true
	})
	if count != n {
		t.Fatalf("%d of %d image records", count, n)
	}
	if err := s.DeleteJob("big"); err != nil {
		t.Fatal(err)
	}
	if got := images(t, s, "big", -1); got != "" {
		t.Fatal("images left after delete")
	}
}

// Image records without their job (a crash while the job was written or
// forgotten) are swept; those of live jobs stay.
func TestSweepJobImages(t *testing.T) {
	s := open(t, t.TempDir())
	s.PutJob("keep", []byte(`K`), map[int][]byte{0: []byte(`k0`)})
	s.PutJob("lost", []byte(`L`), map[int][]byte{0: []byte(`l0`), 1: []byte(`l1`)})
	s.PutJob("z", []byte(`Z`), map[int][]byte{0: []byte(`z0`)})
	// What a crash between the job's record and its images leaves.
	if err := s.db.bdb.DropPrefix(key(prefixJob, "lost")); err != nil {
		t.Fatal(err)
	}
	if err := s.SweepJobImages(); err != nil {
		t.Fatal(err)
	}
	if got := images(t, s, "lost", -1); got != "" {
		t.Fatalf("orphan images kept: %s", got)
	}
	if images(t, s, "keep", -1) != "0=k0" || images(t, s, "z", -1) != "0=z0" {
		t.Fatal("a live job's images were swept")
	}
}
