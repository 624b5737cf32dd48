package proxy_test

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/wharf-registry/wharf/auth"
	"github.com/wharf-registry/wharf/cache"
	"github.com/wharf-registry/wharf/httpx"
	"github.com/wharf-registry/wharf/replicate"
	"github.com/wharf-registry/wharf/upstream/upstreamtest"
)

// htpasswd writes a users file of bcrypt entries (the lowest cost: tests
// check who, not how slowly).
func htpasswd(t testing.TB, users ...string) string {
	t.Helper()
	var b strings.Builder
	for _, u := range users {
		h, err := bcrypt.GenerateFromPassword([]byte(u+"-pw"), bcrypt.MinCost)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&b, "%s:%s\n", u, h)
	}
	f := filepath.Join(t.TempDir(), "htpasswd")
	if err := os.WriteFile(f, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}

func basic(user, pass string) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+pass))
}

// access is a Wharf with a public upstream (docker.io, open to anyone) and
// a private one (harbor.internal): ci may pull its proj/ and start jobs,
// bob may pull its other/, ops may read every job, root is admin.
type access struct {
	*env
	pub, priv      *upstreamtest.Registry
	alpine, app, x upstreamtest.Image
}

func newAccess(t *testing.T, limit int, anonymous ...string) *access {
	a := &access{pub: upstreamtest.New(t), priv: upstreamtest.New(t)}
	a.alpine = a.pub.PushImage(t, "library/alpine", "1.0", 31, 1, 2<<10, amd64)
	a.app = a.priv.PushImage(t, "proj/app", "1.0", 32, 1, 2<<10, amd64)
	a.x = a.priv.PushImage(t, "other/x", "1.0", 33, 1, 2<<10, amd64)
	a.env = newEnvAccess(t, auth.Config{
		Htpasswd:     htpasswd(t, "ci", "bob", "ops", "root"),
		Anonymous:    anonymous,
		FailureLimit: limit,
		Rules: []auth.Rule{
			{Users: []string{"ci"}, Pull: []string{"harbor.internal/proj/*"}, API: []string{auth.RightPrefetch}},
			{Users: []string{"bob"}, Pull: []string{"harbor.internal/other/*"}},
			{Users: []string{"ops"}, API: []string{auth.RightJobs}},
			{Users: []string{"root"}, API: []string{auth.RightAdmin}},
		},
	}, spec{name: "docker.io", reg: a.pub, ttl: time.Hour}, spec{name: "harbor.internal", reg: a.priv, ttl: time.Hour})
	a.pub.Reset()
	a.priv.Reset()
	return a
}

