package replicate

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/wharf-registry/wharf/cache"
	"github.com/wharf-registry/wharf/storage"
)

// memRegistry is a registry in memory, both a cache.Source and a Target:
// what replicate's unit tests copy from and push to, with no HTTP. It
// records every call and can be told to fail some.
type memRegistry struct {
	mu        sync.Mutex
	blobs     map[digest.Digest][]byte
	types     map[digest.Digest]string          // manifests' media types
	linked    map[string]map[digest.Digest]bool // repo → what it holds
	refs      map[string]map[string]digest.Digest
	calls     []string
	failNext  map[string]int // an op ("PushBlob") → how many of its next calls fail with 503
	failFinal map[string]int // → with a final status (failFinal's value)
}

func newMemRegistry() *memRegistry {
	return &memRegistry{blobs: map[digest.Digest][]byte{}, types: map[digest.Digest]string{}, linked: map[string]map[digest.Digest]bool{},
		refs: map[string]map[string]digest.Digest{}, failNext: map[string]int{}, failFinal: map[string]int{}}
}

// call records op and says whether it must fail.
func (m *memRegistry) call(op string, args ...any) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.calls = append(m.calls, strings.TrimSpace(op+" "+fmt.Sprintln(args...)))
	if s := m.failFinal[op]; s != 0 {
		return &statusErr{status: s}
	}
	if m.failNext[op] > 0 {
		m.failNext[op]--
		return &statusErr{status: http.StatusServiceUnavailable}
	}
	return nil
}

// count is how many calls of op were made.
func (m *memRegistry) count(op string) int {
	m.mu.Lock()
	defer m.mu.Unlock()
	n := 0
	for _, c := range m.calls {
		if c == op || strings.HasPrefix(c, op+" ") {
			n++
		}
	}
	return n
}

func (m *memRegistry) put(repo string, b []byte) digest.Digest {
	d := digest.FromBytes(b)
	m.mu.Lock()
	defer m.mu.Unlock()
	m.blobs[d] = b
	if m.linked[repo] == nil {
		m.linked[repo] = map[digest.Digest]bool{}
	}
	m.linked[repo][d] = true
	return d
}

func (m *memRegistry) tag(repo, ref string, d digest.Digest, mediaType string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.refs[repo] == nil {
		m.refs[repo] = map[string]digest.Digest{}
	}
	m.refs[repo][ref], m.refs[repo][d.String()], m.types[d] = d, d, mediaType
}

// image pushes an image of n layers to repo:tag and returns its manifest.
func (m *memRegistry) image(repo, tag string, seed, n int) ocispec.Descriptor {
	cfg := []byte(fmt.Sprintf(`{"architecture":"amd64","os":"linux","seed":%d}`, seed))
	man := ocispec.Manifest{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageManifest,
		Config: ocispec.Descriptor{MediaType: ocispec.MediaTypeImageConfig, Digest: m.put(repo, cfg), Size: int64(len(cfg))}}
	for i := range n {
		l := bytes.Repeat([]byte{byte(seed), byte(i)}, 1000+i)
		man.Layers = append(man.Layers, ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayer, Digest: m.put(repo, l), Size: int64(len(l))})
	}
	body, _ := json.Marshal(man)
	d := m.put(repo, body)
	m.tag(repo, tag, d, ocispec.MediaTypeImageManifest)
	return ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: d, Size: int64(len(body)), Platform: &ocispec.Platform{OS: "linux", Architecture: fmt.Sprint("arch", seed)}}
}

// index pushes an index of children to repo:tag.
func (m *memRegistry) index(repo, tag string, children ...ocispec.Descriptor) digest.Digest {
	idx := ocispec.Index{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageIndex, Manifests: children}
	body, _ := json.Marshal(idx)
	d := m.put(repo, body)
	m.tag(repo, tag, d, ocispec.MediaTypeImageIndex)
	return d
}

func (m *memRegistry) resolve(repo, ref string) (digest.Digest, []byte, string, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	d, ok := m.refs[repo][ref]
	return d, m.blobs[d], m.types[d], ok
}

func (m *memRegistry) holds(repo string, d digest.Digest) ([]byte, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.blobs[d], m.linked[repo][d]
}

