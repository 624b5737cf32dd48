package cache

import (
	"encoding/json"
	"slices"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/wharf-registry/wharf/oci"
)

// mediaTypeArtifact is the OCI artifact manifest of image-spec 1.1's
// release candidates, withdrawn since: the one kind that defines "blobs".
const mediaTypeArtifact = "application/vnd.oci.artifact.manifest.v1+json"

// ManifestRefs is what a manifest points at, read by the fields its media
// type defines and no others: what membership, eviction's pins and jobs
// walk. A registry accepts unknown fields and checks only the defined
// ones, so an extra "blobs" in an image manifest is whatever its pusher
// wrote, and membership opens content.
type ManifestRefs struct {
	MediaType string               `json:"mediaType"`
	Config    *ocispec.Descriptor  `json:"config"`
	Layers    []ocispec.Descriptor `json:"layers"`
	Manifests []ocispec.Descriptor `json:"manifests"`
	Blobs     []ocispec.Descriptor `json:"blobs"`
}

// ParseManifest reads the references of a manifest of mediaType (as
// recorded; "" for what the body declares), keeping only the fields that
// type defines: config and layers for image manifests, manifests for
// indexes, blobs for artifact manifests; never a subject, a pointer
// anyone may write into a referrer. An unparseable manifest, or one of
// another type, refers to nothing.
func ParseManifest(body []byte, mediaType string) ManifestRefs {
	raw := decodeManifest(body)
	return raw.only(mediaTypeOf(raw, mediaType))
}

// decodeManifest reads every field any manifest kind defines, whatever
// the body's type: only to tell the type.
func decodeManifest(body []byte) ManifestRefs {
	var m ManifestRefs
	if json.Unmarshal(body, &m) != nil {
		return ManifestRefs{}
	}
	return m
}

// isManifest reports whether body says it is a manifest of this
// generation: OCI's and Docker's schema 2 alike carry schemaVersion 2.
func isManifest(body []byte) bool {
	var v struct {
		SchemaVersion int `json:"schemaVersion"`
	}
	return json.Unmarshal(body, &v) == nil && v.SchemaVersion == 2
}

// only keeps the fields manifests of type mt define.
func (m ManifestRefs) only(mt string) ManifestRefs {
	out := ManifestRefs{MediaType: m.MediaType}
	switch mt {
	case ocispec.MediaTypeImageManifest, oci.MediaTypeDockerManifest:
		out.Config, out.Layers = m.Config, m.Layers
	case ocispec.MediaTypeImageIndex, oci.MediaTypeDockerList:
		out.Manifests = m.Manifests
	case mediaTypeArtifact:
		out.Blobs = m.Blobs
	}
	return out
}

// MaxIndexDepth bounds how deep indexes may nest in one image.
const MaxIndexDepth = 4

// blobs lists the config, layers and blobs of a manifest: what it needs
// besides child manifests and its subject.
func (m ManifestRefs) blobs() []ocispec.Descriptor {
	var out []ocispec.Descriptor
	descs := append(slices.Clone(m.Layers), m.Blobs...)
	if m.Config != nil {
		descs = append(descs, *m.Config)
	}
	for _, d := range descs {
		if d.Digest.Validate() == nil {
			out = append(out, d)
		}
	}
	return out
}

// digests lists the valid digests the manifest contains: its config,
// layers, blobs and child manifests, as its type defines them.
func (m ManifestRefs) digests() []digest.Digest {
	var out []digest.Digest
	for _, d := range append(m.blobs(), m.Manifests...) {
		if d.Digest.Validate() == nil {
			out = append(out, d.Digest)
		}
	}
	return out
}
