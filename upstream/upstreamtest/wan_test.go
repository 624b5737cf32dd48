package upstreamtest_test

import (
	"bytes"
	"io"
	"net/http"
	"strings"
	"testing"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/wharf-registry/wharf/upstream/upstreamtest"
)

// A registry on a filesystem with blob redirects serves its CDN path from
// the blob's file: the exact bytes, Range included, and only blobs the
// repository holds.
func TestCDNServesTheBlobFile(t *testing.T) {
	up := upstreamtest.New(t, upstreamtest.WithFilesystem(t.TempDir()), upstreamtest.WithBlobRedirects())
	amd64 := ocispec.Platform{OS: "linux", Architecture: "amd64"}
	img := up.PushImage(t, "library/app", "1", 7, 1, 100_000, amd64)
	other := up.PushImage(t, "library/other", "1", 8, 1, 1000, amd64)
	l := img.Layers[0]
	// Distribution's blob server sets an Etag; the file server does not.
	get := func(repo, rng string) (int, []byte, string) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, up.URL+"/v2/"+repo+"/blobs/"+l.Digest.String(), nil)
		if rng != "" {
			req.Header.Set("Range", rng)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode < 300 && resp.Header.Get("Etag") != "" {
			t.Errorf("%s was served by distribution, not from its file", resp.Request.URL.Path)
		}
		return resp.StatusCode, body, resp.Request.URL.Path
	}
	up.Reset()
	if status, body, path := get("library/app", ""); status != http.StatusOK || !bytes.Equal(body, l.Data) || !strings.HasPrefix(path, "/cdn/") {
		t.Fatalf("whole: %d, %d bytes from %s", status, len(body), path)
	}
	if n := up.Total(); n != 2 {
		t.Fatalf("%d requests, want the blob GET and the CDN's", n)
	}
	if status, body, _ := get("library/app", "bytes=10-19"); status != http.StatusPartialContent || !bytes.Equal(body, l.Data[10:20]) {
		t.Fatalf("Range: %d %q", status, body)
	}
	if status, _, _ := get(other.Repo, ""); status != http.StatusNotFound {
		t.Fatalf("a blob of another repository: %d", status)
	}
}
