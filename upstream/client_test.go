package upstream

import (
	"context"
	"errors"
	"fmt"
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

// A request that cannot get a slot within WaitTimeout fails at once as a
// 503 with a Retry-After, never a hang.
func TestSlotWaitHasItsOwnDeadline(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("blob")) }))
	defer srv.Close()
	c, err := New(Config{Name: "t", URL: srv.URL, Insecure: true, MaxConcurrent: 1, WaitTimeout: 20 * time.Millisecond}, nil)
	if err != nil {
		t.Fatal(err)
	}
	rc, _, err := c.Blob(t.Context(), "a/b", digest.FromString("blob"), 0)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	_, err = c.StatBlob(t.Context(), "a/b", digest.FromString("blob"))
	var e *Error
	if !errors.As(err, &e) || e.Status != http.StatusServiceUnavailable || e.Retry <= 0 || !errors.Is(err, ErrBusy) {
		t.Fatalf("waiting past WaitTimeout: %v", err)
	}
}

func TestNextLink(t *testing.T) {
	for header, want := range map[string]string{
		`</v2/a/tags/list?n=2&last=b>; rel="next"`: "/v2/a/tags/list?n=2&last=b",
		`</p>; rel="prev", </n>; rel="next"`:       "/n",
		`</n>;rel=next`:                            "/n",
		`</n>; title="x, y"; rel="next"`:           "/n",
		`</p>; rel="prev"`:                         "",
		`</t>; title="next"`:                       "",
		`</n>; rel="first next"`:                   "/n",
		``:                                         "",
		`garbage`:                                  "",
		`</p>; rel="prev",</n>; rel="next"; type="application"`: "/n",
	} {
		got, ok := nextLink(header)
		if got != want || ok != (want != "") {
			t.Errorf("nextLink(%q) = %q %v, want %q", header, got, ok, want)
		}
	}
}

// A tag list whose next page is on another host, or that goes on past the
// page limit, is an error: never a shorter list served as complete.
func TestTagListsAreWholeOrAnError(t *testing.T) {
	pages := 0
	var next string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		pages++
		w.Header().Set("Link", next)
		fmt.Fprintf(w, `{"name":"a/b","tags":["t%d"]}`, pages)
	}))
	defer srv.Close()
	c, err := New(Config{Name: "t", URL: srv.URL, Insecure: true}, nil)
	if err != nil {
		t.Fatal(err)
	}
	next = `<http://elsewhere.example/v2/a/b/tags/list?last=x>; rel="next"`
	if tags, err := c.Tags(t.Context(), "a/b"); err == nil || !strings.Contains(err.Error(), "another host") {
		t.Fatalf("next page elsewhere: %v %v", tags, err)
	}
	pages, next = 0, `</v2/a/b/tags/list?last=x>; rel="next"`
	var e *Error
	if tags, err := c.Tags(t.Context(), "a/b"); !errors.As(err, &e) || e.Status != http.StatusBadGateway || pages != maxTagPages {
		t.Fatalf("endless list: %d tags, %d pages, %v", len(tags), pages, err)
	}
	pages, next = 0, ""
	if tags, err := c.Tags(t.Context(), "a/b"); err != nil || len(tags) != 1 {
		t.Fatalf("one page: %v %v", tags, err)
	}
}
