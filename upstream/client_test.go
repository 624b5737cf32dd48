package upstream

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/wharf-registry/wharf/upstream/upstreamtest"
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

// An upstream that offers HTTP/2 gets it: once a connection is up,
// concurrent requests share it instead of opening one each.
func TestUpstreamOfferingHTTP2GetsIt(t *testing.T) {
	reg := upstreamtest.New(t)
	img := reg.PushImage(t, "org/app", "1", 9, 4, 64<<10, ocispec.Platform{OS: "linux", Architecture: "amd64"})
	target, _ := url.Parse(reg.URL)
	var mu sync.Mutex
	protos := map[string]int{}
	conns := 0
	front := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		protos[r.Proto]++
		mu.Unlock()
		httputil.NewSingleHostReverseProxy(target).ServeHTTP(w, r)
	}))
	front.EnableHTTP2 = true
	front.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			mu.Lock()
			conns++
			mu.Unlock()
		}
	}
	front.StartTLS()
	t.Cleanup(front.Close)
	c, err := New(Config{Name: "h2", URL: front.URL, Insecure: true}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, rc, err := c.Manifest(t.Context(), "org/app", "1", false); err != nil {
		t.Fatal(err)
	} else {
		rc.Close()
	}
	var wg sync.WaitGroup
	errs := make(chan error, len(img.Layers))
	for _, l := range img.Layers {
		wg.Go(func() {
			rc, _, err := c.Blob(t.Context(), "org/app", l.Digest, 0)
			if err == nil {
				var got []byte
				got, err = io.ReadAll(rc)
				rc.Close()
				if err == nil && !bytes.Equal(got, l.Data) {
					err = fmt.Errorf("blob %s: wrong bytes", l.Digest)
				}
			}
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if protos["HTTP/2.0"] != len(img.Layers)+1 || len(protos) != 1 || conns != 1 {
		t.Fatalf("protocols %v over %d connections, want HTTP/2.0 only over one", protos, conns)
	}
}