// Every identity against every kind of request: exact statuses, and no
// upstream request for any refused one.
func TestAccessRules(t *testing.T) {
	t.Parallel()
	a := newAccess(t, 1000, "docker.io/*")
	who := map[string]string{
		"anon": "", "ci": basic("ci", "ci-pw"), "bob": basic("bob", "bob-pw"), "ops": basic("ops", "ops-pw"),
		"root": basic("root", "root-pw"), "wrong": basic("ci", "bob-pw"), "nobody": basic("eve", "eve-pw"),
	}
	app := "/v2/harbor.internal/proj/app"
	alpine := "/v2/docker.io/library/alpine"
	job := `{"images": ["harbor.internal/proj/app:1.0"]}`
	var ciJob, rootJob string
	type step struct {
		who, method, path, body string
		want                    int
	}
	steps := []step{
		{"anon", "GET", "/v2/", "", 200},
		{"wrong", "GET", "/v2/", "", 401},
		{"nobody", "GET", "/v2/", "", 401},
		{"ci", "GET", "/v2/", "", 200},
		{"bob", "GET", "/v2/", "", 200},
	}
	for _, p := range []string{app + "/manifests/1.0", app + "/blobs/" + a.app.Layers[0].Digest.String(), app + "/tags/list", app + "/referrers/" + a.app.Manifest.Digest.String()} {
		steps = append(steps, step{"anon", "GET", p, "", 401}, step{"wrong", "GET", p, "", 401}, step{"bob", "GET", p, "", 403},
			step{"ops", "GET", p, "", 403}, step{"nobody", "GET", p, "", 401}, step{"anon", "HEAD", p, "", 401})
	}
	steps = append(steps,
		step{"ci", "GET", app + "/manifests/1.0", "", 200},
		step{"ci", "GET", app + "/blobs/" + a.app.Layers[0].Digest.String(), "", 200},
		step{"ci", "GET", app + "/tags/list", "", 200},
		step{"root", "GET", app + "/manifests/" + a.app.Manifest.Digest.String(), "", 200},
		step{"bob", "GET", "/v2/harbor.internal/other/x/manifests/1.0", "", 200},
		step{"ci", "GET", "/v2/harbor.internal/other/x/manifests/1.0", "", 403},
		step{"anon", "GET", alpine + "/manifests/1.0", "", 200},
		step{"ci", "GET", alpine + "/manifests/1.0", "", 200},
		step{"wrong", "GET", alpine + "/manifests/1.0", "", 401},
		// The API.
		step{"anon", "POST", "/api/v1/prefetch", job, 401},
		step{"bob", "POST", "/api/v1/prefetch", job, 403},
		step{"ops", "POST", "/api/v1/prefetch", job, 403},
		step{"ci", "POST", "/api/v1/prefetch", `{"images": ["harbor.internal/other/x:1.0"]}`, 403},
		step{"ci", "POST", "/api/v1/prefetch", job, 202},
		step{"root", "POST", "/api/v1/prefetch", job, 202},
		step{"anon", "GET", "/api/v1/jobs", "", 401},
		step{"bob", "GET", "/api/v1/jobs", "", 403},
		step{"anon", "GET", "/api/v1/upstreams", "", 401},
		step{"ci", "GET", "/api/v1/upstreams", "", 403},
		step{"ops", "GET", "/api/v1/upstreams", "", 403},
		step{"root", "GET", "/api/v1/upstreams", "", 200},
		step{"ci", "GET", "/api/v1/pins", "", 403},
		step{"root", "GET", "/api/v1/pins", "", 200},
	)
	for _, s := range steps {
		a.pub.Reset()
		a.priv.Reset()
		var hdr []string
		if who[s.who] != "" {
			hdr = []string{"Authorization", who[s.who]}
		}
		r := a.send(t, s.method, s.path, "application/json", s.body, hdr...)
		if r.status != s.want {
			t.Fatalf("%s %s %s: %d %s, want %d", s.who, s.method, s.path, r.status, r.body, s.want)
		}
		if s.want == 202 {
			var j replicate.Job
			json.Unmarshal(r.body, &j)
			if s.who == "ci" {
				ciJob = j.ID
			} else {
				rootJob = j.ID
			}
			a.wait(t, j.ID, "Authorization", who["root"]) // its upstream requests are not the next step's
		}
		if s.want >= 400 {
			if n := a.pub.Total() + a.priv.Total(); n != 0 {
				t.Fatalf("%s %s %s was refused but made %d upstream requests", s.who, s.method, s.path, n)
			}
			if s.want == 401 && r.header.Get("WWW-Authenticate") == "" {
				t.Fatalf("%s %s %s: 401 without a challenge", s.who, s.method, s.path)
			}
			if s.method != "HEAD" {
				wantError(t, r, s.want, map[int]string{401: "UNAUTHORIZED", 403: "DENIED"}[s.want])
			}
		}
	}

	// Jobs: ci sees its own, ops every one, and only root cancels another's.
	jobIDs := func(who string) []string {
		r := a.do(t, "GET", "/api/v1/jobs", "Authorization", who)
		var doc struct{ Jobs []replicate.Job }
		if r.status != 200 || json.Unmarshal(r.body, &doc) != nil {
			t.Fatalf("jobs: %d %s", r.status, r.body)
		}
		var ids []string
		for _, j := range doc.Jobs {
			ids = append(ids, j.ID)
		}
		slices.Sort(ids)
		return ids
	}
	if got := jobIDs(who["ci"]); !slices.Equal(got, []string{ciJob}) {
		t.Fatalf("ci sees jobs %v, want only its own %s", got, ciJob)
	}
	if got := jobIDs(who["ops"]); len(got) != 2 {
		t.Fatalf("ops sees jobs %v, want both", got)
	}
	for _, c := range []struct {
		who, method, id string
		want            int
	}{
		{"ci", "GET", ciJob, 200}, {"ci", "GET", rootJob, 404}, {"ci", "GET", rootJob + "/images", 404},
		{"ops", "GET", rootJob, 200}, {"ops", "DELETE", rootJob, 403}, {"ci", "DELETE", rootJob, 404},
		{"bob", "GET", ciJob, 403}, {"anon", "GET", ciJob, 401}, {"ci", "DELETE", ciJob, 200}, {"root", "DELETE", rootJob, 200},
	} {
		var hdr []string
		if who[c.who] != "" {
			hdr = []string{"Authorization", who[c.who]}
		}
		if r := a.do(t, c.method, "/api/v1/jobs/"+c.id, hdr...); r.status != c.want {
			t.Fatalf("%s %s job %s: %d %s, want %d", c.who, c.method, c.id, r.status, r.body, c.want)
		}
	}
}

