package proxy_test

import (
	"encoding/json"
	"net/http"
	"testing"
	"time"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/wharf-registry/wharf/auth"
	"github.com/wharf-registry/wharf/upstream/upstreamtest"
)

// isolation is a Wharf with a private upstream (harbor.internal, which
// Wharf logs in to) and a public one (docker.io, open to anyone); alice
// may pull harbor.internal/team-a/*, bob harbor.internal/team-b/*.
type isolation struct {
	*env
	pub, priv *upstreamtest.Registry
	secret    upstreamtest.Image // harbor.internal/team-b/secret:1.0, cached by bob's pull
}

func newIsolation(t *testing.T, pubOpts ...upstreamtest.Option) *isolation {
	t.Helper()
	s := &isolation{pub: upstreamtest.New(t, pubOpts...), priv: upstreamtest.New(t, upstreamtest.WithBasicAuth("wharf", "wharf-pw"))}
	s.secret = s.priv.PushImage(t, "team-b/secret", "1.0", 61, 2, 4<<10, amd64)
	s.env = newEnvAccess(t, auth.Config{
		Htpasswd:  htpasswd(t, "alice", "bob"),
		Anonymous: []string{"docker.io/*"},
		Rules: []auth.Rule{
			{Users: []string{"alice"}, Pull: []string{"harbor.internal/team-a/*"}},
			{Users: []string{"bob"}, Pull: []string{"harbor.internal/team-b/*"}},
		},
	}, spec{name: "docker.io", reg: s.pub, ttl: time.Hour},
		spec{name: "harbor.internal", reg: s.priv, ttl: time.Hour, user: "wharf", password: "wharf-pw"})
	for _, b := range append(s.secret.Blobs(), s.secret.Manifest) {
		r := s.do(t, http.MethodGet, "/v2/harbor.internal/team-b/secret/"+kindOf(b, s.secret)+"/"+b.Digest.String(), "Authorization", basic("bob", "bob-pw"))
		if r.status != http.StatusOK {
			t.Fatalf("bob's pull of %s: %d %s", b.Digest, r.status, r.body)
		}
	}
	return s
}

func kindOf(b upstreamtest.Blob, img upstreamtest.Image) string {
	if b.Digest == img.Manifest.Digest {
		return "manifests"
	}
	return "blobs"
}

// craft pushes to repo of reg an ordinary image manifest of its own
// config and layer, with extra fields naming digests it does not hold:
// distribution keeps the unknown fields, and a client of Wharf's must not
// gain anything by them.
func craft(t *testing.T, reg *upstreamtest.Registry, repo string, extra map[string]any) upstreamtest.Blob {
	t.Helper()
	cfg := upstreamtest.NewBlob([]byte(`{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}`))
	layer := upstreamtest.NewBlob([]byte("attacker's own layer"))
	reg.PushBlob(t, repo, cfg)
	reg.PushBlob(t, repo, layer)
	m := map[string]any{
		"schemaVersion": 2,
		"mediaType":     ocispec.MediaTypeImageManifest,
		"config":        ocispec.Descriptor{MediaType: ocispec.MediaTypeImageConfig, Digest: cfg.Digest, Size: int64(len(cfg.Data))},
		"layers":        []ocispec.Descriptor{{MediaType: ocispec.MediaTypeImageLayer, Digest: layer.Digest, Size: int64(len(layer.Data))}},
	}
	for k, v := range extra {
		m[k] = v
	}
	body, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	b := upstreamtest.NewBlob(body)
	reg.PushManifest(t, repo, "evil", ocispec.MediaTypeImageManifest, b)
	return b
}

// descs describes every part of img, the manifest included.
func descs(img upstreamtest.Image) []ocispec.Descriptor {
	out := []ocispec.Descriptor{img.Descriptor()}
	for _, b := range img.Blobs() {
		out = append(out, ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayer, Digest: b.Digest, Size: int64(len(b.Data))})
	}
	return out
}

// wantRefused asserts that none of img's parts can be read under name by
// who (an Authorization value, "" for anonymous): GET, HEAD and Range.
func wantRefused(t *testing.T, e *env, name, who string, img upstreamtest.Image) {
	t.Helper()
	for _, b := range append(img.Blobs(), img.Manifest) {
		k := kindOf(b, img)
		code := map[string]string{"blobs": "BLOB_UNKNOWN", "manifests": "MANIFEST_UNKNOWN"}[k]
		path := "/v2/" + name + "/" + k + "/" + b.Digest.String()
		var hdr []string
		if who != "" {
			hdr = []string{"Authorization", who}
		}
		wantError(t, e.do(t, http.MethodGet, path, hdr...), http.StatusNotFound, code)
		wantError(t, e.do(t, http.MethodGet, path, append(hdr, "Range", "bytes=0-9")...), http.StatusNotFound, code)
		if r := e.do(t, http.MethodHead, path, hdr...); r.status != http.StatusNotFound {
			t.Fatalf("HEAD %s: %d, want 404", path, r.status)
		}
	}
}

// Attack 1: a pusher to a public repository lists private digests in a
// field an image manifest does not define. Wharf must not take them as
// members of the attacker's repository.
func TestPusherCannotUnlockPrivateContent(t *testing.T) {
	s := newIsolation(t)
	evil := craft(t, s.pub, "evil/x", map[string]any{"blobs": descs(s.secret)})
	s.get(t, "/v2/docker.io/evil/x/manifests/evil", evil.Data, evil.Digest.String())
	wantRefused(t, s.env, "docker.io/evil/x", "", s.secret)
}

// Attack 1 within one upstream: alice may push to team-a and pull it; a
// manifest there naming team-b's digests must not open them to her.
func TestTeamPusherCannotReadAnotherTeam(t *testing.T) {
	s := newIsolation(t)
	alice := basic("alice", "alice-pw")
	evil := craft(t, s.priv, "team-a/app", map[string]any{"blobs": descs(s.secret)})
	r := s.do(t, http.MethodGet, "/v2/harbor.internal/team-a/app/manifests/evil", "Authorization", alice)
	if r.status != http.StatusOK || string(r.body) != string(evil.Data) {
		t.Fatalf("alice's own manifest: %d %s", r.status, r.body)
	}
	wantRefused(t, s.env, "harbor.internal/team-a/app", alice, s.secret)
}
