package upstreamtest

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strings"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Blob is content with its digest.
type Blob struct {
	Digest digest.Digest
	Data   []byte
}

// NewBlob pairs b with its digest.
func NewBlob(b []byte) Blob { return Blob{Digest: digest.FromBytes(b), Data: b} }

// Image is a pushed single-platform image.
type Image struct {
	Repo, Tag string
	Manifest  Blob
	MediaType string
	Config    Blob
	Layers    []Blob
	Platform  ocispec.Platform
}

// Descriptor describes the image manifest, as an index would list it.
func (img Image) Descriptor() ocispec.Descriptor {
	p := img.Platform
	return ocispec.Descriptor{MediaType: img.MediaType, Digest: img.Manifest.Digest, Size: int64(len(img.Manifest.Data)), Platform: &p}
}

// Blobs returns config and layers.
func (img Image) Blobs() []Blob { return append([]Blob{img.Config}, img.Layers...) }

// Random returns size deterministic, incompressible bytes from seed.
func Random(seed uint64, size int) []byte {
	data := make([]byte, size)
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	for i := 0; i < size; i += 8 {
		v := rng.Uint64()
		for j := 0; j < 8 && i+j < size; j++ {
			data[i+j] = byte(v >> (8 * j))
		}
	}
	return data
}

// Layer returns a gzipped tar holding one file of size random bytes from
// seed, and the digest of the uncompressed tar (its diff ID), so the result
// unpacks in containerd like any real layer.
func Layer(seed uint64, size int) (Blob, digest.Digest) {
	data := Random(seed, size)
	var tarBuf bytes.Buffer
	tw := tar.NewWriter(&tarBuf)
	tw.WriteHeader(&tar.Header{Name: fmt.Sprintf("file-%d", seed), Mode: 0o644, Size: int64(size), Typeflag: tar.TypeReg, Format: tar.FormatPAX})
	tw.Write(data)
	tw.Close()
	var gz bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&gz, gzip.BestSpeed)
	zw.Write(tarBuf.Bytes())
	zw.Close()
	return NewBlob(gz.Bytes()), digest.FromBytes(tarBuf.Bytes())
}

// PushImage builds an OCI image of n layers of layerSize random bytes from
// seed for platform and pushes it to repo, tagged tag (untagged if "").
func (r *Registry) PushImage(t T, repo, tag string, seed uint64, n, layerSize int, platform ocispec.Platform) Image {
	t.Helper()
	var layers []Blob
	var diffIDs []digest.Digest
	for i := range n {
		l, diffID := Layer(seed*1000+uint64(i), layerSize)
		layers = append(layers, l)
		diffIDs = append(diffIDs, diffID)
	}
	return r.PushLayers(t, repo, tag, layers, diffIDs, platform)
}

// PushLayers pushes an OCI image of the given layers, whose uncompressed
// digests are diffIDs, tagged tag (untagged if "").
func (r *Registry) PushLayers(t T, repo, tag string, layers []Blob, diffIDs []digest.Digest, platform ocispec.Platform) Image {
	t.Helper()
	img := Image{Repo: repo, Tag: tag, MediaType: ocispec.MediaTypeImageManifest, Platform: platform, Layers: layers}
	cfg := ocispec.Image{Platform: platform, RootFS: ocispec.RootFS{Type: "layers", DiffIDs: diffIDs}}
	cfgJSON, _ := json.Marshal(cfg)
	img.Config = NewBlob(cfgJSON)
	m := ocispec.Manifest{
		MediaType: ocispec.MediaTypeImageManifest,
		Config:    ocispec.Descriptor{MediaType: ocispec.MediaTypeImageConfig, Digest: img.Config.Digest, Size: int64(len(cfgJSON))},
	}
	m.SchemaVersion = 2
	for _, l := range img.Layers {
		m.Layers = append(m.Layers, ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayerGzip, Digest: l.Digest, Size: int64(len(l.Data))})
	}
	mJSON, _ := json.MarshalIndent(m, "", "   ")
	img.Manifest = NewBlob(mJSON)
	for _, b := range img.Blobs() {
		r.PushBlob(t, repo, b)
	}
	r.PushManifest(t, repo, tag, img.MediaType, img.Manifest)
	return img
}

// Index is a pushed multi-platform image index.
type Index struct {
	Repo, Tag string
	Manifest  Blob
	Images    []Image
}

