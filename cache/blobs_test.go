package cache

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/opencontainers/go-digest"
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

// pipeSource serves one blob from a pipe the test writes to; it has
// nothing else.
type pipeSource struct {
	Source
	r    *io.PipeReader
	size int64
}

func (p *pipeSource) Blob(context.Context, string, digest.Digest, int64) (io.ReadCloser, int64, error) {
	return p.r, p.size, nil
}

// fileSink is a response that records what it was handed: a reader of a
// file is what net/http turns into sendfile.
type fileSink struct {
	got   bytes.Buffer
	files int
}

func (s *fileSink) ReadFrom(src io.Reader) (int64, error) {
	if lr, ok := src.(*io.LimitedReader); ok {
		if _, ok := lr.R.(*os.File); ok {
			s.files++
		}
	}
	return s.got.ReadFrom(src)
}

// A reader following a fill is handed the fill's file, stretch by stretch
// as it lands, with the last landed byte held back until the blob
// verifies.
func TestFillIsSentFromItsFile(t *testing.T) {
	data := bytes.Repeat([]byte("wharf sends files "), 20_000)
	dgst := digest.FromBytes(data)
	pr, pw := io.Pipe()
	t.Cleanup(func() { pw.Close() })
	c, _, _ := newTestCache(t, Config{Upstreams: []Upstream{{Name: "up", Source: &pipeSource{r: pr, size: int64(len(data))}}}})
	b, err := c.Blob(t.Context(), "up", "org/app", dgst)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	half := len(data) / 2
	if _, err := pw.Write(data[:half]); err != nil {
		t.Fatal(err)
	}
	var sink fileSink
	sent, ok, err := b.SendTo(&sink, int64(half-1))
	if !ok || err != nil || sent != int64(half-1) || sink.files == 0 || !bytes.Equal(sink.got.Bytes(), data[:half-1]) {
		t.Fatalf("landed half: sent %d, ok %v, %v, %d file readers; want %d bytes from the file", sent, ok, err, sink.files, half-1)
	}
	if _, err := pw.Write(data[half:]); err != nil {
		t.Fatal(err)
	}
	pw.Close()
	rest := int64(len(data) - half + 1)
	sent, ok, err = b.SendTo(&sink, rest)
	if !ok || err != nil || sent != rest || !bytes.Equal(sink.got.Bytes(), data) {
		t.Fatalf("the rest: sent %d of %d, ok %v, %v", sent, rest, ok, err)
	}
}