// The catalog lists what the caller may pull, no more.
func TestCatalogFollowsPullRights(t *testing.T) {
	t.Parallel()
	a := newAccess(t, 1000, "docker.io/*")
	root := basic("root", "root-pw")
	for _, p := range []string{"/v2/docker.io/library/alpine/manifests/1.0", "/v2/harbor.internal/proj/app/manifests/1.0", "/v2/harbor.internal/other/x/manifests/1.0"} {
		if r := a.do(t, "GET", p, "Authorization", root); r.status != 200 {
			t.Fatalf("%s: %d", p, r.status)
		}
	}
	for who, want := range map[string]string{
		"":                     `{"repositories":["docker.io/library/alpine"]}`,
		basic("ci", "ci-pw"):   `{"repositories":["docker.io/library/alpine","harbor.internal/proj/app"]}`,
		basic("bob", "bob-pw"): `{"repositories":["docker.io/library/alpine","harbor.internal/other/x"]}`,
		root:                   `{"repositories":["docker.io/library/alpine","harbor.internal/other/x","harbor.internal/proj/app"]}`,
		basic("ops", "ops-pw"): `{"repositories":["docker.io/library/alpine"]}`,
	} {
		var hdr []string
		if who != "" {
			hdr = []string{"Authorization", who}
		}
		if r := a.do(t, "GET", "/v2/_catalog", hdr...); r.status != 200 || string(r.body) != want {
			t.Fatalf("catalog for %q: %d %s, want %s", who, r.status, r.body, want)
		}
	}
}

// When anonymous may pull nothing, GET /v2/ asks for credentials, which is
// what makes `docker login` work.
func TestBaseAsksForLoginWhenNothingIsOpen(t *testing.T) {
	t.Parallel()
	a := newAccess(t, 0)
	r := a.do(t, "GET", "/v2/")
	wantError(t, r, 401, "UNAUTHORIZED")
	if r.header.Get("WWW-Authenticate") != `Basic realm="wharf"` {
		t.Fatalf("challenge %q", r.header.Get("WWW-Authenticate"))
	}
	if r := a.do(t, "GET", "/v2/", "Authorization", basic("bob", "bob-pw")); r.status != 200 {
		t.Fatalf("logged in: %d", r.status)
	}
	wantError(t, a.do(t, "GET", "/v2/docker.io/library/alpine/manifests/1.0"), 401, "UNAUTHORIZED")
	// The catalog too, as distribution's own asks for a login.
	r = a.do(t, "GET", "/v2/_catalog")
	wantError(t, r, 401, "UNAUTHORIZED")
	if r.header.Get("WWW-Authenticate") != `Basic realm="wharf"` {
		t.Fatalf("catalog challenge %q", r.header.Get("WWW-Authenticate"))
	}
	if r := a.do(t, "GET", "/v2/_catalog", "Authorization", basic("bob", "bob-pw")); r.status != 200 {
		t.Fatalf("catalog logged in: %d", r.status)
	}
}

