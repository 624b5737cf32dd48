package upstreamtest

import (
	"net/http"
	"strings"
	"time"
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
// distribution itself.
type redirector struct {
	next  http.Handler // behind the registry's auth
	inner http.Handler // distribution, without auth: what the CDN serves from
}

func (d *redirector) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if rest, ok := strings.CutPrefix(r.URL.Path, "/cdn/"); ok {
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

// late delays every answer.
type late struct {
	next http.Handler
	d    time.Duration
}

func (l late) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	time.Sleep(l.d) // the simulated WAN, not synchronisation
	l.next.ServeHTTP(w, r)
}
