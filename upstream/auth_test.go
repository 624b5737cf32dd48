package upstream

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"oras.land/oras-go/v2/registry/remote/auth"
)

func TestTokenCacheHonoursExpiry(t *testing.T) {
	now := time.Unix(1_000_000, 0)
	c := newTokenCache()
	c.now = func() time.Time { return now }
	claims := base64.RawURLEncoding.EncodeToString(fmt.Appendf(nil, `{"exp":%d}`, now.Add(300*time.Second).Unix()))
	jwt := "eyJhbGciOiJub25lIn0." + claims + ".sig"
	ctx := context.Background()
	for _, tok := range []string{jwt, "opaque"} {
		key := "repository:" + tok + ":pull"
		got, err := c.Set(ctx, "reg", auth.SchemeBearer, key, func(context.Context) (string, error) { return tok, nil })
		if err != nil || got != tok {
			t.Fatalf("Set: %q %v", got, err)
		}
	}
	at := func(d time.Duration, key string) bool {
		now = time.Unix(1_000_000, 0).Add(d)
		_, err := c.GetToken(ctx, "reg", auth.SchemeBearer, key)
		return err == nil
	}
	jwtKey, opaqueKey := "repository:"+jwt+":pull", "repository:opaque:pull"
	if !at(290*time.Second, jwtKey) || at(296*time.Second, jwtKey) {
		t.Fatal("JWT token not kept until shortly before exp")
	}
	if !at(59*time.Second, opaqueKey) || at(61*time.Second, opaqueKey) {
		t.Fatal("opaque token not kept for the default 60s")
	}
	if _, err := c.GetToken(ctx, "reg", auth.SchemeBearer, "other-scope"); err == nil {
		t.Fatal("token served for a scope it was not issued for")
	}
}

func TestCredentialGuardPinsFirstRealm(t *testing.T) {
	var seen []string
	record := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen = append(seen, r.Host+" "+r.Header.Get("Authorization"))
	})
	realm := httptest.NewServer(record)
	defer realm.Close()
	other := httptest.NewServer(record)
	defer other.Close()
	reg := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen = append(seen, r.Host+" "+r.Header.Get("Authorization"))
		w.Header().Set("WWW-Authenticate", `Bearer realm="`+realm.URL+`/token",service="x"`)
		w.WriteHeader(http.StatusUnauthorized)
	}))
	defer reg.Close()
	host := strings.TrimPrefix(reg.URL, "http://")
	g := &credentialGuard{next: http.DefaultTransport, host: host}
	send := func(u string) {
		req, _ := http.NewRequest("GET", u, nil)
		req.Header.Set("Authorization", "Basic c2VjcmV0")
		resp, err := g.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	send(other.URL)        // before any challenge: nowhere but the registry
	send(reg.URL + "/v2/") // the registry itself, whose challenge pins the realm
	send(realm.URL)        // the announced realm
	send(other.URL)        // anything else, still not
	want := []string{
		strings.TrimPrefix(other.URL, "http://") + " ",
		host + " Basic c2VjcmV0",
		strings.TrimPrefix(realm.URL, "http://") + " Basic c2VjcmV0",
		strings.TrimPrefix(other.URL, "http://") + " ",
	}
	if strings.Join(seen, "|") != strings.Join(want, "|") {
		t.Fatalf("credentials went to:\n%q\nwant\n%q", seen, want)
	}
}

func TestTransportErrorsHidePresignedQueries(t *testing.T) {
	err := authError("GET", "https://reg/v2/x/blobs/sha256:1?token=a", "reg", &url.Error{Op: "Get", URL: "https://s3/blob?X-Amz-Signature=secret", Err: errors.New("reset")})
	if msg := err.Error(); strings.Contains(msg, "secret") || strings.Contains(msg, "token=a") {
		t.Fatalf("error message leaks a query: %s", msg)
	}
}

// Scopes follow the repositories clients name: the cache stays bounded
// whatever the number, dropping expired and soonest-expiring tokens first.
func TestTokenCacheIsBounded(t *testing.T) {
	now := time.Unix(1_000_000, 0)
	c := newTokenCache()
	c.now = func() time.Time { return now }
	ctx := context.Background()
	for i := range 3 * maxTokens {
		key := fmt.Sprintf("repository:random/%d:pull", i)
		c.Set(ctx, "reg", auth.SchemeBearer, key, func(context.Context) (string, error) { return "t", nil })
		if n := c.len(); n > maxTokens {
			t.Fatalf("after %d scopes the cache holds %d tokens", i+1, n)
		}
		now = now.Add(time.Millisecond)
	}
	// The newest survive.
	last := fmt.Sprintf("repository:random/%d:pull", 3*maxTokens-1)
	if _, err := c.GetToken(ctx, "reg", auth.SchemeBearer, last); err != nil {
		t.Fatalf("the newest token was dropped: %v", err)
	}
}
