package upstream

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"oras.land/oras-go/v2/registry/remote/auth"

	"github.com/wharf-registry/wharf/upstream/upstreamtest"
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

// Once a token is held, every request goes out with it: a Harbor-style
// challenge names more actions (pull,push) than a pull asks for, and the
// token it brought must still serve the next pull of the repository, not
// cost a 401 round trip each time. Concurrent first requests share one
// token fetch; a redirected blob needs none.
func TestTokenServesEveryRequestOfItsRepository(t *testing.T) {
	reg := upstreamtest.New(t, upstreamtest.WithTokenAuth("bot", "pw"), upstreamtest.WithBlobRedirects())
	img := reg.PushImage(t, "org/app", "1", 5, 3, 4096, ocispec.Platform{OS: "linux", Architecture: "amd64"})
	c, err := New(Config{Name: "hub", URL: reg.URL, Insecure: true, Username: "bot", Password: "pw"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	reg.Reset()
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 8 {
		wg.Go(func() {
			_, rc, err := c.Manifest(t.Context(), "org/app", "1", false)
			if err == nil {
				rc.Close()
			}
			errs <- err
		})
	}
	wg.Wait()
	for range 8 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if n := reg.Count("GET", "token"); n != 1 {
		t.Fatalf("8 concurrent first requests fetched %d tokens, want 1", n)
	}
	reg.Reset()
	for _, b := range img.Blobs() {
		rc, _, err := c.Blob(t.Context(), "org/app", b.Digest, 0)
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(rc)
		rc.Close()
		if err != nil || !bytes.Equal(got, b.Data) {
			t.Fatalf("blob %s: %v, %d bytes", b.Digest, err, len(got))
		}
	}
	if _, rc, err := c.Manifest(t.Context(), "org/app", "1", false); err != nil {
		t.Fatal(err)
	} else {
		rc.Close()
	}
	var unauthenticated []string
	for _, r := range reg.Requests() {
		if strings.HasPrefix(r.Path, "/v2/") && r.Authorization == "" {
			unauthenticated = append(unauthenticated, r.Method+" "+r.Path)
		}
	}
	n := len(img.Blobs())
	if len(unauthenticated) > 0 || reg.Count("GET", "token") != 0 || reg.Total() != 2*n+1 {
		t.Fatalf("with a token held: %d requests (want %d: each blob and its redirect, the manifest), %d token fetches, sent without the token: %v",
			reg.Total(), 2*n+1, reg.Count("GET", "token"), unauthenticated)
	}
}

// Once the upstream has shown its token challenge, a repository Wharf has
// no token for yet costs a token fetch, not a request answered 401 first:
// as docker does, the realm learned once serves every scope.
func TestNewRepositoryCostsNoUnauthorizedRoundTrip(t *testing.T) {
	reg := upstreamtest.New(t, upstreamtest.WithTokenAuth("bot", "pw"))
	a := reg.PushImage(t, "org/a", "1", 5, 1, 512, ocispec.Platform{OS: "linux", Architecture: "amd64"})
	b := reg.PushImage(t, "org/b", "1", 6, 1, 512, ocispec.Platform{OS: "linux", Architecture: "amd64"})
	c, err := New(Config{Name: "hub", URL: reg.URL, Insecure: true, Username: "bot", Password: "pw"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	get := func(repo string, img upstreamtest.Image) {
		t.Helper()
		_, rc, err := c.Manifest(t.Context(), repo, "1", false)
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(rc)
		rc.Close()
		if err != nil || !bytes.Equal(got, img.Manifest.Data) {
			t.Fatalf("manifest of %s: %v, %q", repo, err, got)
		}
	}
	reg.Reset()
	get("org/a", a)
	if reg.Total() != 3 || reg.Count("GET", "token") != 1 {
		t.Fatalf("first repository: %d requests (want 3: refused, token, manifest), %d token fetches", reg.Total(), reg.Count("GET", "token"))
	}
	reg.Reset()
	get("org/b", b)
	var kinds []string
	for _, r := range reg.Requests() {
		kinds = append(kinds, fmt.Sprintf("%s %s token=%t", r.Method, r.Kind(), r.Authorization != ""))
	}
	if want := "GET token token=true,GET manifest token=true"; strings.Join(kinds, ",") != want {
		t.Fatalf("second repository: %v, want %s", kinds, want)
	}
}
