package upstream

import (
	"bytes"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/wharf-registry/wharf/upstream/upstreamtest"
)

func pushClient(t *testing.T, reg *upstreamtest.Registry, chunk int64) *Client {
	t.Helper()
	c, err := New(Config{Name: "target", URL: reg.URL, Insecure: true, ChunkSize: chunk}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// opener serves data from an offset; past its end it yields nothing, as
// a blob shorter than its descriptor says would.
func opener(data []byte) func(int64) (io.ReadCloser, error) {
	return func(off int64) (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(data[min(off, int64(len(data))):])), nil
	}
}

func onRegistry(t *testing.T, reg *upstreamtest.Registry, repo string, b upstreamtest.Blob) {
	t.Helper()
	resp, body := reg.Get(t, http.MethodGet, "/v2/"+repo+"/blobs/"+b.Digest.String())
	if resp.StatusCode != http.StatusOK || !bytes.Equal(body, b.Data) {
		t.Fatalf("%s@%s on the registry: %d, %d bytes", repo, b.Digest, resp.StatusCode, len(body))
	}
}

// A mount the registry declines (202) goes on as an upload in the same
// session; one it grants (201) sends no bytes.
func TestPushBlobMountOrUpload(t *testing.T) {
	reg := upstreamtest.New(t)
	c := pushClient(t, reg, 0)
	b := upstreamtest.NewBlob(upstreamtest.Random(1, 10_000))
	desc := ocispec.Descriptor{Digest: b.Digest, Size: int64(len(b.Data))}
	mounted, err := c.PushBlob(t.Context(), "team/a", desc, "team/nowhere", opener(b.Data))
	if err != nil || mounted {
		t.Fatalf("declined mount: mounted %v, %v", mounted, err)
	}
	onRegistry(t, reg, "team/a", b)
	if n, m := reg.Count(http.MethodPost, "upload"), reg.Count(http.MethodPut, "upload"); n != 1 || m != 1 {
		t.Fatalf("declined mount: %d POST, %d PUT; want one of each", n, m)
	}

	reg.Reset()
	mounted, err = c.PushBlob(t.Context(), "team/b", desc, "team/a", func(int64) (io.ReadCloser, error) {
		t.Fatal("a granted mount read the blob")
		return nil, nil
	})
	if err != nil || !mounted {
		t.Fatalf("mount: mounted %v, %v", mounted, err)
	}
	if n := reg.Total(); n != 1 {
		t.Fatalf("mount took %d requests, want 1", n)
	}
	onRegistry(t, reg, "team/b", b)
}

// A reader that ends early never becomes a blob: the request fails and the
// registry holds nothing under the digest.
func TestPushBlobShortReaderFails(t *testing.T) {
	reg := upstreamtest.New(t)
	c := pushClient(t, reg, 0)
	for _, chunk := range []int64{0, 4096} { // monolithic, then chunked
		b := upstreamtest.NewBlob(upstreamtest.Random(uint64(2+chunk), 10_000))
		c.chunkSize = DefaultChunkSize
		if chunk > 0 {
			c.chunkSize = chunk
		}
		desc := ocispec.Descriptor{Digest: b.Digest, Size: int64(len(b.Data))}
		if _, err := c.PushBlob(t.Context(), "team/a", desc, "", opener(b.Data[:9_000])); err == nil {
			t.Fatalf("chunk %d: a short blob was accepted", chunk)
		}
		if resp, _ := reg.Get(t, http.MethodHead, "/v2/team/a/blobs/"+b.Digest.String()); resp.StatusCode != http.StatusNotFound {
			t.Fatalf("chunk %d: registry holds the short blob: %d", chunk, resp.StatusCode)
		}
	}
}

// A registry that stores a manifest under another digest than the bytes
// sent is caught.
func TestPushManifestChecksDigest(t *testing.T) {
	reg := upstreamtest.New(t)
	c := pushClient(t, reg, 0)
	reg.SetHook(func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method == http.MethodPut {
			io.Copy(io.Discard, r.Body)
			w.Header().Set("Docker-Content-Digest", digest.FromString("other").String())
			w.WriteHeader(http.StatusCreated)
			return true
		}
		return false
	})
	err := c.PushManifest(t.Context(), "team/a", "v1", ocispec.MediaTypeImageManifest, []byte(`{"schemaVersion":2}`))
	if err == nil || !strings.Contains(err.Error(), "registry stored "+digest.FromString("other").String()) {
		t.Fatalf("err %v", err)
	}
}
