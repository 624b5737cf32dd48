//go:build e2e

package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/wharf-registry/wharf/replicate"
	"github.com/wharf-registry/wharf/upstream/upstreamtest"
)

// cutter forwards TCP connections to a registry, and can cut them all and
// refuse new ones for a while: the registry's host down, then back on the
// same address.
type cutter struct {
	addr, to string
	mu       sync.Mutex
	ln       net.Listener
	conns    map[net.Conn]bool
}

func newCutter(t *testing.T, to string) *cutter {
	c := &cutter{to: to, conns: map[net.Conn]bool{}}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c.addr = ln.Addr().String()
	c.serve(ln)
	t.Cleanup(c.down)
	return c
}

func (c *cutter) serve(ln net.Listener) {
	c.mu.Lock()
	c.ln = ln
	c.mu.Unlock()
	go func() {
		for {
			in, err := ln.Accept()
			if err != nil {
				return
			}
			out, err := net.Dial("tcp", c.to)
			if err != nil {
				in.Close()
				continue
			}
			c.mu.Lock()
			c.conns[in], c.conns[out] = true, true
			c.mu.Unlock()
			go func() { io.Copy(out, in); out.Close() }()
			go func() { io.Copy(in, out); in.Close() }()
		}
	}()
}

// down refuses new connections and cuts those open.
func (c *cutter) down() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ln != nil {
		c.ln.Close()
		c.ln = nil
	}
	for conn := range c.conns {
		conn.Close()
	}
	clear(c.conns)
}

// up listens on the same address again.
func (c *cutter) up(t *testing.T) {
	ln, err := net.Listen("tcp", c.addr)
	if err != nil {
		t.Fatalf("the target's address is not free again: %v", err)
	}
	c.serve(ln)
}

// A target down for 25 s in the middle of a job (its connections cut,
// new ones refused) fails no image: the pushes wait for it. An image the
// target refuses for good fails; once the right is granted, wharf jobs
// --retry runs exactly that image again.
func TestTargetOutageAndRetry(t *testing.T) {
	t.Parallel()
	src := upstreamtest.New(t)
	var imgs []upstreamtest.Image
	for i := range 3 {
		imgs = append(imgs, src.PushImage(t, fmt.Sprint("proj/app", i), "1.0", uint64(120+i), 2, 256<<10, amd64))
	}
	dst := upstreamtest.New(t, upstreamtest.WithBasicAuth("robot$push", "s3cret"))
	link := newCutter(t, dst.Host())
	cfg, token := promoteConfig(t, src, dst)
	cfg = strings.Replace(cfg, dst.URL, "http://"+link.addr, 1) // the target through the link that goes down
	server := "http://" + startWharf(t, cfg).addr

	// The outage starts when the first blob upload reaches the target.
	reached := make(chan struct{})
	var once sync.Once
	dst.SetHook(func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method == http.MethodPost && strings.Contains(r.URL.Path, "/blobs/uploads") {
			once.Do(func() { close(reached) })
		}
		return false
	})
	var refs []string
	for i := range imgs {
		refs = append(refs, fmt.Sprintf("harbor-a.example.com/proj/app%d:1.0", i))
	}
	out, stderr, err := wharf(t, append([]string{"prefetch", "--server", server, "--token-file", token, "--push-to", "harbor-b"}, refs...)...)
	if err != nil {
		t.Fatalf("prefetch: %v %s", err, stderr)
	}
	id := strings.TrimSpace(out)
	<-reached
	link.down()
	time.Sleep(25 * time.Second) // the outage itself, not a synchronisation
	link.up(t)
	dst.SetHook(nil)
	var job replicate.Job
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, server+"/api/v1/jobs/"+id+"?wait=5m", nil)
	req.Header.Set("Authorization", "Bearer e2e-token-0123456789")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	json.NewDecoder(resp.Body).Decode(&job)
	resp.Body.Close()
	if job.State != replicate.StateDone || job.Done != len(imgs) {
		t.Fatalf("the job across a 25 s outage of the target: %s, %d of %d done", job.State, job.Done, len(imgs))
	}
	for i, img := range imgs {
		if resp, _ := dst.Get(t, http.MethodGet, fmt.Sprintf("/v2/proj/app%d/manifests/1.0", i)); resp.StatusCode != http.StatusOK ||
			resp.Header.Get("Docker-Content-Digest") != img.Manifest.Digest.String() {
			t.Fatalf("proj/app%d on the target: %d", i, resp.StatusCode)
		}
	}

	// Refused for good (no push right on one repository), then retried.
	more := src.PushImage(t, "proj/denied", "1.0", 130, 1, 16<<10, amd64)
	dst.SetHook(func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method == http.MethodPut && strings.HasSuffix(r.URL.Path, "/proj/denied/manifests/1.0") {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusForbidden)
			io.WriteString(w, `{"errors":[{"code":"DENIED","message":"requested access to the resource is denied"}]}`)
			return true
		}
		return false
	})
	_, stderr, err = wharf(t, "prefetch", "--server", server, "--token-file", token, "--push-to", "harbor-b", "--wait", refs[1], "harbor-a.example.com/proj/denied:1.0")
	if err == nil || !strings.Contains(stderr, "may not push to proj/denied") || !strings.Contains(stderr, "1 failed") {
		t.Fatalf("a refusal: %v\n%s", err, stderr)
	}
	jobsOut, _, err := wharf(t, "jobs", "--server", server, "--token-file", token, "--output", "json")
	var list struct{ Jobs []replicate.Job }
	if err != nil || json.Unmarshal([]byte(jobsOut), &list) != nil || len(list.Jobs) == 0 {
		t.Fatalf("wharf jobs: %v %s", err, jobsOut)
	}
	partial := list.Jobs[len(list.Jobs)-1]
	dst.SetHook(nil) // the right is granted
	out, stderr, err = wharf(t, "jobs", "--server", server, "--token-file", token, "--retry", partial.ID)
	if err != nil {
		t.Fatalf("wharf jobs --retry: %v %s", err, stderr)
	}
	retried := strings.TrimSpace(out)
	req, _ = http.NewRequestWithContext(t.Context(), http.MethodGet, server+"/api/v1/jobs/"+retried+"?wait=2m", nil)
	req.Header.Set("Authorization", "Bearer e2e-token-0123456789")
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	job = replicate.Job{}
	json.NewDecoder(resp.Body).Decode(&job)
	resp.Body.Close()
	if job.State != replicate.StateDone || job.Images != 1 || job.RetryOf != partial.ID {
		t.Fatalf("the retry: %+v", job)
	}
	if resp, _ := dst.Get(t, http.MethodGet, "/v2/proj/denied/manifests/1.0"); resp.StatusCode != http.StatusOK || resp.Header.Get("Docker-Content-Digest") != more.Manifest.Digest.String() {
		t.Fatalf("proj/denied on the target after the retry: %d", resp.StatusCode)
	}
}

