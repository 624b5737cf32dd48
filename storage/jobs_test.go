package storage

import (
	"errors"
	"strings"
	"testing"
)

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
	doc, err := s.Job("a")
	if err != nil || string(doc.Job) != "A1" || string(join(doc.Images)) != "a0 a1' a10" {
		t.Fatalf("job a: %v %s %s", err, doc.Job, join(doc.Images))
	}
	if heads, err := s.Jobs(false); err != nil || len(heads) != 2 || heads[0].Images != nil {
		t.Fatalf("job headers: %v %d", err, len(heads))
	}
	all, err := s.Jobs(true)
	if err != nil || len(all) != 2 || string(all[1].Job) != "B0" || string(join(all[1].Images)) != "b0" {
		t.Fatalf("jobs: %v %d", err, len(all))
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
	if doc, _ := s.Job("a"); len(doc.Images) != 0 {
		t.Fatalf("image records outlived their job: %s", join(doc.Images))
	}
}

func join(docs [][]byte) string {
	var parts []string
	for _, d := range docs {
		parts = append(parts, string(d))
	}
	return strings.Join(parts, " ")
}
