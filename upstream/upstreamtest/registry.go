// Package upstreamtest runs a real distribution registry in process, behind a
// request counter, as the upstream (or push target) of Wharf's tests and
// benchmarks. It imports no other Wharf package.
package upstreamtest

import (
	"context"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/distribution/distribution/v3/configuration"
	"github.com/distribution/distribution/v3/registry/handlers"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/sirupsen/logrus"
	"golang.org/x/crypto/bcrypt"

	_ "github.com/distribution/distribution/v3/registry/auth/htpasswd"
	_ "github.com/distribution/distribution/v3/registry/storage/driver/filesystem"
	_ "github.com/distribution/distribution/v3/registry/storage/driver/inmemory"
)

// Registry is an in-process distribution registry with a request log.
type Registry struct {
	*httptest.Server
	user, pass string
	app        http.Handler // distribution itself, behind the hook

	mu       sync.Mutex
	requests []Request
	sent     int64 // response body bytes
	hook     func(http.ResponseWriter, *http.Request) bool
	link     *link // nil: unlimited
}

// counter counts the body bytes of one response.
type counter struct {
	http.ResponseWriter
	r *Registry
}

func (c counter) Write(b []byte) (int, error) {
	if c.r.link != nil {
		c.r.link.wait(len(b))
	}
	n, err := c.ResponseWriter.Write(b)
	c.r.mu.Lock()
	c.r.sent += int64(n)
	c.r.mu.Unlock()
	return n, err
}

func (c counter) Flush() { c.ResponseWriter.(http.Flusher).Flush() }

// Request is one request the registry received.
type Request struct {
	Method, Path, Query string
	Authorization       string
	Range               string
}

// Kind classifies a request path: manifest, blob, upload, tags, referrers,
// catalog, base or token.
func (r Request) Kind() string { return kind(r.Path) }

func kind(path string) string {
	switch {
	case strings.Contains(path, "/blobs/uploads"):
		return "upload"
	case strings.Contains(path, "/manifests/"):
		return "manifest"
	case strings.Contains(path, "/blobs/"):
		return "blob"
	case strings.HasSuffix(path, "/tags/list"):
		return "tags"
	case strings.Contains(path, "/referrers/"):
		return "referrers"
	case path == "/v2/_catalog":
		return "catalog"
	case path == "/v2/" || path == "/v2":
		return "base"
	case path == "/service/token":
		return "token"
	}
	return "other"
}

// T is the part of testing.TB the helpers use, so benchmarks outside
// `go test` can drive them too.
type T interface {
	Helper()
	Fatal(args ...any)
	Fatalf(format string, args ...any)
	Cleanup(func())
	TempDir() string
}

// Option configures a Registry.
type Option func(*options)

type options struct {
	user, pass string
	dir        string
	rate       int64
	referrers  bool
	token      bool // user and pass go through a token service
	latency    time.Duration
	redirects  bool
}

// WithBandwidth caps the bytes per second the registry sends, summed over
// all responses: a link to a remote registry, shared by every client.
func WithBandwidth(bytesPerSecond int64) Option {
	return func(o *options) { o.rate = bytesPerSecond }
}

// link paces writes to a shared byte rate.
type link struct {
	mu   sync.Mutex
	rate int64
	next time.Time
}

func (l *link) wait(n int) {
	l.mu.Lock()
	now := time.Now()
	if l.next.Before(now) {
		l.next = now
	}
	at := l.next
	l.next = l.next.Add(time.Duration(int64(n) * int64(time.Second) / l.rate))
	l.mu.Unlock()
	// Pacing, not synchronisation. Short debts are let run: sleeping a few
	// hundred microseconds oversleeps and would cap the rate below l.rate.
	if d := time.Until(at); d > 5*time.Millisecond {
		time.Sleep(d)
	}
}

// WithFilesystem stores the registry's content under dir instead of in
// memory: distribution's in-memory driver is far too slow for large blobs.
func WithFilesystem(dir string) Option {
	return func(o *options) { o.dir = dir }
}

// WithBasicAuth protects the registry with htpasswd basic auth.
func WithBasicAuth(user, pass string) Option {
	return func(o *options) { o.user, o.pass = user, pass }
}

func init() {
	// distribution logs through logrus' global logger; tests want quiet.
	logrus.SetLevel(logrus.ErrorLevel)
	logrus.SetOutput(io.Discard)
}