// Attack 4 over HTTP: failed logins of one user name are paced until its
// turn is too far off, then told to come back (429 with Retry-After);
// other users behind the same address (here every client is 127.0.0.1)
// are never refused, whether they logged in before or not.
func TestFailedLoginsArePaced(t *testing.T) {
	t.Parallel()
	a := newAccess(t, 0, "docker.io/*")
	bob := basic("bob", "bob-pw")
	if r := a.do(t, "GET", "/v2/", "Authorization", bob); r.status != 200 {
		t.Fatal(r.status)
	}
	// The guesses are free, then slowed (the server waits, up to 3 s a
	// guess), then refused: within a dozen.
	var r response
	guesses := 0
	for guesses < 12 {
		guesses++
		if r = a.do(t, "GET", "/v2/", "Authorization", basic("ci", fmt.Sprint("guess", guesses))); r.status != 401 {
			break
		}
	}
	wantError(t, r, 429, "TOOMANYREQUESTS")
	if r.header.Get("Retry-After") == "" || guesses <= 5 {
		t.Fatalf("429 after %d guesses, Retry-After %q", guesses, r.header.Get("Retry-After"))
	}
	for _, who := range []string{bob, basic("ops", "ops-pw")} {
		if r := a.do(t, "GET", "/v2/", "Authorization", who); r.status != 200 {
			t.Fatalf("another user behind the same address: %d", r.status)
		}
	}
	if got := metric(t, a.env, "wharf_auth_failures_total"); got != float64(guesses-1) {
		t.Fatalf("wharf_auth_failures_total %v, want %d", got, guesses-1)
	}
	if metric(t, a.env, "wharf_auth_limited_total", "action", "slowed") == 0 || metric(t, a.env, "wharf_auth_limited_total", "action", "refused") != 1 {
		t.Fatal("wharf_auth_limited_total does not show the slowed and refused attempts")
	}
}

// Without an auth block a private upstream is served to loopback only:
// a request forwarded by a proxy on this host, or addressed by a name DNS
// could have rebound, is not loopback.
func TestPrivateUpstreamStaysOnLoopback(t *testing.T) {
	t.Parallel()
	pub, priv := upstreamtest.New(t), upstreamtest.New(t)
	alpine := pub.PushImage(t, "library/alpine", "1.0", 41, 1, 1<<10, amd64)
	app := priv.PushImage(t, "proj/app", "1.0", 42, 1, 1<<10, amd64)
	e := newEnvAccess(t, auth.Config{Loopback: true, LoopbackAPI: true, Anonymous: []string{"docker.io/*"}},
		spec{name: "docker.io", reg: pub, ttl: time.Hour}, spec{name: "harbor.internal", reg: priv, ttl: time.Hour})
	e.get(t, "/v2/harbor.internal/proj/app/manifests/1.0", app.Manifest.Data, app.Manifest.Digest.String())
	priv.Reset()
	for _, hdr := range [][]string{{"X-Forwarded-For", "203.0.113.9"}, {"Forwarded", "for=203.0.113.9"}, {"Host", "rebound.example:5000"}} {
		r := e.do(t, "GET", "/v2/harbor.internal/proj/app/manifests/1.0", hdr...)
		wantError(t, r, 401, "UNAUTHORIZED")
		r = e.do(t, "GET", "/v2/docker.io/library/alpine/manifests/1.0", hdr...)
		if r.status != 200 || string(r.body) != string(alpine.Manifest.Data) {
			t.Fatalf("public upstream with %v: %d", hdr, r.status)
		}
	}
	if priv.Total() != 0 {
		t.Fatalf("refused requests reached the private upstream %d times", priv.Total())
	}

	// With only the private upstream, loopback clients are not asked to
	// log in; others are.
	only := newEnvAccess(t, auth.Config{Loopback: true, LoopbackAPI: true}, spec{name: "harbor.internal", reg: priv, ttl: time.Hour})
	if r := only.do(t, "GET", "/v2/"); r.status != 200 {
		t.Fatalf("GET /v2/ from loopback: %d", r.status)
	}
	wantError(t, only.do(t, "GET", "/v2/", "X-Forwarded-For", "203.0.113.9"), 401, "UNAUTHORIZED")
}