// Manifest serves cache.Source and Target alike.
func (m *memRegistry) Manifest(_ context.Context, repo, ref string, head bool) (ocispec.Descriptor, io.ReadCloser, error) {
	if err := m.call("Manifest", repo, ref, head); err != nil {
		return ocispec.Descriptor{}, nil, err
	}
	d, body, mt, ok := m.resolve(repo, ref)
	if !ok {
		return ocispec.Descriptor{}, nil, &statusErr{status: http.StatusNotFound}
	}
	desc := ocispec.Descriptor{MediaType: mt, Digest: d, Size: int64(len(body))}
	if head {
		return desc, nil, nil
	}
	return desc, io.NopCloser(bytes.NewReader(body)), nil
}

func (m *memRegistry) Blob(_ context.Context, repo string, d digest.Digest, offset int64) (io.ReadCloser, int64, error) {
	if err := m.call("Blob", repo, d); err != nil {
		return nil, 0, err
	}
	b, ok := m.holds(repo, d)
	if !ok {
		return nil, 0, &statusErr{status: http.StatusNotFound}
	}
	return io.NopCloser(bytes.NewReader(b[offset:])), int64(len(b)) - offset, nil
}

func (m *memRegistry) StatBlob(_ context.Context, repo string, d digest.Digest) (ocispec.Descriptor, error) {
	if err := m.call("StatBlob", repo, d); err != nil {
		return ocispec.Descriptor{}, err
	}
	b, ok := m.holds(repo, d)
	if !ok {
		return ocispec.Descriptor{}, &statusErr{status: http.StatusNotFound}
	}
	return ocispec.Descriptor{Digest: d, Size: int64(len(b))}, nil
}

func (m *memRegistry) Tags(_ context.Context, repo string) ([]string, error) {
	if err := m.call("Tags", repo); err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	var tags []string
	for ref := range m.refs[repo] {
		if !strings.Contains(ref, ":") {
			tags = append(tags, ref)
		}
	}
	slices.Sort(tags)
	return tags, nil
}

// Referrers: a registry without the referrers API.
func (m *memRegistry) Referrers(_ context.Context, repo string, d digest.Digest, _ string) (string, []byte, error) {
	m.call("Referrers", repo, d)
	return "", nil, &statusErr{status: http.StatusNotFound}
}

func (m *memRegistry) PushBlob(_ context.Context, repo string, desc ocispec.Descriptor, from string, open func(int64) (io.ReadCloser, error)) (bool, error) {
	if err := m.call("PushBlob", repo, desc.Digest, from); err != nil {
		return false, err
	}
	if _, ok := m.holds(from, desc.Digest); from != "" && ok {
		m.link(repo, desc.Digest)
		return true, nil
	}
	rc, err := open(0)
	if err != nil {
		return false, err
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		return false, err
	}
	if digest.FromBytes(b) != desc.Digest {
		return false, &statusErr{status: http.StatusBadRequest}
	}
	m.put(repo, b)
	return false, nil
}

func (m *memRegistry) link(repo string, d digest.Digest) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.linked[repo] == nil {
		m.linked[repo] = map[digest.Digest]bool{}
	}
	m.linked[repo][d] = true
}

func (m *memRegistry) PushManifest(_ context.Context, repo, ref, mediaType string, body []byte) error {
	if err := m.call("PushManifest", repo, ref); err != nil {
		return err
	}
	m.tag(repo, ref, m.put(repo, body), mediaType)
	return nil
}

// jobsOver is a job runner over src (upstream "src") pushing to dst
// (target "b"), on a store of its own.
func jobsOver(t *testing.T, src, dst *memRegistry) *Jobs {
	t.Helper()
	store, err := storage.Open(t.TempDir(), storage.Options{})
	if err != nil {
		t.Fatal(err)
	}
	c, err := cache.New(store, cache.Config{Upstreams: []cache.Upstream{{Name: "src", Source: src, TagTTL: time.Hour}}, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	jobs, err := New(c, store, Config{Targets: map[string]Target{"b": dst}, RetryBackoff: time.Millisecond, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		jobs.Close()
		c.Close(context.Background())
		store.Close()
	})
	return jobs
}

// runJob submits images of repo (each "tag" or "tag->target repo") and
// returns the job once it has ended, with its images.
func runJob(t *testing.T, jobs *Jobs, spec JobSpec) (Job, []Image) {
	t.Helper()
	job, err := jobs.Submit(spec)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	if job, err = jobs.Wait(ctx, job.ID); err != nil {
		t.Fatal(err)
	}
	images, _, err := jobs.Images(job.ID, nil, -1, MaxImagesPage)
	if err != nil {
		t.Fatal(err)
	}
	return job, images
}
