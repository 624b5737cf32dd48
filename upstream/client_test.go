package upstream

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
)

// The per-upstream limit holds a slot for as long as a body is open, and a
// request waiting for one gives up with its own context.
func TestMaxConcurrentHoldsSlotsUntilBodyClosed(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("blob"))
	}))
	defer srv.Close()
	c, err := New(Config{Name: "t", URL: srv.URL, Insecure: true, MaxConcurrent: 1}, nil)
	if err != nil {
		t.Fatal(err)
	}
	dgst := digest.FromString("blob")
	rc, _, err := c.Blob(t.Context(), "a/b", dgst, 0)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	if _, err := c.StatBlob(ctx, "a/b", dgst); err == nil || !strings.Contains(err.Error(), "free upstream slot") {
		t.Fatalf("second request with the only slot taken: %v", err)
	}
	rc.Close()
	if _, err := c.StatBlob(t.Context(), "a/b", dgst); err != nil {
		t.Fatalf("after the body closed: %v", err)
	}
	if _, err := c.StatBlob(t.Context(), "a/b", dgst); err != nil {
		t.Fatalf("HEAD must give its slot back: %v", err)
	}
}
