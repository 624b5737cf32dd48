package upstream

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
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
