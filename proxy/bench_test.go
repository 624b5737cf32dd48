package proxy_test

import (
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/wharf-registry/wharf/upstream/upstreamtest"
)

// The server-side cost of a warm manifest request, without network or
// client: what bounds requests per second on a busy mirror.
func BenchmarkManifest(b *testing.B) {
	up := upstreamtest.New(b)
	img := up.PushImage(b, "library/app", "1", 80, 1, 1024, amd64)
	e := newEnv(b, b.TempDir(), spec{name: "docker.io", reg: up, def: true, ttl: time.Hour})
	h := e.Config.Handler
	for _, c := range []struct{ name, ref string }{{"tag", "1"}, {"digest", img.Manifest.Digest.String()}} {
		b.Run(c.name, func(b *testing.B) {
			req := httptest.NewRequest(http.MethodGet, "/v2/library/app/manifests/"+c.ref+"?ns=docker.io", nil)
			req.Header.Set("Accept", img.MediaType)
			for b.Loop() {
				w := httptest.NewRecorder()
				h.ServeHTTP(w, req)
				if w.Code != http.StatusOK {
					b.Fatalf("status %d", w.Code)
				}
			}
		})
	}
}