// With neither users nor a token the API answers loopback clients, and
// refuses what a web page in a browser on this host could send.
func TestLoopbackAPIRefusesBrowsers(t *testing.T) {
	t.Parallel()
	p := newPromotion(t, t.TempDir(), cache.Config{}, replicate.Config{}, "", 0)
	p.seed(t)
	job := `{"images": ["harbor-a.example.com/proj/app:1.0"], "push_to": "harbor-b"}`
	for _, c := range []struct {
		name, contentType, body string
		hdr                     []string
	}{
		{"text body", "text/plain", "harbor-a.example.com/proj/app:1.0", nil},
		{"text body, options in the query", "text/plain", "x", nil},
		{"form body", "application/x-www-form-urlencoded", "images=x", nil},
		{"yaml body", "application/yaml", "x: {}", nil},
		{"cross-site origin", "application/json", job, []string{"Origin", "https://evil.example"}},
		{"null origin", "application/json", job, []string{"Origin", "null"}},
		{"cross-site fetch", "application/json", job, []string{"Sec-Fetch-Site", "cross-site"}},
		{"rebound host", "application/json", job, []string{"Host", "evil.example:5000"}},
	} {
		r := p.send(t, http.MethodPost, "/api/v1/prefetch?push_to=harbor-b", c.contentType, c.body, c.hdr...)
		if r.status != http.StatusForbidden {
			t.Fatalf("%s: %d %s, want 403", c.name, r.status, r.body)
		}
	}
	if r := p.send(t, http.MethodGet, "/api/v1/jobs", "", "", "Host", "evil.example"); r.status != http.StatusForbidden {
		t.Fatalf("jobs read through a rebound name: %d", r.status)
	}
	if n := p.src.Total() + p.dst.Total(); n != 0 {
		t.Fatalf("refused requests made %d registry requests", n)
	}
	// The CLI's own requests (a text list or sync YAML inside JSON), and a
	// same-origin one, pass.
	p.wait(t, p.submit(t, "application/json", "", job))
	for _, body := range []string{`{"list": "# rollout\nharbor-a.example.com/proj/app:1.0\n"}`,
		`{"sync": "harbor-a.example.com:\n  images:\n    proj/app: ['1.0']\n"}`} {
		if j := p.wait(t, p.submit(t, "application/json", "", body)); j.State != replicate.StateDone || len(j.Images) != 1 || j.Images[0].Source != "harbor-a.example.com/proj/app:1.0" {
			t.Fatalf("%s: %s %+v", body, j.State, j.Images)
		}
	}
	p.wait(t, p.submit(t, "application/json", "", job, "Origin", "http://127.0.0.1:5000", "Sec-Fetch-Site", "same-origin"))
}

// Behind a trusted balancer the limiter counts the client its
// X-Forwarded-For names: a client guessing ci's password is refused, and
// another client behind the same balancer logs in as ci at once (counted
// by the balancer's address, it would wait its turn too).
func TestTrustedProxyCountsTheClient(t *testing.T) {
	t.Parallel()
	a := newAccess(t, 0, "docker.io/*")
	proxies, err := httpx.ParseProxies([]string{"127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	lb := httptest.NewServer(httpx.TrustProxies(proxies, a.env.Server.Config.Handler))
	t.Cleanup(lb.Close)
	get := func(from, authz string) int {
		req, _ := http.NewRequest(http.MethodGet, lb.URL+"/v2/", nil)
		req.Header.Set("X-Forwarded-For", from)
		req.Header.Set("Authorization", authz)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	status := 0
	for i := 0; i < 12 && status != http.StatusTooManyRequests; i++ {
		status = get("203.0.113.1", basic("ci", fmt.Sprint("guess", i)))
	}
	if status != http.StatusTooManyRequests {
		t.Fatalf("the guessing client: %d, want 429 within a dozen guesses", status)
	}
	if s := get("203.0.113.2", basic("ci", "ci-pw")); s != http.StatusOK {
		t.Fatalf("ci from another client behind the balancer: %d", s)
	}
}
