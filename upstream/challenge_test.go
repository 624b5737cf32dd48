package upstream

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"oras.land/oras-go/v2/registry"
	"oras.land/oras-go/v2/registry/remote/auth"

	"github.com/wharf-registry/wharf/upstream/upstreamtest"
)

// The remembered challenge answers only token-less pulls from the upstream
// under a repository scope, naming the actions the upstream asked for,
// only while fresh, and only for the realm the guard pinned: never another
// scheme's, never a realm credentials may not go to.
func TestChallengesAnswerOnlyWhatTheyMay(t *testing.T) {
	base, _ := url.Parse("https://registry.example.com:443")
	g := newGuard(http.DefaultTransport, "reg", base, nil, nil)
	c := newChallenges(g)
	now := time.Unix(1_000_000, 0)
	c.now = func() time.Time { return now }
	first := `Bearer realm="https://auth.example.com/token",service="reg",scope="repository:org/a:pull,push"`
	g.pin(first)
	c.learn(first)
	scoped := auth.AppendRepositoryScope(context.Background(), registry.Reference{Registry: "registry.example.com:443", Repository: "org/b"}, auth.ActionPull)
	req := func(ctx context.Context, method, path, authz string) *http.Request {
		r, _ := http.NewRequestWithContext(ctx, method, "https://registry.example.com:443"+path, nil)
		if authz != "" {
			r.Header.Set("Authorization", authz)
		}
		return r
	}
	// The scope the upstream would name for org/b: its challenge for org/a
	// asked pull,push.
	want := `Bearer realm="https://auth.example.com/token",service="reg",scope="repository:org/b:pull,push"`
	for _, tc := range []struct {
		name string
		r    *http.Request
		want string
	}{
		{"pull without a token", req(scoped, http.MethodGet, "/v2/org/b/manifests/1", ""), want},
		{"HEAD without a token", req(scoped, http.MethodHead, "/v2/org/b/blobs/sha256:1", ""), want},
		{"with a token", req(scoped, http.MethodGet, "/v2/org/b/manifests/1", "Bearer t"), ""},
		{"a push", req(scoped, http.MethodPost, "/v2/org/b/blobs/uploads/", ""), ""},
		{"the ping", req(scoped, http.MethodGet, "/v2/", ""), ""},
		{"no scope", req(context.Background(), http.MethodGet, "/v2/org/b/manifests/1", ""), ""},
	} {
		if got := c.known(tc.r); got != tc.want {
			t.Errorf("%s: %q, want %q", tc.name, got, tc.want)
		}
	}
	pull := req(scoped, http.MethodGet, "/v2/org/b/manifests/1", "")
	now = now.Add(challengeAge + time.Second)
	if got := c.known(pull); got != "" {
		t.Errorf("a stale challenge still answers: %q", got)
	}
	c.learn(first)
	if c.known(pull) == "" {
		t.Fatal("a fresh challenge does not answer")
	}
	c.learn(`Bearer realm="https://elsewhere.example/token",service="reg"`)
	if got := c.known(pull); got != "" {
		t.Errorf("a challenge naming a realm the guard refuses answers: %q", got)
	}
	c.learn(`Bearer realm="https://auth.example.com/token",service="reg"`)
	if got := c.known(pull); got != `Bearer realm="https://auth.example.com/token",service="reg"` {
		t.Errorf("a challenge without a scope answers with one: %q", got)
	}
	c.learn(first)
	c.learn(`Basic realm="reg"`)
	if got := c.known(pull); got != "" {
		t.Errorf("a Basic challenge left the Bearer one answering: %q", got)
	}
}

// A registry may demand more than a request's own scope (push access for
// a pull): the token fetched for the remembered challenge is refused, and
// the request goes again the long way, to be told the scope it needs.
func TestChallengeFallsBackWhenItsTokenFallsShort(t *testing.T) {
	tokens := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		json.NewEncoder(w).Encode(map[string]any{"token": "tok " + strings.Join(r.URL.Query()["scope"], " "), "expires_in": 300})
	}))
	t.Cleanup(tokens.Close)
	reg := upstreamtest.New(t)
	imgs := map[string]upstreamtest.Image{}
	for i, repo := range []string{"org/a", "org/b"} {
		imgs[repo] = reg.PushImage(t, repo, "1", uint64(7+i), 1, 512, ocispec.Platform{OS: "linux", Architecture: "amd64"})
	}
	reg.SetHook(func(w http.ResponseWriter, r *http.Request) bool {
		repo := strings.TrimPrefix(r.URL.Path, "/v2/")
		repo = repo[:max(strings.Index(repo, "/manifests/"), 0)]
		want := "repository:" + repo + ":pull,push"
		if slices.Contains(strings.Fields(strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer tok ")), want) {
			return false
		}
		w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer realm="%s/token",service="reg",scope="%s"`, tokens.URL, want))
		w.WriteHeader(http.StatusUnauthorized)
		return true
	})
	c, err := New(Config{Name: "reg", URL: reg.URL, Insecure: true}, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, repo := range []string{"org/a", "org/b"} {
		_, rc, err := c.Manifest(t.Context(), repo, "1", false)
		if err != nil {
			t.Fatalf("%s: %v", repo, err)
		}
		got, err := io.ReadAll(rc)
		rc.Close()
		if err != nil || !bytes.Equal(got, imgs[repo].Manifest.Data) {
			t.Fatalf("manifest of %s: %v, %q", repo, err, got)
		}
	}
}
