package upstream

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/wharf-registry/wharf/upstream/upstreamtest"
)

// capture records every request it gets and the Authorization it carried.
type capture struct {
	mu   sync.Mutex
	seen []string
}

func (c *capture) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	c.mu.Lock()
	c.seen = append(c.seen, r.Method+" "+r.URL.Path+" auth="+r.Header.Get("Authorization"))
	c.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	w.Write([]byte(`{"token":"stolen"}`))
}

func (c *capture) requests() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.seen)
}

// An upstream that uses Basic auth, and later answers with a Bearer
// challenge whose realm is another host:port, must not make Wharf send the
// configured password there: not before a successful pull, not after it.
func TestRealmMoveGetsNoCredentials(t *testing.T) {
	thief := &capture{}
	capSrv := httptest.NewServer(thief)
	defer capSrv.Close()
	const user, pass = "robot$ci", "s3cret"
	basic := "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+pass))
	var moved atomic.Bool
	var upstreamAuth []string
	var mu sync.Mutex
	reg := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		upstreamAuth = append(upstreamAuth, r.Header.Get("Authorization"))
		mu.Unlock()
		switch {
		case r.Header.Get("Authorization") != "" && moved.Load():
			w.Header().Set("WWW-Authenticate", `Bearer realm="`+capSrv.URL+`/token",service="x",scope="repository:proj/app:pull"`)
			w.WriteHeader(http.StatusUnauthorized)
		case r.Header.Get("Authorization") != basic:
			w.Header().Set("WWW-Authenticate", `Basic realm="Registry Realm"`)
			w.WriteHeader(http.StatusUnauthorized)
		default:
			w.Write([]byte("blob"))
		}
	}))
	defer reg.Close()
	c, err := New(Config{Name: "harbor", URL: reg.URL, Insecure: true, Username: user, Password: pass}, nil)
	if err != nil {
		t.Fatal(err)
	}
	dgst := digest.FromString("blob")
	for _, round := range []string{"before", "after"} {
		if round == "after" {
			rc, _, err := c.Blob(t.Context(), "proj/app", dgst, 0)
			if err != nil {
				t.Fatalf("pull with Basic auth: %v", err)
			}
			rc.Close()
		}
		moved.Store(true)
		_, _, err := c.Blob(t.Context(), "proj/app", dgst, 0)
		var ue *Error
		if round == "after" && (!errors.As(err, &ue) || ue.Status != 0 || !errors.Is(err, ErrRefused)) {
			t.Fatalf("%s a pull: a moved realm gave %v, want a refused transport error (503 to clients)", round, err)
		}
		if err == nil {
			t.Fatalf("%s a pull: a moved realm was answered", round)
		}
		moved.Store(false)
	}
	if got := thief.requests(); len(got) != 0 {
		t.Fatalf("the capture server got %q, want nothing", got)
	}
	mu.Lock()
	defer mu.Unlock()
	if !slices.Contains(upstreamAuth, basic) {
		t.Fatalf("the upstream itself never got its credentials: %q", upstreamAuth)
	}
}

// The realm of the first Bearer challenge gets the credentials; a realm a
// later challenge names is refused; any other host (a redirect, an upload
// location) gets the request without them.
func TestFirstBearerRealmIsPinned(t *testing.T) {
	realm, other, cdn := &capture{}, &capture{}, &capture{}
	realmSrv, otherSrv, cdnSrv := httptest.NewServer(realm), httptest.NewServer(other), httptest.NewServer(cdn)
	defer realmSrv.Close()
	defer otherSrv.Close()
	defer cdnSrv.Close()
	var moved atomic.Bool
	reg := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		to := realmSrv.URL
		if moved.Load() {
			to = otherSrv.URL
		}
		w.Header().Set("WWW-Authenticate", `Bearer realm="`+to+`/token",service="x"`)
		w.WriteHeader(http.StatusUnauthorized)
	}))
	defer reg.Close()
	g := newGuard(http.DefaultTransport, "t", mustURL(t, reg.URL), nil, nil)
	send := func(u string) error {
		req, _ := http.NewRequest("GET", u, nil)
		req.Header.Set("Authorization", "Basic c2VjcmV0")
		resp, err := g.RoundTrip(req)
		if err == nil {
			resp.Body.Close()
		}
		return err
	}
	for _, step := range []struct {
		url     string
		refused bool
		move    bool
	}{
		{cdnSrv.URL + "/blob", false, false},    // before any challenge: sent bare
		{reg.URL + "/v2/", false, false},        // the first challenge pins the realm
		{realmSrv.URL + "/token", false, false}, // which gets the credentials
		{reg.URL + "/v2/", false, true},         // a later challenge names another realm
		{otherSrv.URL + "/token", true, false},  // refused
		{realmSrv.URL + "/token", false, false}, // the pinned one still works
		{cdnSrv.URL + "/blob", false, false},    // and other hosts still get no credentials
	} {
		moved.Store(step.move)
		if err := send(step.url); errors.Is(err, ErrRefused) != step.refused || (err != nil && !step.refused) {
			t.Fatalf("%s: %v, want refused=%v", step.url, err, step.refused)
		}
	}
	if got := realm.requests(); len(got) != 2 || got[0] != "GET /token auth=Basic c2VjcmV0" || got[1] != got[0] {
		t.Fatalf("the pinned realm got %q", got)
	}
	if got := other.requests(); len(got) != 0 {
		t.Fatalf("the moved realm got %q", got)
	}
	if got := cdn.requests(); len(got) != 2 || got[0] != "GET /blob auth=" || got[1] != got[0] {
		t.Fatalf("another host got %q", got)
	}
}