// Against the wharf binary: a cosign signature and an SBOM added after a
// rule replicated an image reach the target with the next scheduled run;
// an attestation added later, once the image is pulled again; and a sync
// file written for skopeo (keyed by the registry's host, tls-verify as
// Wharf reaches it) runs unchanged.
func TestSignaturesAddedLaterAndASkopeoSyncFile(t *testing.T) {
	t.Parallel()
	src := upstreamtest.New(t)
	app := src.PushImage(t, "proj/app", "1.0", 140, 1, 16<<10, amd64)
	dst := upstreamtest.New(t, upstreamtest.WithBasicAuth("robot$push", "s3cret"))
	cfg, token := promoteConfig(t, src, dst)
	cfg = strings.Replace(cfg, "    insecure: true\n", "    insecure: true\n    tag_ttl: 1s\n", 1) + `replication:
  - name: app-to-b
    sources: [harbor-a.example.com/proj/app]
    target: harbor-b
    on_pull: true
    schedule: '@every 1s'
`
	w := startWharf(t, cfg)
	server := "http://" + w.addr
	onTarget := func(what, ref string, want digest.Digest) {
		t.Helper()
		waitFor(t, what+" on the target", func() bool {
			resp, _ := dst.Get(t, http.MethodGet, "/v2/proj/app/manifests/"+ref)
			return resp.StatusCode == http.StatusOK && resp.Header.Get("Docker-Content-Digest") == want.String()
		})
	}
	onTarget("the image", "1.0", app.Manifest.Digest)

	subject := ocispec.Descriptor{MediaType: app.MediaType, Digest: app.Manifest.Digest, Size: int64(len(app.Manifest.Data))}
	sig, _ := src.PushArtifact(t, "proj/app", "sha256-"+app.Manifest.Digest.Encoded()+".sig", "application/vnd.dev.cosign.simplesigning.v1+json", nil, []byte("cosign"))
	sbom, sbomDesc := src.PushArtifact(t, "proj/app", "", "application/spdx+json", &subject, []byte(`{"spdxVersion":"SPDX-2.3"}`))
	src.PushReferrersTag(t, "proj/app", app.Manifest.Digest, sbomDesc)
	onTarget("the signature added later", "sha256-"+app.Manifest.Digest.Encoded()+".sig", sig.Digest)
	onTarget("the SBOM added later", sbom.Digest.String(), sbom.Digest)

	att, _ := src.PushArtifact(t, "proj/app", "sha256-"+app.Manifest.Digest.Encoded()+".att", "application/vnd.dsse.envelope.v1+json", nil, []byte("attested"))
	resp, err := http.Get(server + "/v2/proj/app/manifests/1.0")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	onTarget("the attestation added later", "sha256-"+app.Manifest.Digest.Encoded()+".att", att.Digest)

	// A sync file as skopeo writes it.
	synced := src.PushImage(t, "proj/sync", "2.0", 141, 1, 16<<10, amd64)
	file := filepath.Join(t.TempDir(), "sync.yml")
	os.WriteFile(file, []byte(src.Host()+":\n  tls-verify: false\n  images:\n    proj/sync:\n      - \"2.0\"\n"), 0o644)
	if _, stderr, err := wharf(t, "prefetch", "--server", server, "--token-file", token, "--push-to", "harbor-b", "--wait", "-f", file); err != nil {
		t.Fatalf("wharf prefetch -f a skopeo sync file: %v\n%s", err, stderr)
	}
	if resp, _ := dst.Get(t, http.MethodGet, "/v2/proj/sync/manifests/2.0"); resp.StatusCode != http.StatusOK || resp.Header.Get("Docker-Content-Digest") != synced.Manifest.Digest.String() {
		t.Fatalf("the synced image on the target: %d", resp.StatusCode)
	}
	// A mistake in it is named by file, line and key.
	os.WriteFile(file, []byte(src.Host()+":\n  tls-verify: false\n  images:\n    proj/sync: [\"2.0\"]\n  image:\n    proj/app: [\"1.0\"]\n"), 0o644)
	if _, stderr, err := wharf(t, "prefetch", "--server", server, "--token-file", token, "--push-to", "harbor-b", "-f", file); err == nil ||
		!strings.Contains(stderr, file+": ") || !strings.Contains(stderr, `line 5: unknown key \"image\"`) && !strings.Contains(stderr, `line 5: unknown key "image"`) {
		t.Fatalf("a sync file with a mistake: %v\n%s", err, stderr)
	}
}
