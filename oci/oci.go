// Package oci holds the facts of the OCI distribution protocol that
// Wharf's packages share, so each is stated once: the manifest media types
// a pull asks for, the largest manifest clients take, and the HTTP methods
// the request metrics name. It imports nothing of Wharf's.
package oci

import (
	"net/http"
	"slices"
	"strings"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// MaxManifestSize is the largest manifest (or referrers list) Wharf reads,
// stores or serves: containerd and docker reject anything larger.
const MaxManifestSize = 4 << 20

// Docker's manifest media types, beside OCI's in image-spec.
const (
	MediaTypeDockerManifest = "application/vnd.docker.distribution.manifest.v2+json"
	MediaTypeDockerList     = "application/vnd.docker.distribution.manifest.list.v2+json"
)

// manifestTypes are the four a pull asks for, and the only ones a
// Content-Type is believed for.
var manifestTypes = []string{ocispec.MediaTypeImageManifest, ocispec.MediaTypeImageIndex, MediaTypeDockerManifest, MediaTypeDockerList}

// IsManifestType reports whether mt is one of the four manifest media
// types a pull asks for.
func IsManifestType(mt string) bool { return slices.Contains(manifestTypes, mt) }

// Accept is the Accept header of a manifest request: every type Wharf
// stores, so upstream answers with its native representation and the
// digest never changes.
var Accept = strings.Join(manifestTypes, ", ")

// MethodLabel keeps a metric's method label to a fixed set: a client
// chooses the method, and each new value would be a new series.
func MethodLabel(m string) string {
	switch m {
	case http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete, http.MethodOptions:
		return m
	}
	return "other"
}
