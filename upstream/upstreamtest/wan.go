package upstreamtest

import (
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"
)

// WithLatency answers every request d late, as a registry across a WAN
// does: the bench's -upstream-rtt.
func WithLatency(d time.Duration) Option {
	return func(o *options) { o.latency = d }
}

// WithBlobRedirects answers each blob GET with a 307 to /cdn/<repo>/<digest>
// on the same server, with a signature in its query, as Docker Hub sends
// blobs to its CDN; the CDN path needs no credentials.
func WithBlobRedirects() Option {
	return func(o *options) { o.redirects = true }
}

// redirector sends blob GETs to the CDN path and serves that path from
// the blob's file when the registry is on a filesystem, else from
// distribution itself.
type redirector struct {
	next  http.Handler // behind the registry's auth
	inner http.Handler // distribution, without auth: what the CDN serves from
	dir   string       // the filesystem driver's root; "" in memory
}

func (d *redirector) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if rest, ok := strings.CutPrefix(r.URL.Path, "/cdn/"); ok {
		if d.serveFile(w, r, rest) {
			return
		}
		r2 := r.Clone(r.Context())
		r2.URL.Path, r2.URL.RawQuery = "/v2/"+strings.Replace(rest, "/sha", "/blobs/sha", 1), ""
		r2.Header.Del("Authorization")
		d.inner.ServeHTTP(w, r2)
		return
	}
	if rest, ok := strings.CutPrefix(r.URL.Path, "/v2/"); ok && r.Method == http.MethodGet {
		if i := strings.LastIndex(rest, "/blobs/"); i > 0 && !strings.Contains(rest[i:], "uploads") {
			http.Redirect(w, r, "/cdn/"+rest[:i]+"/"+rest[i+len("/blobs/"):]+"?X-Amz-Signature=bench", http.StatusTemporaryRedirect)
			return
		}
	}
	d.next.ServeHTTP(w, r)
}

// serveFile answers /cdn/<repo>/<digest> from the blob's file, as a CDN
// serves its own copy: with Range, and without a registry's per-request
// work in the way (distribution's filesystem reader clears a 4 MiB buffer
// for every blob it opens, which on a bench machine took the CPU the
// mirrors under test share with it). Only blobs the repository holds;
// anything else is left to distribution (false).
//
// The counter around the response writer sends it 32 KiB per write, not
// with sendfile, and that is kept on purpose: on loopback, what a sender
// queues ahead (as sendfile does) goes out when the receiver acknowledges,
// in the receiver's CPU time, which a real network does not do. Given
// sendfile, the CDN cost the mirror under test 0.2 to 0.4 more CPU-s per
// cold GiB in make bench.
func (d *redirector) serveFile(w http.ResponseWriter, r *http.Request, rest string) bool {
	i := strings.LastIndex(rest, "/")
	if d.dir == "" || i < 0 || strings.Contains(rest, "..") {
		return false
	}
	dgst, err := digest.Parse(rest[i+1:])
	if err != nil || dgst.Algorithm() != digest.SHA256 {
		return false
	}
	v2, hex := filepath.Join(d.dir, "docker", "registry", "v2"), dgst.Encoded()
	if _, err := os.Stat(filepath.Join(v2, "repositories", rest[:i], "_layers", "sha256", hex, "link")); err != nil {
		return false
	}
	f, err := os.Open(filepath.Join(v2, "blobs", "sha256", hex[:2], hex, "data"))
	if err != nil {
		return false
	}
	defer f.Close()
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Docker-Content-Digest", dgst.String())
	http.ServeContent(w, r, "", time.Time{}, f)
	return true
}

// late delays every answer.
type late struct {
	next http.Handler
	d    time.Duration
}

func (l late) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	time.Sleep(l.d) // the simulated WAN, not synchronisation
	l.next.ServeHTTP(w, r)
}
