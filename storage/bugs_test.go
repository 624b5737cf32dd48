package storage

import (
	"fmt"
	"os"
	"sync"
	"testing"

	"github.com/opencontainers/go-digest"
)

// Sampling verifies one blob in N whatever N is: never none, never a panic
// (a byte-sized modulus once made 256 divide by zero and 32 match nothing).
func TestCheckSampling(t *testing.T) {
	s := open(t, t.TempDir())
	const total = 512
	for i := range total {
		d := put(t, s, fmt.Sprintf("blob %d", i))
		p, _ := s.blobPath(d)
		os.WriteFile(p, []byte(fmt.Sprintf("BLOB %d", i)), 0o644) // same size, wrong bytes
	}
	for _, n := range []int{1, 2, 32, 256, 512, 1000} {
		ps, err := s.Check(CheckOptions{Verify: true, Sample: n})
		if err != nil {
			t.Fatalf("sample %d: %v", n, err)
		}
		lo, hi := total/n, (total+n-1)/n
		if len(ps) < lo || len(ps) > hi {
			t.Errorf("sample %d: %d blobs verified, want %d..%d", n, len(ps), lo, hi)
		}
	}
}

// A second Open of a live root (wharf check, or a second wharf serve by
// mistake) fails on the index lock before it touches anything: the running
// store's fills keep their temporary files.
func TestSecondOpenLeavesLiveFillsAlone(t *testing.T) {
	root := t.TempDir()
	s := open(t, root)
	data := "a fill in progress"
	w, err := s.Create(digest.FromString(data), "")
	if err != nil {
		t.Fatal(err)
	}
	w.Write([]byte(data[:5]))
	if s2, err := Open(root, Options{}); err == nil {
		s2.Close()
		t.Fatal("a second Open of a live root succeeded")
	}
	if _, err := os.Stat(w.Name()); err != nil {
		t.Fatalf("the live fill's temporary file: %v", err)
	}
	w.Write([]byte(data[5:]))
	if err := w.Commit(int64(len(data))); err != nil {
		t.Fatalf("the live fill could not commit: %v", err)
	}
}

// Removing one blob twice at once takes its size off the totals once.
func TestConcurrentRemovalsCountOnce(t *testing.T) {
	s := open(t, t.TempDir())
	for i := range 100 {
		d := put(t, s, fmt.Sprintf("removed %d", i))
		var wg sync.WaitGroup
		for range 4 {
			wg.Go(func() { s.removeBlob(d) })
		}
		wg.Wait()
		if b, n := s.Size(); b != 0 || n != 0 {
			t.Fatalf("after removing blob %d: %d bytes, %d blobs", i, b, n)
		}
	}
}
