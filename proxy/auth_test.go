package proxy_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wharf-registry/wharf/upstream/upstreamtest"
)

func TestBasicAuthUpstream(t *testing.T) {
	t.Parallel()
	up := upstreamtest.New(t, upstreamtest.WithBasicAuth("robot", "s3cret"))
	img := up.PushImage(t, "org/private", "1", 30, 2, 8192, amd64)
	up.Reset()
	e := newEnv(t, t.TempDir(), spec{name: "harbor.example", reg: up, def: true, ttl: time.Hour, user: "robot", password: "s3cret"})

	// A client's own Authorization header must never travel upstream.
	r := e.do(t, "GET", "/v2/org/private/manifests/1", "Authorization", "Bearer client-secret")
	if r.status != 200 {
		t.Fatalf("manifest through basic auth: %d %s", r.status, r.body)
	}
	pull(t, e, "org/private", img, "")
	for _, req := range up.Requests() {
		if strings.Contains(req.Authorization, "client-secret") {
			t.Fatalf("client credentials forwarded upstream: %+v", req)
		}
	}

	bad := newEnv(t, t.TempDir(), spec{name: "harbor.example", reg: up, def: true, user: "robot", password: "wrong"})
	r = bad.do(t, "GET", "/v2/org/private/manifests/1")
	// Upstream's refusal is passed on as it is, without its challenge:
	// the client cannot fix Wharf's credentials.
	wantError(t, r, 401, "UNAUTHORIZED")
	if strings.Contains(string(r.body), "wrong") || r.header.Get("WWW-Authenticate") != "" || strings.Contains(string(r.body), up.Host()) {
		t.Fatalf("password, challenge or upstream host leaked into the answer: %v %s", r.header, r.body)
	}
}

// tokenServer is a minimal distribution token service: it checks Basic
// credentials and issues an opaque token per scope, counting issues.
type tokenServer struct {
	*httptest.Server
	mu     sync.Mutex
	issued map[string]string // token → scope
	calls  []string          // scopes asked for
}

func newTokenServer(t *testing.T, user, pass string) *tokenServer {
	ts := &tokenServer{issued: map[string]string{}}
	ts.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u, p, ok := r.BasicAuth()
		if !ok || u != user || p != pass {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		scope := strings.Join(r.URL.Query()["scope"], " ")
		ts.mu.Lock()
		ts.calls = append(ts.calls, scope)
		tok := fmt.Sprintf("tok-%d", len(ts.calls))
		ts.issued[tok] = scope
		ts.mu.Unlock()
		json.NewEncoder(w).Encode(map[string]any{"token": tok, "expires_in": 300})
	}))
	t.Cleanup(ts.Close)
	return ts
}

func (ts *tokenServer) scopeOf(token string) (string, bool) {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	s, ok := ts.issued[token]
	return s, ok
}

func TestBearerTokenUpstream(t *testing.T) {
	t.Parallel()
	up := upstreamtest.New(t)
	a := up.PushImage(t, "org/a", "1", 31, 1, 4096, amd64)
	b := up.PushImage(t, "org/b", "1", 32, 1, 4096, amd64)
	ts := newTokenServer(t, "robot", "s3cret")
	// The registry demands a bearer token for the repository's pull scope,
	// as Docker Hub does.
	up.SetHook(func(w http.ResponseWriter, r *http.Request) bool {
		repo := strings.TrimPrefix(r.URL.Path, "/v2/")
		repo = repo[:max(strings.Index(repo, "/manifests/"), strings.Index(repo, "/blobs/"), 0)]
		want := "repository:" + repo + ":pull"
		if scope, ok := ts.scopeOf(strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")); ok && scope == want {
			return false
		}
		w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer realm="%s/token",service="upstreamtest",scope="%s"`, ts.URL, want))
		w.WriteHeader(http.StatusUnauthorized)
		return true
	})
	up.Reset()
	e := newEnv(t, t.TempDir(), spec{name: "docker.io", reg: up, def: true, ttl: time.Hour, user: "robot", password: "s3cret"})
	pull(t, e, "org/a", a, "")
	pull(t, e, "org/b", b, "")
	pull(t, e, "org/a", a, "")

	// One token per repository scope, reused for every later request.
	ts.mu.Lock()
	calls := append([]string(nil), ts.calls...)
	ts.mu.Unlock()
	if len(calls) != 2 || calls[0] != "repository:org/a:pull" || calls[1] != "repository:org/b:pull" {
		t.Fatalf("token requests: %q", calls)
	}
	without := 0
	for _, req := range up.Requests() {
		if strings.HasPrefix(req.Authorization, "Basic") {
			t.Fatalf("registry received the password: %+v", req)
		}
		if req.Authorization == "" {
			without++
		}
	}
	// The first repository: one challenged manifest HEAD, then the HEAD
	// with the token. The second goes to the realm the challenge named
	// straight away. Then the manifest GET and two blob GETs of each, all
	// with their token.
	wantCounts(t, up, map[string]int{"HEAD manifest": 3, "GET manifest": 2, "GET blob": 4})
	if without != 1 {
		t.Fatalf("%d requests went without a token, want only the first", without)
	}
}
