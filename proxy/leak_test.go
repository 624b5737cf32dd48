package proxy_test

import (
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/wharf-registry/wharf/upstream/upstreamtest"
)

// Whatever goes wrong upstream, a client's error body names what it asked
// for and never the upstream's URL, host, address or a query string.
func TestErrorBodiesNameNoUpstream(t *testing.T) {
	t.Parallel()
	up := upstreamtest.New(t)
	img := up.PushImage(t, "proj/app", "1.0", 51, 1, 1<<10, amd64)
	host := up.Host()
	dead := "http://127.0.0.1:1" // nothing listens there
	all := func(*http.Request) bool { return true }
	for _, c := range []struct {
		name string
		hook func(http.ResponseWriter, *http.Request) bool
	}{
		{"404 naming the host", fault(all, 404, map[string]string{"Content-Type": "application/json"},
			`{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown at http://`+host+`/v2/proj/app?token=secret"}]}`)},
		{"403 naming the host", fault(all, 403, map[string]string{"Content-Type": "application/json"},
			`{"errors":[{"code":"DENIED","message":"project 127.0.0.1 is private"}]}`)},
		{"401", fault(all, 401, map[string]string{"WWW-Authenticate": `Basic realm="` + host + `"`}, "")},
		{"500", fault(all, 500, nil, "internal error at "+host)},
		{"429", fault(all, 429, nil, "")},
		{"redirect to metadata", fault(all, 307, map[string]string{"Location": "http://169.254.169.254/latest/meta-data/?X-Amz-Signature=s"}, "")},
		{"redirect loop", fault(all, 307, map[string]string{"Location": up.URL + "/loop?sig=s"}, "")},
		{"garbage", fault(all, 200, map[string]string{"Content-Type": "application/vnd.oci.image.manifest.v1+json"}, "not json")},
	} {
		up.SetHook(c.hook)
		// A Wharf per case: the circuit breaker must not hide the next case.
		e := newEnv(t, t.TempDir(), spec{name: "harbor.internal", reg: up, ttl: time.Nanosecond, negTTL: time.Nanosecond},
			spec{name: "gone.internal", url: dead})
		for _, p := range []string{
			"/v2/harbor.internal/proj/app/manifests/2.0",
			"/v2/harbor.internal/proj/app/manifests/" + strings.Repeat("sha256:"+strings.Repeat("0", 64), 1),
			"/v2/harbor.internal/proj/app/blobs/" + img.Layers[0].Digest.String(),
			"/v2/harbor.internal/proj/app/tags/list",
			"/v2/harbor.internal/proj/app/referrers/" + img.Manifest.Digest.String(),
			"/v2/gone.internal/proj/app/manifests/1.0",
		} {
			resp, err := e.Client().Get(e.URL + p)
			if err != nil {
				continue // a body cut short (a blob that failed its digest): nothing was said
			}
			b, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			r := response{status: resp.StatusCode, body: b}
			if err != nil || r.status < 400 {
				continue
			}
			body := string(r.body)
			for _, leak := range []string{host, "127.0.0.1", "169.254", "http://", "https://", "secret", "Signature", "sig="} {
				if strings.Contains(body, leak) {
					t.Errorf("%s: GET %s: %d body names %q: %s", c.name, p, r.status, leak, body)
				}
			}
			if !strings.Contains(body, `"code"`) {
				t.Errorf("%s: GET %s: %d without an OCI error: %s", c.name, p, r.status, body)
			}
		}
		// The health report shows no URL query (presigned signatures) either.
		r := e.do(t, "GET", "/api/v1/upstreams")
		for _, leak := range []string{"X-Amz-Signature", "sig=", "?"} {
			if strings.Contains(string(r.body), leak) {
				t.Errorf("%s: /api/v1/upstreams names %q: %s", c.name, leak, r.body)
			}
		}
	}
}
