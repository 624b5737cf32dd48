package cache

import (
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
)

// A blob handed to an HTTP client as a request body is closed by the
// transport's goroutine and by the caller's defer, at once: Close must be
// safe from two goroutines and end the read exactly once.
func TestBlobCloseIsSafeTwiceAtOnce(t *testing.T) {
	f, err := os.Create(filepath.Join(t.TempDir(), "blob"))
	if err != nil {
		t.Fatal(err)
	}
	var ended atomic.Int32
	b := &Blob{ReadSeekCloser: f, done: func() { ended.Add(1) }}
	var wg sync.WaitGroup
	for range 2 {
		wg.Go(func() { b.Close() })
	}
	wg.Wait()
	if n := ended.Load(); n != 1 {
		t.Fatalf("the read ended %d times", n)
	}
}
