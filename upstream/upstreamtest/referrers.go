package upstreamtest

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"sync"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// WithReferrersAPI gives the registry the OCI 1.1 referrers API that
// distribution lacks: a manifest pushed with a subject is listed by
// GET /v2/<name>/referrers/<subject>, as registries that have the API do.
func WithReferrersAPI() Option {
	return func(o *options) { o.referrers = true }
}

// referrersAPI indexes pushed manifests by subject and answers the
// referrers endpoint; everything else goes to distribution.
type referrersAPI struct {
	next http.Handler
	mu   sync.Mutex
	by   map[string][]ocispec.Descriptor // "<name>@<subject>"
}

func (a *referrersAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rest, _ := strings.CutPrefix(r.URL.Path, "/v2/")
	if i := strings.LastIndex(rest, "/referrers/"); i > 0 && r.Method == http.MethodGet {
		a.mu.Lock()
		list := append([]ocispec.Descriptor{}, a.by[rest[:i]+"@"+rest[i+len("/referrers/"):]]...)
		a.mu.Unlock()
		idx := ocispec.Index{MediaType: ocispec.MediaTypeImageIndex, Manifests: list}
		idx.SchemaVersion = 2
		body, _ := json.Marshal(idx)
		w.Header().Set("Content-Type", ocispec.MediaTypeImageIndex)
		w.Write(body)
		return
	}
	i := strings.LastIndex(rest, "/manifests/")
	if r.Method != http.MethodPut || i <= 0 {
		a.next.ServeHTTP(w, r)
		return
	}
	body, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	r.Body = io.NopCloser(bytes.NewReader(body))
	rec := &statusRecorder{ResponseWriter: w}
	a.next.ServeHTTP(rec, r)
	var m struct {
		MediaType    string              `json:"mediaType"`
		ArtifactType string              `json:"artifactType"`
		Config       ocispec.Descriptor  `json:"config"`
		Subject      *ocispec.Descriptor `json:"subject"`
		Annotations  map[string]string   `json:"annotations"`
	}
	if rec.status != http.StatusCreated || json.Unmarshal(body, &m) != nil || m.Subject == nil {
		return
	}
	d := ocispec.Descriptor{MediaType: m.MediaType, Digest: digest.FromBytes(body), Size: int64(len(body)),
		ArtifactType: m.ArtifactType, Annotations: m.Annotations}
	if d.ArtifactType == "" {
		d.ArtifactType = m.Config.MediaType
	}
	key := rest[:i] + "@" + m.Subject.Digest.String()
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, have := range a.by[key] {
		if have.Digest == d.Digest {
			return
		}
	}
	a.by[key] = append(a.by[key], d)
}

type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (s *statusRecorder) WriteHeader(code int) {
	s.status = code
	s.ResponseWriter.WriteHeader(code)
}