// PushIndex pushes an OCI index of imgs (already pushed to repo) as tag.
func (r *Registry) PushIndex(t T, repo, tag string, imgs ...Image) Index {
	t.Helper()
	idx := ocispec.Index{MediaType: ocispec.MediaTypeImageIndex}
	idx.SchemaVersion = 2
	for _, img := range imgs {
		idx.Manifests = append(idx.Manifests, img.Descriptor())
	}
	b, _ := json.MarshalIndent(idx, "", "   ")
	blob := NewBlob(b)
	r.PushManifest(t, repo, tag, ocispec.MediaTypeImageIndex, blob)
	return Index{Repo: repo, Tag: tag, Manifest: blob, Images: imgs}
}

// PushBlob uploads b to repo in one PUT.
func (r *Registry) PushBlob(t T, repo string, b Blob) {
	t.Helper()
	resp := r.do(t, http.MethodPost, "/v2/"+repo+"/blobs/uploads/", "", nil)
	loc, err := url.Parse(resp.Header.Get("Location"))
	if err != nil || resp.StatusCode != http.StatusAccepted {
		t.Fatalf("start upload to %s: %d %v", repo, resp.StatusCode, err)
	}
	q := loc.Query()
	q.Set("digest", b.Digest.String())
	loc.RawQuery = q.Encode()
	resp = r.do(t, http.MethodPut, loc.RequestURI(), "application/octet-stream", b.Data)
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("upload %s to %s: %d", b.Digest, repo, resp.StatusCode)
	}
}

// PushManifest puts a manifest under ref (its digest if ref is "").
func (r *Registry) PushManifest(t T, repo, ref, mediaType string, m Blob) {
	t.Helper()
	if ref == "" {
		ref = m.Digest.String()
	}
	resp := r.do(t, http.MethodPut, "/v2/"+repo+"/manifests/"+ref, mediaType, m.Data)
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("put manifest %s:%s: %d", repo, ref, resp.StatusCode)
	}
}

func (r *Registry) do(t T, method, path, contentType string, body []byte) *http.Response {
	t.Helper()
	req, err := http.NewRequest(method, r.URL+path, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	if r.user != "" {
		req.SetBasicAuth(r.user, r.pass)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp
}

// Get fetches path (with the registry's credentials, if any) and returns
// the answer with its body read.
func (r *Registry) Get(t T, method, path string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, r.URL+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Accept", strings.Join([]string{ocispec.MediaTypeImageManifest, ocispec.MediaTypeImageIndex,
		"application/vnd.docker.distribution.manifest.v2+json", "application/vnd.docker.distribution.manifest.list.v2+json"}, ", "))
	if r.user != "" {
		req.SetBasicAuth(r.user, r.pass)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, body
}

// PushArtifact pushes an OCI 1.1 artifact (a signature, an SBOM): one
// payload layer, the empty config, artifactType, and subject if not nil,
// as cosign, notation and oras write them; tagged tag, or untagged if "".
// It returns the manifest and the descriptor a referrers list gives it.
func (r *Registry) PushArtifact(t T, repo, tag, artifactType string, subject *ocispec.Descriptor, payload []byte) (Blob, ocispec.Descriptor) {
	t.Helper()
	empty, layer := NewBlob([]byte("{}")), NewBlob(payload)
	r.PushBlob(t, repo, empty)
	r.PushBlob(t, repo, layer)
	m := ocispec.Manifest{
		MediaType:    ocispec.MediaTypeImageManifest,
		ArtifactType: artifactType,
		Config:       ocispec.Descriptor{MediaType: ocispec.MediaTypeEmptyJSON, Digest: empty.Digest, Size: 2},
		Layers:       []ocispec.Descriptor{{MediaType: artifactType, Digest: layer.Digest, Size: int64(len(payload))}},
		Subject:      subject,
		Annotations:  map[string]string{"org.opencontainers.image.created": "2026-12-01T00:00:00Z"},
	}
	m.SchemaVersion = 2
	b, _ := json.Marshal(m)
	blob := NewBlob(b)
	r.PushManifest(t, repo, tag, ocispec.MediaTypeImageManifest, blob)
	return blob, ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: blob.Digest, Size: int64(len(b)),
		ArtifactType: artifactType, Annotations: m.Annotations}
}

// PushReferrersTag writes the referrers tag schema's index for subject
// (sha256-<hex>, listing entries): what clients keep on a registry
// without the referrers API.
func (r *Registry) PushReferrersTag(t T, repo string, subject digest.Digest, entries ...ocispec.Descriptor) {
	t.Helper()
	idx := ocispec.Index{MediaType: ocispec.MediaTypeImageIndex, Manifests: entries}
	idx.SchemaVersion = 2
	b, _ := json.Marshal(idx)
	r.PushManifest(t, repo, subject.Algorithm().String()+"-"+subject.Encoded(), ocispec.MediaTypeImageIndex, NewBlob(b))
}