// New starts a registry that stops when the test ends.
func New(t T, opts ...Option) *Registry {
	t.Helper()
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	driver := configuration.Storage{"inmemory": configuration.Parameters{}}
	if o.dir != "" {
		driver = configuration.Storage{"filesystem": configuration.Parameters{"rootdirectory": o.dir}}
	}
	cfg := &configuration.Configuration{
		Storage: configuration.Storage{
			"delete": configuration.Parameters{"enabled": true},
			"maintenance": configuration.Parameters{"uploadpurging": map[any]any{
				"enabled": false,
			}},
		},
	}
	for k, v := range driver {
		cfg.Storage[k] = v
	}
	cfg.Log.Level = "error"
	cfg.Log.AccessLog.Disabled = true
	cfg.HTTP.Secret = "upstreamtest"
	if o.user != "" && !o.token {
		hash, err := bcrypt.GenerateFromPassword([]byte(o.pass), bcrypt.MinCost)
		if err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(t.TempDir(), "htpasswd")
		if err := os.WriteFile(path, fmt.Appendf(nil, "%s:%s\n", o.user, hash), 0o600); err != nil {
			t.Fatal(err)
		}
		cfg.Auth = configuration.Auth{"htpasswd": configuration.Parameters{"realm": "upstreamtest", "path": path}}
	}
	var app http.Handler = handlers.NewApp(context.Background(), cfg)
	if o.referrers {
		app = &referrersAPI{next: app, by: map[string][]ocispec.Descriptor{}}
	}
	inner := app
	if o.redirects {
		app = &redirector{next: app, inner: inner, dir: o.dir}
	}
	if o.token {
		app = &tokenAuth{next: app, user: o.user, pass: o.pass}
	}
	if o.latency > 0 {
		app = late{next: app, d: o.latency}
	}
	r := &Registry{user: o.user, pass: o.pass, app: app}
	if o.rate > 0 {
		r.link = &link{rate: o.rate}
	}
	r.Server = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		r.mu.Lock()
		r.requests = append(r.requests, Request{Method: req.Method, Path: req.URL.Path, Query: req.URL.RawQuery, Authorization: req.Header.Get("Authorization"), Range: req.Header.Get("Range")})
		hook := r.hook
		r.mu.Unlock()
		w = counter{ResponseWriter: w, r: r}
		if hook != nil && hook(w, req) {
			return
		}
		app.ServeHTTP(w, req)
	}))
	r.Server.Config.ErrorLog = log.New(io.Discard, "", 0) // distribution's complaints about cut requests
	r.Server.Start()
	t.Cleanup(r.Server.Close)
	return r
}

// Host is host:port of the registry.
func (r *Registry) Host() string { return strings.TrimPrefix(r.URL, "http://") }

// SetHook installs a function that sees each request first and answers it
// itself by returning true: fault injection for tests.
func (r *Registry) SetHook(h func(http.ResponseWriter, *http.Request) bool) {
	r.mu.Lock()
	r.hook = h
	r.mu.Unlock()
}

// Relabel installs a hook that answers the requests match picks as the
// registry would, but with Content-Type contentType ("" for none): an
// upstream that mislabels its manifests.
func (r *Registry) Relabel(match func(*http.Request) bool, contentType string) {
	r.SetHook(func(w http.ResponseWriter, req *http.Request) bool {
		if !match(req) {
			return false
		}
		rec := httptest.NewRecorder()
		r.app.ServeHTTP(rec, req)
		for k, v := range rec.Header() {
			w.Header()[k] = v
		}
		w.Header()["Content-Type"] = nil // not even sniffed
		if contentType != "" {
			w.Header().Set("Content-Type", contentType)
		}
		w.WriteHeader(rec.Code)
		w.Write(rec.Body.Bytes())
		return true
	})
}

// Requests returns a copy of the requests received since the last Reset.
func (r *Registry) Requests() []Request {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Request(nil), r.requests...)
}

// Count is the number of requests with method (any if "") and kind.
func (r *Registry) Count(method, kind string) int {
	n := 0
	for _, req := range r.Requests() {
		if (method == "" || req.Method == method) && req.Kind() == kind {
			n++
		}
	}
	return n
}

// Total is the number of requests received since the last Reset.
func (r *Registry) Total() int { return len(r.Requests()) }

// BytesSent is the number of response body bytes sent since the last Reset.
func (r *Registry) BytesSent() int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.sent
}

// Reset forgets the requests received and bytes sent so far.
func (r *Registry) Reset() {
	r.mu.Lock()
	r.requests, r.sent = nil, 0
	r.mu.Unlock()
}
