package auth

import (
	"encoding/base64"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"
)

func hash(t testing.TB, pw string) string {
	h, err := bcrypt.GenerateFromPassword([]byte(pw), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	return string(h)
}

func request(user, pass string) *http.Request {
	r := httptest.NewRequest("GET", "/v2/", nil)
	r.RemoteAddr = "192.0.2.7:40000"
	if user != "" {
		r.SetBasicAuth(user, pass)
	}
	return r
}

// A bad line is reported with its number and the others load.
func TestHtpasswdBadLines(t *testing.T) {
	raw := "# users\nci:" + hash(t, "a") + "\nnocolon\nmd5:$apr1$x$y\n\nalice:" + hash(t, "b") + "\nci:" + hash(t, "c") + "\n:" + hash(t, "d") + "\n"
	users, problems := parseHtpasswd([]byte(raw))
	if len(users) != 2 || users["ci"] == nil || users["alice"] == nil {
		t.Fatalf("users %v", users)
	}
	want := []string{"line 3: ", "line 4: user \"md5\": only bcrypt", "line 7: user \"ci\" appears again", "line 8: "}
	if len(problems) != len(want) {
		t.Fatalf("problems %q", problems)
	}
	for i, w := range want {
		if !strings.HasPrefix(problems[i], w) {
			t.Fatalf("problem %d: %q, want %q...", i, problems[i], w)
		}
	}
}

// The file is re-read when it changes: a new user gets in, a removed one
// is out, with no restart, and verified credentials are forgotten.
func TestHtpasswdReload(t *testing.T) {
	f := filepath.Join(t.TempDir(), "htpasswd")
	write := func(content string) {
		tmp := f + ".tmp"
		if err := os.WriteFile(tmp, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, f); err != nil {
			t.Fatal(err)
		}
	}
	write("ci:" + hash(t, "pw") + "\n")
	a, err := New(Config{Htpasswd: f, FailureLimit: 1000})
	if err != nil {
		t.Fatal(err)
	}
	check := func(user, pass string, ok bool) {
		t.Helper()
		a.users.next.Store(0) // the next lookup looks at the file: no waiting for the second to pass
		id, err := a.Authenticate(request(user, pass))
		if (err == nil) != ok || (ok && id.User != user) {
			t.Fatalf("%s: %+v %v, want ok=%v", user, id, err, ok)
		}
	}
	check("ci", "pw", true)
	check("alice", "pw2", false)
	write("alice:" + hash(t, "pw2") + "\n")
	check("alice", "pw2", true)
	check("ci", "pw", false)
}

// bcrypt runs once per credential and minute: a cached credential is
// accepted without it, and concurrent first requests share one run.
func TestVerifiedCredentialsAreCached(t *testing.T) {
	f := filepath.Join(t.TempDir(), "htpasswd")
	os.WriteFile(f, []byte("ci:"+hash(t, "pw")+"\n"), 0o600)
	a, err := New(Config{Htpasswd: f})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Unix(1_000_000, 0)
	a.now = func() time.Time { return now }
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 8 {
		wg.Go(func() {
			if _, err := a.Authenticate(request("ci", "pw")); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	// Break the stored hash without a reload: only the cache can answer now.
	a.users.mu.Lock()
	a.users.hash["ci"] = []byte("$2a$04$broken")
	a.users.mu.Unlock()
	a.users.next.Store(time.Now().Add(time.Hour).UnixNano())
	if id, err := a.Authenticate(request("ci", "pw")); err != nil || id.User != "ci" {
		t.Fatalf("cached credential: %+v %v", id, err)
	}
	now = now.Add(credTTL + time.Second)
	if _, err := a.Authenticate(request("ci", "pw")); err == nil {
		t.Fatal("a credential was trusted past its minute")
	}
}

// Neither memory grows with what clients send.
func TestMemoriesAreBounded(t *testing.T) {
	var c credCache
	var l limiter
	l.max = maxFailures
	now := time.Unix(1_000_000, 0)
	for i := range 3 * maxCreds {
		c.put([32]byte{byte(i), byte(i >> 8), byte(i >> 16)}, "u", now)
		l.fail(fmt.Sprintf("198.51.100.%d:%d", i%256, i), now)
		if c.len() > maxCreds || l.len() > maxAddrs {
			t.Fatalf("after %d: %d credentials, %d addresses", i, c.len(), l.len())
		}
	}
}

func TestLoopbackHost(t *testing.T) {
	for host, want := range map[string]bool{
		"127.0.0.1:5000": true, "[::1]:5000": true, "localhost": true, "LOCALHOST.:5000": true, "wharf.localhost": true,
		"10.0.0.1:5000": false, "evil.example:5000": false, "localhost.evil.example": false, "": false,
	} {
		if got := LoopbackHost(host); got != want {
			t.Errorf("LoopbackHost(%q) = %v", host, got)
		}
	}
}

func FuzzParseBasic(f *testing.F) {
	for _, s := range []string{"Basic " + base64.StdEncoding.EncodeToString([]byte("ci:pw")), "basic Og==", "Basic", "Basic ", "Bearer x",
		"BASIC " + base64.StdEncoding.EncodeToString([]byte("a:b:c")), "Basic !!!", "Basic " + strings.Repeat("A", 5000)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, h string) {
		user, pass, ok := ParseBasic(h)
		if !ok {
			if user != "" || pass != "" {
				t.Fatal("a refused header gave a user")
			}
			return
		}
		if user == "" || strings.Contains(user, ":") {
			t.Fatalf("user %q", user)
		}
		// What was accepted is what the standard library reads too.
		r := &http.Request{Header: http.Header{"Authorization": {h}}}
		if u, p, ok := r.BasicAuth(); ok && (u != user || p != pass) {
			t.Fatalf("%q: got %q:%q, net/http %q:%q", h, user, pass, u, p)
		}
	})
}

// htpasswd -B writes $2y$ hashes; a failed login is logged with the user
// and the address, never the password.
func TestHtpasswdBcryptYAndFailureLog(t *testing.T) {
	f := filepath.Join(t.TempDir(), "htpasswd")
	y := "$2y$" + strings.TrimPrefix(hash(t, "right-horse"), "$2a$")
	os.WriteFile(f, []byte("ci:"+y+"\n"), 0o600)
	var logs strings.Builder
	a, err := New(Config{Htpasswd: f, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	if id, err := a.Authenticate(request("ci", "right-horse")); err != nil || id.User != "ci" {
		t.Fatalf("$2y$ entry: %+v %v", id, err)
	}
	if _, err := a.Authenticate(request("ci", "wrong-battery")); err != ErrUnauthorized {
		t.Fatalf("wrong password: %v", err)
	}
	log := logs.String()
	if !strings.Contains(log, "user=ci") || !strings.Contains(log, "192.0.2.7:40000") || !strings.Contains(log, "reason=password") || strings.Contains(log, "wrong-battery") {
		t.Fatalf("failure log: %s", log)
	}
}