// A first challenge's realm gets the credentials only on the upstream's
// own site (the same address, for an address) or when token_realms lists
// it: a realm on another host gets the token request without them.
func TestRealmOnAnotherSiteGetsNothing(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.2:0")
	if err != nil {
		t.Skip("no 127.0.0.2 on this machine:", err)
	}
	realm := &capture{}
	realmSrv := &httptest.Server{Listener: l, Config: &http.Server{Handler: realm}}
	realmSrv.Start()
	defer realmSrv.Close()
	samePort := httptest.NewServer(realm) // 127.0.0.1, another port
	defer samePort.Close()
	for _, tc := range []struct {
		realm, listed string
		want          string
	}{
		{realmSrv.URL, "", "GET /token auth="},
		{realmSrv.URL, realmSrv.URL, "GET /token auth=Basic c2VjcmV0"},
		{samePort.URL, "", "GET /token auth=Basic c2VjcmV0"},
	} {
		reg := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("WWW-Authenticate", `Bearer realm="`+tc.realm+`/token",service="x"`)
			w.WriteHeader(http.StatusUnauthorized)
		}))
		g := newGuard(http.DefaultTransport, "t", mustURL(t, reg.URL), nil, nil)
		if tc.listed != "" {
			g.realms = []string{origin(mustURL(t, tc.listed))}
		}
		for _, u := range []string{reg.URL + "/v2/", tc.realm + "/token"} {
			req, _ := http.NewRequest("GET", u, nil)
			req.Header.Set("Authorization", "Basic c2VjcmV0")
			resp, err := g.RoundTrip(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
		}
		reg.Close()
		if got := realm.requests(); len(got) != 1 || got[0] != tc.want {
			t.Errorf("realm %s (listed %q) got %q, want %q", tc.realm, tc.listed, got, tc.want)
		}
		realm.mu.Lock()
		realm.seen = nil
		realm.mu.Unlock()
	}
}

func TestSameSite(t *testing.T) {
	for _, tc := range []struct {
		a, b string
		want bool
	}{
		{"registry-1.docker.io", "auth.docker.io", true},
		{"ghcr.io", "GHCR.io.", true},
		{"quay.io", "evil.io", false},
		{"a.github.io", "b.github.io", false}, // github.io is a public suffix
		{"harbor.corp.example.com", "sso.example.com", true},
		{"10.0.0.1", "10.0.0.1", true},
		{"10.0.0.1", "10.0.0.2", false},
		{"::1", "0:0::1", true},
		{"localhost", "localhost", true},
		{"registry.localhost", "other.localhost", false},
		{"example.com", "10.0.0.1", false},
	} {
		if got := sameSite(tc.a, tc.b); got != tc.want {
			t.Errorf("sameSite(%s, %s) = %v, want %v", tc.a, tc.b, got, tc.want)
		}
	}
}

// dials records every address a client dials.
type dials struct {
	mu    sync.Mutex
	addrs []string
}

func (d *dials) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	d.mu.Lock()
	d.addrs = append(d.addrs, addr)
	d.mu.Unlock()
	return (&net.Dialer{}).DialContext(ctx, network, addr)
}

func (d *dials) list() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Clone(d.addrs)
}

