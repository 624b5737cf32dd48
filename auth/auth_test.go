package auth

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
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
	th := throttle{clientFree: clientFree}
	now := time.Unix(1_000_000, 0)
	for i := range 3 * maxPaces {
		c.put([32]byte{byte(i), byte(i >> 8), byte(i >> 16)}, "u", now)
		th.fail(fmt.Sprintf("198.51.100.%d", i%256), fmt.Sprint("user", i), now)
		if c.len() > maxCreds || th.len() > maxPaces {
			t.Fatalf("after %d: %d credentials, %d paces", i, c.len(), th.len())
		}
	}
}

// pacing is an Auth of users ci and bob whose clock only moves when an
// attempt waits for its turn; waits records each wait.
type pacing struct {
	*Auth
	now   time.Time
	waits []time.Duration
}

func newPacing(t *testing.T) *pacing {
	f := filepath.Join(t.TempDir(), "htpasswd")
	os.WriteFile(f, []byte("ci:"+hash(t, "ci-pw")+"\nbob:"+hash(t, "bob-pw")+"\n"), 0o600)
	a, err := New(Config{Htpasswd: f, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	p := &pacing{Auth: a, now: time.Unix(1_000_000, 0)}
	a.now = func() time.Time { return p.now }
	a.sleep = func(_ context.Context, d time.Duration) error {
		p.waits = append(p.waits, d)
		p.now = p.now.Add(d)
		return nil
	}
	return p
}

// try logs in as user from addr; the outcome is "ok", "401" or "429".
func (p *pacing) try(user, pass, addr string) string {
	r := request(user, pass)
	r.RemoteAddr = addr
	_, err := p.Authenticate(r)
	var tm *TooManyError
	switch {
	case err == nil:
		return "ok"
	case errors.As(err, &tm):
		return "429"
	}
	return "401"
}

// Attack 4: failed logins slow down the user name they guess, from that
// client and, past more of them, from anywhere; never another user
// behind the same address; an IPv6 /64 is one client.
func TestFailedLoginsArePaced(t *testing.T) {
	p := newPacing(t)
	nat := "192.0.2.7:40000"
	var got []string
	for i := range 10 {
		got = append(got, p.try("ci", fmt.Sprint("guess", i), nat))
	}
	// Five free, then turns 1 s, 2 s and 4 s apart, and a turn more than
	// 3 s off is refused.
	if want := "401 401 401 401 401 401 401 401 401 429"; strings.Join(got, " ") != want {
		t.Fatalf("guesses: %s, want %s", strings.Join(got, " "), want)
	}
	if fmt.Sprint(p.waits) != "[1s 2s]" {
		t.Fatalf("waits %v", p.waits)
	}
	// bob behind the same address is neither refused nor slowed.
	if r := p.try("bob", "bob-pw", nat); r != "ok" || len(p.waits) != 2 {
		t.Fatalf("bob behind the NAT: %s, waits %v", r, p.waits)
	}
	// ci's own password waits its turn, then works, and forgives the client.
	p.now = p.now.Add(10 * time.Second)
	if r := p.try("ci", "ci-pw", nat); r != "ok" {
		t.Fatalf("ci's password after the guessing: %s", r)
	}

	// An IPv6 /64 is one client, whichever of its addresses guesses.
	p = newPacing(t)
	got = nil
	for i := range 10 {
		got = append(got, p.try("ci", "guess", fmt.Sprintf("[2001:db8:1:2::%x]:40000", i+1)))
	}
	if got[9] != "429" {
		t.Fatalf("guesses from one /64: %v", got)
	}
	if r := p.try("ci", "guess", "[2001:db8:1:3::1]:40000"); r != "401" {
		t.Fatalf("another /64: %s", r)
	}

	// Many clients guessing one name: past 20 failures in all, every
	// client's attempts at it are paced; other names are not.
	p = newPacing(t)
	for i := range 20 {
		if r := p.try("ci", "guess", fmt.Sprintf("198.51.100.%d:1", i)); r != "401" {
			t.Fatalf("guess %d: %s", i, r)
		}
	}
	for i := range 3 {
		p.try("ci", "guess", fmt.Sprintf("203.0.113.%d:1", i+1))
	}
	if len(p.waits) == 0 {
		t.Fatal("a distributed guessing of one name is not slowed")
	}
	waits := len(p.waits)
	if r := p.try("bob", "bob-pw", "203.0.113.9:1"); r != "ok" || len(p.waits) != waits {
		t.Fatalf("bob during an attack on ci: %s", r)
	}
}

// An unknown user name costs the same bcrypt work as a wrong password:
// the stand-in hash has the file's cost.
func TestUnknownUserCostsTheSame(t *testing.T) {
	f := filepath.Join(t.TempDir(), "htpasswd")
	h, _ := bcrypt.GenerateFromPassword([]byte("pw"), 6)
	os.WriteFile(f, []byte("ci:"+string(h)+"\n"), 0o600)
	a, err := New(Config{Htpasswd: f})
	if err != nil {
		t.Fatal(err)
	}
	_, found, dummy := a.users.lookup("nobody")
	if cost, err := bcrypt.Cost(dummy); found || err != nil || cost != 6 {
		t.Fatalf("stand-in hash: cost %d %v, want 6", cost, err)
	}
}

// A user removed from the file, or whose password changed, is refused
// within a second even with a credential verified just before.
func TestRemovedUserIsOutWithinASecond(t *testing.T) {
	p := newPacing(t)
	if r := p.try("ci", "ci-pw", "192.0.2.7:1"); r != "ok" {
		t.Fatal(r)
	}
	tmp := p.users.path + ".tmp"
	os.WriteFile(tmp, []byte("bob:"+hash(t, "bob-pw")+"\n"), 0o600)
	os.Rename(tmp, p.users.path)
	p.now = p.now.Add(recheck)
	if r := p.try("ci", "ci-pw", "192.0.2.7:1"); r != "401" {
		t.Fatalf("a removed user a second later: %s", r)
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
