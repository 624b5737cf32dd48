package storage

import (
	"fmt"
	"testing"

	"github.com/opencontainers/go-digest"
)

// The LRU keeps its total cost under its bound, drops the least recently
// used first, refuses entries larger than a quarter of the bound, and
// forgets on remove.
func TestLRU(t *testing.T) {
	c := newLRU[string](100, func(v string) int { return len(v) })
	c.put("a", "0123456789")  // 10
	c.put("b", "0123456789")  // 20
	c.put("c", "01234567890") // 31
	c.get("a")                // a is now the most recent
	for i := range 7 {
		c.put(fmt.Sprint("x", i), "0123456789") // +70 = 101: b goes
	}
	if _, ok := c.get("b"); ok {
		t.Fatal("the least recently used entry stayed")
	}
	if _, ok := c.get("a"); !ok {
		t.Fatal("a recently used entry went")
	}
	if c.size > c.max {
		t.Fatalf("size %d over %d", c.size, c.max)
	}
	c.put("big", string(make([]byte, 26)))
	if _, ok := c.get("big"); ok {
		t.Fatal("an entry over a quarter of the bound was cached")
	}
	c.put("a", "01") // replacing updates the cost
	before := c.size
	c.remove("a")
	if _, ok := c.get("a"); ok || c.size != before-2 {
		t.Fatalf("after remove: size %d, was %d", c.size, before)
	}
}

// The store's totals follow its records through commits of the same blob
// at once, removals, repair and adoption.
func TestSizeAccounting(t *testing.T) {
	s := open(t, t.TempDir())
	data := "counted once"
	d := put(t, s, data)
	done := make(chan error, 4)
	for range 4 { // the same blob committed again, four at once
		go func() {
			w, err := s.Create(d, "")
			if err != nil {
				done <- err
				return
			}
			w.Write([]byte(data))
			done <- w.Commit(int64(len(data)))
		}()
	}
	for range 4 {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	if b, n := s.Size(); b != int64(len(data)) || n != 1 {
		t.Fatalf("after concurrent commits of one blob: %d bytes, %d blobs", b, n)
	}
	other := put(t, s, "another")
	if err := s.removeBlob(other); err != nil {
		t.Fatal(err)
	}
	if err := s.removeBlob(other); err != nil {
		t.Fatal(err)
	}
	if b, n := s.Size(); b != int64(len(data)) || n != 1 {
		t.Fatalf("after removing a blob twice: %d bytes, %d blobs", b, n)
	}
	gone, _, err := s.Evict(0, func(digest.Digest) bool { return false })
	if err != nil || len(gone) != 1 {
		t.Fatalf("evict: %v %v", gone, err)
	}
	if b, n := s.Size(); b != 0 || n != 0 {
		t.Fatalf("after evicting everything: %d bytes, %d blobs", b, n)
	}
}
