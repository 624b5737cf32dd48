package proxy_test

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/wharf-registry/wharf/upstream/upstreamtest"
)

func TestTagsList(t *testing.T) {
	t.Parallel()
	up := upstreamtest.New(t)
	for _, tag := range []string{"b", "a", "d", "c"} {
		up.PushImage(t, "library/app", tag, 50, 1, 512, amd64)
	}
	e := newEnv(t, t.TempDir(), spec{name: "docker.io", reg: up, def: true, ttl: time.Hour})
	cases := []struct{ query, body, link string }{
		{"", `{"name":"app","tags":["a","b","c","d"]}`, ""},
		{"?n=2", `{"name":"app","tags":["a","b"]}`, `</v2/app/tags/list?last=b&n=2>; rel="next"`},
		{"?n=2&last=b", `{"name":"app","tags":["c","d"]}`, ""},
		{"?n=0", `{"name":"app","tags":[]}`, ""},
		{"?last=d", `{"name":"app","tags":[]}`, ""},
		{"?n=1&last=a&ns=docker.io", `{"name":"app","tags":["b"]}`, `</v2/app/tags/list?last=b&n=1&ns=docker.io>; rel="next"`},
	}
	for _, c := range cases {
		r := e.do(t, "GET", "/v2/app/tags/list"+c.query)
		if r.status != 200 || string(r.body) != c.body || r.header.Get("Link") != c.link {
			t.Errorf("tags%s: %d %s Link %q, want %s %q", c.query, r.status, r.body, r.header.Get("Link"), c.body, c.link)
		}
	}
	// Upstream gone: the last list it gave is served.
	up.Close()
	if r := e.do(t, "GET", "/v2/app/tags/list"); r.status != 200 || string(r.body) != `{"name":"app","tags":["a","b","c","d"]}` {
		t.Fatalf("cached tags: %d %s", r.status, r.body)
	}
}

func TestTagsFallBackToResolvedTags(t *testing.T) {
	t.Parallel()
	up := upstreamtest.New(t)
	img := up.PushImage(t, "org/app", "v1", 51, 1, 512, amd64)
	up.PushImage(t, "org/app", "v2", 52, 1, 512, amd64)
	e := newEnv(t, t.TempDir(), spec{name: "ghcr.io", reg: up, ttl: time.Hour})
	e.get(t, "/v2/ghcr.io/org/app/manifests/v1", img.Manifest.Data, img.Manifest.Digest.String())
	up.Close()
	if r := e.do(t, "GET", "/v2/ghcr.io/org/app/tags/list"); r.status != 200 || string(r.body) != `{"name":"ghcr.io/org/app","tags":["v1"]}` {
		t.Fatalf("tags from index: %d %s", r.status, r.body)
	}
	wantError(t, e.do(t, "GET", "/v2/ghcr.io/org/other/tags/list"), 503, "UNAVAILABLE")
}

func TestCatalog(t *testing.T) {
	t.Parallel()
	hub := upstreamtest.New(t)
	ghcr := upstreamtest.New(t)
	a := hub.PushImage(t, "library/alpine", "3", 53, 1, 512, amd64)
	b := ghcr.PushImage(t, "org/app", "1", 54, 1, 512, amd64)
	c := hub.PushImage(t, "org/zed", "1", 55, 1, 512, amd64)
	e := newEnv(t, t.TempDir(),
		spec{name: "docker.io", reg: hub, def: true, ttl: time.Hour},
		spec{name: "ghcr.io", reg: ghcr, ttl: time.Hour})
	if r := e.do(t, "GET", "/v2/_catalog"); string(r.body) != `{"repositories":[]}` {
		t.Fatalf("empty catalog: %s", r.body)
	}
	e.get(t, "/v2/alpine/manifests/3", a.Manifest.Data, a.Manifest.Digest.String())
	e.get(t, "/v2/org/app/manifests/1?ns=ghcr.io", b.Manifest.Data, b.Manifest.Digest.String())
	e.get(t, "/v2/org/zed/manifests/1", c.Manifest.Data, c.Manifest.Digest.String())
	if r := e.do(t, "GET", "/v2/_catalog"); string(r.body) != `{"repositories":["ghcr.io/org/app","library/alpine","org/zed"]}` {
		t.Fatalf("catalog: %s", r.body)
	}
	r := e.do(t, "GET", "/v2/_catalog?n=1&last=ghcr.io/org/app")
	if string(r.body) != `{"repositories":["library/alpine"]}` || !strings.Contains(r.header.Get("Link"), "last=library%2Falpine") {
		t.Fatalf("catalog page: %s %q", r.body, r.header.Get("Link"))
	}
}

func TestReferrersPassThroughAndCache(t *testing.T) {
	t.Parallel()
	up := upstreamtest.New(t)
	img := up.PushImage(t, "org/app", "1", 56, 1, 512, amd64)
	sig := digest.FromString("signature")
	doc := `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"` + sig.String() + `","size":10,"artifactType":"application/vnd.example.sig"}]}`
	// distribution does not implement the referrers API; answer it here.
	up.SetHook(fault(func(r *http.Request) bool { return strings.Contains(r.URL.Path, "/referrers/") },
		200, map[string]string{"Content-Type": ocispec.MediaTypeImageIndex}, doc))
	e := newEnv(t, t.TempDir(), spec{name: "ghcr.io", reg: up, def: true, ttl: time.Hour})
	path := "/v2/org/app/referrers/" + img.Manifest.Digest.String()
	for range 2 {
		r := e.do(t, "GET", path)
		if r.status != 200 || string(r.body) != doc || r.header.Get("Content-Type") != ocispec.MediaTypeImageIndex {
			t.Fatalf("referrers: %d %v %s", r.status, r.header, r.body)
		}
	}
	if n := up.Count("GET", "referrers"); n != 1 {
		t.Fatalf("%d upstream referrers requests, want 1", n)
	}
	// Filters are applied to the cached list: no upstream request, no
	// index record per filter.
	for at, want := range map[string]int{"application/vnd.example.sig": 1, "application/vnd.example.sbom": 0} {
		r := e.do(t, "GET", path+"?artifactType="+at)
		var idx ocispec.Index
		if r.status != 200 || json.Unmarshal(r.body, &idx) != nil || len(idx.Manifests) != want || r.header.Get("OCI-Filters-Applied") != "artifactType" {
			t.Fatalf("referrers filtered by %s: %d %v %s", at, r.status, r.header, r.body)
		}
	}
	if n := up.Count("GET", "referrers"); n != 1 {
		t.Fatalf("%d upstream referrers requests, want 1", n)
	}
	up.SetHook(nil)
	e2 := newEnv(t, t.TempDir(), spec{name: "ghcr.io", reg: up, def: true, ttl: time.Hour})
	if r := e2.do(t, "GET", path); r.status != 404 {
		t.Fatalf("referrers unsupported upstream: %d %s", r.status, r.body)
	}
}
