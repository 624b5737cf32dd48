package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/wharf-registry/wharf/storage/s3test"
	"github.com/wharf-registry/wharf/upstream/upstreamtest"
)

// Two wharf processes with storage.driver s3 share a bucket: the first
// puts every blob in it, in distribution's layout; the second, on an empty
// disk, pulls the image with crane and fetches no blob upstream. The
// bucket's secret key comes from the environment.
func TestTwoWharfsShareABucket(t *testing.T) {
	crane := tool(t, "crane")
	s3 := s3test.Start(t)
	up := upstreamtest.New(t)
	img := up.PushImage(t, "library/app", "1.0", 62, 3, 256<<10, amd64)
	t.Setenv("WHARF_TEST_S3_SECRET", s3.SecretKey)
	cfg := func() string {
		root := t.TempDir()
		return fmt.Sprintf(`listen: "127.0.0.1:0"
storage:
  root: %s
  driver: s3
  s3:
    bucket: %s
    region: us-east-1
    regionendpoint: %s
    accesskey: %s
    secretkey: ${WHARF_TEST_S3_SECRET}
    forcepathstyle: true
    secure: false
upstreams:
  - name: docker.io
    url: %s
    default: true
    insecure: true
`, root, s3.Bucket, s3.URL, s3.AccessKey, up.URL)
	}

	first := startWharf(t, cfg())
	runTool(t, crane, "pull", "--insecure", "--format", "oci", first.addr+"/library/app:1.0", filepath.Join(t.TempDir(), "first"))
	first.stop(t) // a clean stop waits for the fills, and so their uploads
	for _, b := range append(img.Blobs(), img.Manifest) {
		key := "/docker/registry/v2/blobs/sha256/" + b.Digest.Encoded()[:2] + "/" + b.Digest.Encoded() + "/data"
		if got, err := os.ReadFile(s3.ObjectFile(key)); err != nil || !bytes.Equal(got, b.Data) {
			t.Fatalf("%s in the bucket: %v, %d bytes of %d", b.Digest, err, len(got), len(b.Data))
		}
	}

	up.Reset()
	second := startWharf(t, cfg())
	layout := filepath.Join(t.TempDir(), "second")
	runTool(t, crane, "pull", "--insecure", "--format", "oci", second.addr+"/library/app:1.0", layout)
	for _, b := range img.Blobs() {
		got, err := os.ReadFile(filepath.Join(layout, "blobs", "sha256", b.Digest.Encoded()))
		if err != nil || !bytes.Equal(got, b.Data) {
			t.Fatalf("blob %s through the second Wharf differs (%v)", b.Digest, err)
		}
	}
	if n := up.Count("GET", "blob"); n != 0 {
		t.Fatalf("the second Wharf fetched %d blobs upstream, want 0", n)
	}
}
