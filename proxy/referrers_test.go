package proxy_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/wharf-registry/wharf/cache"
	"github.com/wharf-registry/wharf/replicate"
	"github.com/wharf-registry/wharf/upstream/upstreamtest"
)

// referrersOf reads what refers to subject in repo of reg: its referrers
// API, or else the tag schema's index.
func referrersOf(t *testing.T, reg *upstreamtest.Registry, repo string, subject digest.Digest) []string {
	t.Helper()
	resp, body := reg.Get(t, "GET", "/v2/"+repo+"/referrers/"+subject.String())
	if resp.StatusCode == http.StatusNotFound {
		resp, body = reg.Get(t, "GET", "/v2/"+repo+"/manifests/sha256-"+subject.Encoded())
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("referrers of %s in %s: %d", subject, repo, resp.StatusCode)
	}
	var idx ocispec.Index
	if err := json.Unmarshal(body, &idx); err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, m := range idx.Manifests {
		out = append(out, m.Digest.String()+" "+m.ArtifactType)
	}
	slices.Sort(out)
	return out
}

// A signature and an SBOM (OCI artifacts with a subject) and a cosign-style
// tag travel with their image, from a source with or without the referrers
// API to a target with or without it; the target's referrers answer lists
// the same digests as the source's, and the digests are unchanged.
func TestReferrersTravelWithTheirImage(t *testing.T) {
	t.Parallel()
	for _, c := range []struct{ srcAPI, dstAPI bool }{{false, false}, {true, false}, {false, true}, {true, true}} {
		t.Run(fmt.Sprintf("source API %v, target API %v", c.srcAPI, c.dstAPI), func(t *testing.T) {
			opts := func(api bool, more ...upstreamtest.Option) []upstreamtest.Option {
				if api {
					more = append(more, upstreamtest.WithReferrersAPI())
				}
				return more
			}
			src := upstreamtest.New(t, opts(c.srcAPI)...)
			dst := upstreamtest.New(t, opts(c.dstAPI, upstreamtest.WithTokenAuth("robot", "s3cret"))...)
			img := src.PushImage(t, "proj/app", "1.0", 81, 2, 8<<10, amd64)
			subject := img.Descriptor()
			sig, sigDesc := src.PushArtifact(t, "proj/app", "", "application/vnd.example.signature.v1+json", &subject, []byte("signed"))
			sbom, sbomDesc := src.PushArtifact(t, "proj/app", "", "application/spdx+json", &subject, []byte(`{"spdxVersion":"SPDX-2.3"}`))
			if !c.srcAPI {
				src.PushReferrersTag(t, "proj/app", img.Manifest.Digest, sigDesc, sbomDesc)
			}
			cosign, _ := src.PushArtifact(t, "proj/app", "sha256-"+img.Manifest.Digest.Encoded()+".sig", "application/vnd.dev.cosign.simplesigning.v1+json", nil, []byte("cosign"))
			want := referrersOf(t, src, "proj/app", img.Manifest.Digest)
			if len(want) != 2 {
				t.Fatalf("source referrers %q", want)
			}

			p := newPromotionOn(t, src, dst, t.TempDir(), cache.Config{}, replicate.Config{}, "", 0)
			src.Reset()
			job := p.wait(t, p.submit(t, "application/json", "", `{"images": ["proj/app:1.0"], "push_to": "harbor-b", "rename": [{"from": "harbor-a.example.com/proj/", "to": "proj-b/"}]}`))
			if job.State != replicate.StateDone || job.Images[0].Referrers != 3 {
				t.Fatalf("job %s, %d referrers: %+v", job.State, job.Images[0].Referrers, job.Images[0])
			}
			if dst.Count("GET", "token") == 0 {
				t.Fatal("the target's token service was never asked")
			}
			onTarget(t, dst, "proj-b/app", "1.0", img.Manifest)
			onTarget(t, dst, "proj-b/app", sig.Digest.String(), sig)
			onTarget(t, dst, "proj-b/app", sbom.Digest.String(), sbom)
			onTarget(t, dst, "proj-b/app", "sha256-"+img.Manifest.Digest.Encoded()+".sig", cosign)
			if got := referrersOf(t, dst, "proj-b/app", img.Manifest.Digest); !slices.Equal(got, want) {
				t.Fatalf("target referrers %q, want the source's %q", got, want)
			}

			// Pulls see the same through the cache, and a referrer read once
			// is served from the store.
			src.Reset()
			for range 2 {
				p.get(t, "/v2/proj/app/manifests/"+sig.Digest.String(), sig.Data, sig.Digest.String())
				p.get(t, "/v2/proj/app/manifests/sha256-"+img.Manifest.Digest.Encoded()+".sig", cosign.Data, cosign.Digest.String())
			}
			if n := src.Count("GET", "manifest"); n != 0 {
				t.Fatalf("referrers the job cached were fetched again %d times", n)
			}
			if c.srcAPI {
				r := p.do(t, "GET", "/v2/proj/app/referrers/"+img.Manifest.Digest.String())
				if r.status != 200 || !json.Valid(r.body) {
					t.Fatalf("referrers through Wharf: %d %s", r.status, r.body)
				}
			}
		})
	}
}