// A hostile upstream cannot point Wharf at the cloud metadata service, the
// LAN or plain http: each redirect is refused before a connection is tried.
func TestRedirectPolicy(t *testing.T) {
	plain := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("blob")) }))
	defer plain.Close()
	var hops atomic.Int32
	redirect := func(to string) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if to == "loop" {
				hops.Add(1)
				http.Redirect(w, r, r.URL.Path+"x", http.StatusTemporaryRedirect)
				return
			}
			http.Redirect(w, r, to, http.StatusTemporaryRedirect)
		})
	}
	for _, tc := range []struct {
		name, to string
		tls      bool
		refused  string // the address that must never be dialled
	}{
		{"metadata service", "http://169.254.169.254/latest/meta-data/", false, "169.254.169.254:80"},
		{"private range", "http://10.1.2.3:8080/blob", false, "10.1.2.3:8080"},
		{"ipv6 link-local", "http://[fe80::1]/blob", false, "[fe80::1]:80"},
		{"cloud metadata in the shared range", "http://100.100.100.200/latest/meta-data/", false, "100.100.100.200:80"},
		{"benchmarking range", "http://198.18.0.1/blob", false, "198.18.0.1:80"},
		{"metadata through NAT64", "http://[64:ff9b::a9fe:a9fe]/", false, "[64:ff9b::a9fe:a9fe]:80"},
		{"metadata as IPv4-compatible", "http://[::a9fe:a9fe]/", false, "[::a9fe:a9fe]:80"},
		{"metadata as IPv4-mapped", "http://[::ffff:a9fe:a9fe]/", false, "[::ffff:a9fe:a9fe]:80"},
		{"private range through 6to4", "http://[2002:a01:203::1]/", false, "[2002:a01:203::1]:80"},
		{"metadata as a Teredo client", "http://[2001:0:808:808::5601:5601]/", false, "[2001:0:808:808::5601:5601]:80"},
		{"https to http", plain.URL + "/blob", true, strings.TrimPrefix(plain.URL, "http://")},
		{"loop", "loop", false, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var reg *httptest.Server
			if tc.tls {
				reg = httptest.NewTLSServer(redirect(tc.to))
			} else {
				reg = httptest.NewServer(redirect(tc.to))
			}
			defer reg.Close()
			d := &dials{}
			c, err := New(Config{Name: "t", URL: reg.URL, Insecure: true, dial: d.dial}, nil)
			if err != nil {
				t.Fatal(err)
			}
			hops.Store(0)
			_, _, err = c.Blob(t.Context(), "a/b", digest.FromString("blob"), 0)
			if !errors.Is(err, ErrRefused) {
				t.Fatalf("redirect to %s: %v, want refused", tc.to, err)
			}
			for _, a := range d.list() {
				if a != strings.TrimPrefix(strings.TrimPrefix(reg.URL, "http://"), "https://") {
					t.Fatalf("dialled %s", a)
				}
			}
			if tc.to == "loop" && hops.Load() != maxRedirects {
				t.Fatalf("followed %d redirects, want %d", hops.Load(), maxRedirects)
			}
		})
	}
	// A loopback upstream may redirect to another loopback host: that is
	// its own kind of address (and how the test registries serve blobs).
	reg := httptest.NewServer(redirect(plain.URL + "/blob"))
	defer reg.Close()
	c, err := New(Config{Name: "t", URL: reg.URL, Insecure: true}, nil)
	if err != nil {
		t.Fatal(err)
	}
	rc, _, err := c.Blob(t.Context(), "a/b", digest.FromString("blob"), 0)
	if err != nil {
		t.Fatalf("loopback to loopback: %v", err)
	}
	rc.Close()
}

func TestKindOf(t *testing.T) {
	for addr, want := range map[string]addrKind{
		"127.0.0.1": loopback, "::1": loopback, "10.0.0.1": private, "192.168.1.1": private, "172.16.0.1": private,
		"fd00::1": private, "169.254.169.254": linkLocal, "fe80::1": linkLocal, "0.0.0.0": special, "::": special,
		"224.0.0.1": special, "8.8.8.8": public, "2001:4860::1": public, "::ffff:169.254.169.254": linkLocal,
		"100.100.100.200": private, "198.19.255.1": private, "100.128.0.1": public, "192.0.2.1": special, "240.0.0.1": special,
		"64:ff9b::7f00:1": loopback, "64:ff9b::808:808": public, "64:ff9b:1::1": private, "::7f00:1": loopback,
		"2002:7f00:1::1": loopback, "2002:808:808::1": public, "2001:0:808:808::80ff:fffe": loopback,
		"2001:0:808:808::f7f7:f7f7": public, "2001:db8::1": special, "fec0::1": private,
	} {
		if got := kindOf(net.ParseIP(addr)); got != want {
			t.Errorf("kindOf(%s) = %d, want %d", addr, got, want)
		}
	}
}

