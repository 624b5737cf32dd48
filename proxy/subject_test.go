package proxy_test

import (
	"encoding/json"
	"net/http"
	"testing"
	"time"

	"github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/wharf-registry/wharf/upstream/upstreamtest"
)

// A manifest's subject is a pointer, not content: a referrer naming a
// private manifest as its subject, pushed into a repository of another
// upstream, must not open that manifest (or its blobs) there.
func TestSubjectGrantsNoMembership(t *testing.T) {
	t.Parallel()
	private, public := upstreamtest.New(t), upstreamtest.New(t)
	img := private.PushImage(t, "proj/app", "1.0", 7, 2, 4<<10, amd64)
	cfg := upstreamtest.NewBlob([]byte("{}"))
	public.PushBlob(t, "evil/x", cfg)
	body, err := json.Marshal(ocispec.Manifest{
		Versioned:    specs.Versioned{SchemaVersion: 2},
		MediaType:    ocispec.MediaTypeImageManifest,
		ArtifactType: "application/vnd.example.sig",
		Config:       ocispec.Descriptor{MediaType: "application/vnd.oci.empty.v1+json", Digest: cfg.Digest, Size: 2},
		Layers:       []ocispec.Descriptor{{MediaType: "application/vnd.oci.empty.v1+json", Digest: cfg.Digest, Size: 2}},
		Subject:      &ocispec.Descriptor{MediaType: img.MediaType, Digest: img.Manifest.Digest, Size: int64(len(img.Manifest.Data))},
	})
	if err != nil {
		t.Fatal(err)
	}
	referrer := upstreamtest.NewBlob(body)
	public.PushManifest(t, "evil/x", "sig", ocispec.MediaTypeImageManifest, referrer)
	e := newEnv(t, t.TempDir(), spec{name: "harbor.internal", reg: private, ttl: time.Hour}, spec{name: "docker.io", reg: public, ttl: time.Hour})

	pull(t, e, "harbor.internal/proj/app", img, "")
	e.get(t, "/v2/docker.io/evil/x/manifests/sig", referrer.Data, referrer.Digest.String())
	public.Reset()
	wantError(t, e.do(t, http.MethodGet, "/v2/docker.io/evil/x/manifests/"+img.Manifest.Digest.String()), http.StatusNotFound, "MANIFEST_UNKNOWN")
	wantError(t, e.do(t, http.MethodGet, "/v2/docker.io/evil/x/blobs/"+img.Layers[0].Digest.String()), http.StatusNotFound, "BLOB_UNKNOWN")
	// Stored, but not a member: asked of the repository's own upstream, which has neither.
	wantCounts(t, public, map[string]int{"HEAD manifest": 1, "HEAD blob": 1})
}