// referrers: false leaves them behind.
func TestReferrersCanStayBehind(t *testing.T) {
	t.Parallel()
	src := upstreamtest.New(t, upstreamtest.WithReferrersAPI())
	dst := upstreamtest.New(t, upstreamtest.WithBasicAuth("robot", "s3cret"))
	img := src.PushImage(t, "proj/app", "1.0", 82, 1, 4<<10, amd64)
	subject := img.Descriptor()
	sig, _ := src.PushArtifact(t, "proj/app", "", "application/vnd.example.signature.v1+json", &subject, []byte("signed"))
	p := newPromotionOn(t, src, dst, t.TempDir(), cache.Config{}, replicate.Config{}, "", 0)
	src.Reset()
	job := p.wait(t, p.submit(t, "application/json", "", `{"images": ["proj/app:1.0"], "push_to": "harbor-b", "referrers": false}`))
	if job.State != replicate.StateDone || job.Images[0].Referrers != 0 {
		t.Fatalf("job %s, %d referrers", job.State, job.Images[0].Referrers)
	}
	if resp, _ := dst.Get(t, "GET", "/v2/proj/app/manifests/"+sig.Digest.String()); resp.StatusCode != 404 {
		t.Fatalf("the signature was copied: %d", resp.StatusCode)
	}
	wantCounts(t, src, map[string]int{"GET manifest": 1, "GET blob": 2})
}

// index: filter pushes an index listing only the copied platforms, which
// a target checking index completeness takes; the job gives its new digest.
func TestPrefetchFilteredIndex(t *testing.T) {
	t.Parallel()
	p := newPromotion(t, t.TempDir(), cache.Config{}, replicate.Config{}, "", 0)
	p.seed(t)
	job := p.wait(t, p.submit(t, "application/json", "", `{"images": ["proj/multi:v1"], "platforms": ["linux/amd64"], "push_to": "harbor-b", "index": "filter"}`))
	img := job.Images[0]
	if job.State != replicate.StateDone || img.FilteredDigest == "" || img.FilteredDigest == p.multi.Manifest.Digest ||
		!strings.Contains(img.Note, "new digest, "+img.FilteredDigest.String()) {
		t.Fatalf("job %s: %+v", job.State, img)
	}
	resp, body := p.dst.Get(t, "GET", "/v2/"+img.TargetRepo+"/manifests/v1")
	var idx ocispec.Index
	if resp.StatusCode != 200 || json.Unmarshal(body, &idx) != nil || digest.FromBytes(body) != img.FilteredDigest {
		t.Fatalf("target index: %d, digest %s, want %s", resp.StatusCode, digest.FromBytes(body), img.FilteredDigest)
	}
	if len(idx.Manifests) != 1 || idx.Manifests[0].Digest != p.multi.Images[0].Manifest.Digest || idx.Manifests[0].Platform.Architecture != "amd64" {
		t.Fatalf("filtered index lists %+v", idx.Manifests)
	}
	wantError(t, p.send(t, "POST", "/api/v1/prefetch", "application/json", `{"images": ["proj/multi:v1"], "index": "sorted"}`), 400, "INVALID")
}