// A redirect's host name is resolved once: the addresses checked are the
// ones dialled, whatever the name resolves to a moment later (DNS
// rebinding).
func TestRedirectDialsWhatWasChecked(t *testing.T) {
	cdn := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("blob")) }))
	defer cdn.Close()
	_, port, _ := net.SplitHostPort(strings.TrimPrefix(cdn.URL, "http://"))
	reg := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "http://cdn.example:"+port+"/blob", http.StatusTemporaryRedirect)
	}))
	defer reg.Close()
	var lookups atomic.Int32
	rebind := func(ctx context.Context, host string) ([]net.IPAddr, error) {
		if host != "cdn.example" {
			return net.DefaultResolver.LookupIPAddr(ctx, host)
		}
		if lookups.Add(1) == 1 {
			return []net.IPAddr{{IP: net.ParseIP("127.0.0.1")}}, nil
		}
		return []net.IPAddr{{IP: net.ParseIP("169.254.169.254")}}, nil // a second lookup would be rebound
	}
	d := &dials{}
	c, err := New(Config{Name: "t", URL: reg.URL, Insecure: true, dial: d.dial, resolve: rebind}, nil)
	if err != nil {
		t.Fatal(err)
	}
	rc, _, err := c.Blob(t.Context(), "a/b", digest.FromString("blob"), 0)
	if err != nil {
		t.Fatal(err)
	}
	rc.Close()
	regAddr := strings.TrimPrefix(reg.URL, "http://")
	for _, a := range d.list() {
		if a != regAddr && a != "127.0.0.1:"+port {
			t.Fatalf("dialled %s: not an address the guard checked", a)
		}
	}
}

func mustURL(t *testing.T, s string) *url.URL {
	t.Helper()
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// An upstream's own message reaches clients only when it names no URL and
// not the upstream's host.
func TestErrorMessagesNamingTheUpstreamAreDropped(t *testing.T) {
	for msg, want := range map[string]string{
		"manifest unknown": "manifest unknown",
		"repository harbor-a.internal/proj/app not found":     "",
		"see https://docs.example/errors for help":            "",
		"project HARBOR-A.internal/proj is private":           "",
		"name unknown: repository name not known to registry": "name unknown: repository name not known to registry",
	} {
		if got := scrub(msg, "harbor-a.internal:8443"); got != want {
			t.Errorf("scrub(%q) = %q, want %q", msg, got, want)
		}
	}
}

// ca_file trusts an internal CA without turning verification off; without
// it the same registry is refused.
func TestCAFile(t *testing.T) {
	reg := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("blob")) }))
	defer reg.Close()
	ca := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: reg.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		caFile string
		ok     bool
	}{{"", false}, {ca, true}} {
		cl, err := New(Config{Name: "t", URL: reg.URL, CAFile: c.caFile}, nil)
		if err != nil {
			t.Fatal(err)
		}
		rc, _, err := cl.Blob(t.Context(), "a/b", digest.FromString("blob"), 0)
		if (err == nil) != c.ok {
			t.Fatalf("ca_file %q: %v", c.caFile, err)
		}
		if err == nil {
			rc.Close()
		}
	}
	if _, err := New(Config{Name: "t", URL: reg.URL, CAFile: "/nonexistent"}, nil); err == nil || !strings.Contains(err.Error(), "ca_file") {
		t.Fatalf("a missing ca_file: %v", err)
	}
}

// Docker Hub's way: a token service, then each blob redirected to a CDN
// path with a signature; Wharf's client goes through both.
func TestTokenFlowAndBlobRedirect(t *testing.T) {
	reg := upstreamtest.New(t, upstreamtest.WithTokenAuth("bot", "pw"), upstreamtest.WithBlobRedirects())
	img := reg.PushImage(t, "org/app", "1", 5, 1, 4096, ocispec.Platform{OS: "linux", Architecture: "amd64"})
	c, err := New(Config{Name: "hub", URL: reg.URL, Insecure: true, Username: "bot", Password: "pw"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	rc, _, err := c.Blob(t.Context(), "org/app", img.Layers[0].Digest, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	got, err := io.ReadAll(rc)
	if err != nil || !bytes.Equal(got, img.Layers[0].Data) {
		t.Fatalf("blob through the token flow and a redirect: %v, %d bytes", err, len(got))
	}
	if reg.Count("GET", "token") != 1 {
		t.Fatalf("token requests: %d", reg.Count("GET", "token"))
	}
}
