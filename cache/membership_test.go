package cache

import (
	"encoding/json"
	"slices"
	"testing"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/wharf-registry/wharf/oci"
	"github.com/wharf-registry/wharf/storage"
)

// defined is the oracle of FuzzMembership: the digests a manifest's type
// defines as its content, read with the image-spec's own structs for that
// type. A body that declares no type may be an image manifest or an index
// (what older OCI manifests look like): both kinds' fields, never another.
func defined(body []byte, contentType string) map[digest.Digest]bool {
	var head struct {
		MediaType string `json:"mediaType"`
	}
	_ = json.Unmarshal(body, &head)
	mt := head.MediaType
	if mt == "" && oci.IsManifestType(contentType) {
		mt = contentType
	}
	out := map[digest.Digest]bool{}
	image := func() {
		var m ocispec.Manifest
		if json.Unmarshal(body, &m) == nil {
			out[m.Config.Digest] = true
			for _, l := range m.Layers {
				out[l.Digest] = true
			}
		}
	}
	index := func() {
		var idx ocispec.Index
		if json.Unmarshal(body, &idx) == nil {
			for _, m := range idx.Manifests {
				out[m.Digest] = true
			}
		}
	}
	switch mt {
	case ocispec.MediaTypeImageManifest, oci.MediaTypeDockerManifest:
		image()
	case ocispec.MediaTypeImageIndex, oci.MediaTypeDockerList:
		index()
	case mediaTypeArtifact:
		var a struct {
			Blobs []ocispec.Descriptor `json:"blobs"`
		}
		if json.Unmarshal(body, &a) == nil {
			for _, b := range a.Blobs {
				out[b.Digest] = true
			}
		}
	case "":
		image()
		index()
	}
	return out
}

// No digest outside the fields a manifest's type defines ever becomes a
// member of its repository: not its subject, not an unknown field, not
// "blobs" in an image manifest, whatever the body and its Content-Type.
func FuzzMembership(f *testing.F) {
	d := func(c byte) string { return `"sha256:` + string(slices.Repeat([]byte{c}, 64)) + `"` }
	desc := func(c byte) string { return `{"mediaType":"x","size":1,"digest":` + d(c) + `}` }
	for _, seed := range []struct{ body, ct string }{
		{`{"schemaVersion":2,"mediaType":"` + ocispec.MediaTypeImageManifest + `","config":` + desc('a') + `,"layers":[` + desc('b') + `],"blobs":[` + desc('c') + `],"manifests":[` + desc('d') + `],"subject":` + desc('e') + `}`, ""},
		{`{"schemaVersion":2,"mediaType":"` + ocispec.MediaTypeImageIndex + `","manifests":[` + desc('a') + `],"layers":[` + desc('b') + `],"config":` + desc('c') + `,"blobs":[` + desc('f') + `]}`, ocispec.MediaTypeImageIndex},
		{`{"schemaVersion":2,"config":` + desc('a') + `,"layers":[` + desc('b') + `],"blobs":[` + desc('c') + `]}`, ""},
		{`{"schemaVersion":2,"config":` + desc('a') + `,"Blobs":[` + desc('c') + `]}`, oci.MediaTypeDockerManifest},
		{`{"schemaVersion":2,"mediaType":"` + mediaTypeArtifact + `","blobs":[` + desc('c') + `],"layers":[` + desc('b') + `],"subject":` + desc('e') + `}`, ""},
		{`{"mediaType":"application/vnd.example","blobs":[` + desc('c') + `],"layers":[` + desc('b') + `]}`, ocispec.MediaTypeImageManifest},
		{`{"mediaType":"` + ocispec.MediaTypeImageIndex + `","mediaType":"` + ocispec.MediaTypeImageManifest + `","manifests":[` + desc('a') + `],"layers":[` + desc('b') + `]}`, ""},
		{`not json`, ocispec.MediaTypeImageManifest},
	} {
		f.Add([]byte(seed.body), seed.ct)
	}
	f.Fuzz(func(t *testing.T, body []byte, contentType string) {
		ok := defined(body, contentType)
		mt := mediaTypeOf(decodeManifest(body), contentType)
		for _, got := range ParseManifest(body, contentType).digests() {
			if !ok[got] {
				t.Fatalf("%s (%q, read as %q) made %s a member, which its type does not define", body, contentType, mt, got)
			}
		}
	})
}

// Which sources let an upstream's word open a blob: its own, a public
// upstream's, none on record; never only another private upstream's, nor
// an unknown origin while any upstream is private.
func TestVouched(t *testing.T) {
	ups := map[string]Upstream{"pub": {Name: "pub"}, "mirror": {Name: "mirror"}, "a": {Name: "a", Private: true}, "b": {Name: "b", Private: true}}
	c := &Cache{upstreams: ups, private: true}
	for _, tc := range []struct {
		u       string
		sources []string
		want    bool
	}{
		{"pub", nil, true},
		{"a", []string{"a"}, true},
		{"a", []string{"pub"}, true},
		{"mirror", []string{"a", "pub"}, true},
		{"pub", []string{"a"}, false},
		{"b", []string{"a"}, false},
		{"pub", []string{"gone"}, false},
		{"pub", []string{storage.Unsourced}, false},
	} {
		if got := c.vouched(ups[tc.u], tc.sources); got != tc.want {
			t.Errorf("%s vouches for %v: %v, want %v", tc.u, tc.sources, got, tc.want)
		}
	}
	if !(&Cache{upstreams: ups}).vouched(ups["pub"], []string{storage.Unsourced}) {
		t.Error("without a private upstream, a blob of unknown origin is public")
	}
}
