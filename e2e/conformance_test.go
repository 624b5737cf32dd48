//go:build e2e

package e2e

import (
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"testing"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/wharf-registry/wharf/upstream/upstreamtest"
)

var testLine = regexp.MustCompile(`(?m)^\s*OCI Conformance Test/(\S.*): (\w+)$`)

// conformance runs the OCI distribution-spec conformance suite against
// registry with env and returns the tests that failed: leaves only (a
// group fails when one of its tests does).
func conformance(t *testing.T, bin, registry string, env ...string) []string {
	t.Helper()
	cmd := exec.CommandContext(t.Context(), bin)
	cmd.Env = append(os.Environ(), append([]string{"OCI_REGISTRY=" + registry, "OCI_TLS=disabled",
		"OCI_RESULTS_DIR=" + t.TempDir(), "OCI_LOG=error"}, env...)...)
	out, _ := cmd.CombinedOutput() // exits non-zero on any failure
	if !strings.Contains(string(out), "OCI Conformance Result") {
		t.Fatalf("the conformance suite did not run:\n%s", out)
	}
	lines := testLine.FindAllStringSubmatch(string(out), -1)
	var failed []string
	for _, m := range lines {
		if m[2] != "FAIL" {
			continue
		}
		leaf := !slices.ContainsFunc(lines, func(o []string) bool { return strings.HasPrefix(o[1], m[1]+"/") })
		if leaf {
			failed = append(failed, m[1])
		}
	}
	return failed
}

// onlyIn lists what failed through Wharf and not against the registry
// itself.
func onlyIn(wharf, direct []string) []string {
	var extra []string
	for _, f := range slices.Compact(slices.Sorted(slices.Values(wharf))) {
		if !slices.Contains(direct, f) {
			extra = append(extra, f)
		}
	}
	return extra
}

// The OCI conformance suite finds no failure through Wharf that the
// registry behind it does not have: read-only (what a mirror is), and in
// its default profile with writes sent to the registry and reads to Wharf.
// A cache keeps serving what was deleted behind it, so delete checks are
// left out of the comparison; tags and refusals are not cached here
// (tag_ttl and negative_ttl 0), as a push-then-pull test needs.
func TestOCIConformance(t *testing.T) {
	t.Parallel()
	bin := tool(t, "conformance")
	up := upstreamtest.New(t)
	a := up.PushImage(t, "conformance/ro", "v1", 1, 2, 4096, amd64)
	b := up.PushImage(t, "conformance/ro", "", 2, 1, 4096, ocispec.Platform{OS: "linux", Architecture: "arm64"})
	idx := up.PushIndex(t, "conformance/ro", "multi", a, b)
	manifests := []string{a.Manifest.Digest.String(), b.Manifest.Digest.String(), idx.Manifest.Digest.String()}
	var blobs []string
	for _, img := range []upstreamtest.Image{a, b} {
		for _, bl := range img.Blobs() {
			blobs = append(blobs, bl.Digest.String())
		}
	}
	w := startWharf(t, mirrorConfig(t.TempDir(), up.URL)+"    tag_ttl: 0s\n    negative_ttl: 0s\n")

	readOnly := []string{"OCI_REPO1=conformance/ro", "OCI_REPO2=conformance/ro2", "OCI_API_PUSH=false",
		"OCI_API_BLOBS_DELETE=false", "OCI_API_MANIFESTS_DELETE=false", "OCI_API_TAGS_DELETE=false",
		"OCI_RO_DATA_TAGS=v1 multi", "OCI_RO_DATA_MANIFESTS=" + strings.Join(manifests, " "), "OCI_RO_DATA_BLOBS=" + strings.Join(blobs, " ")}
	direct := conformance(t, bin, up.Host(), readOnly...)
	if extra := onlyIn(conformance(t, bin, w.addr, readOnly...), direct); len(extra) > 0 {
		t.Errorf("read-only: failed through Wharf only:\n  %s", strings.Join(extra, "\n  "))
	}

	wu, _ := url.Parse("http://" + w.addr)
	uu, _ := url.Parse(up.URL)
	reads, writes := httputil.NewSingleHostReverseProxy(wu), httputil.NewSingleHostReverseProxy(uu)
	split := httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		// Reads go to Wharf; writes, and reads of upload sessions (part of
		// a push), to the registry.
		if (r.Method == http.MethodGet || r.Method == http.MethodHead) && !strings.Contains(r.URL.Path, "/blobs/uploads/") {
			reads.ServeHTTP(rw, r)
		} else {
			writes.ServeHTTP(rw, r)
		}
	}))
	defer split.Close()
	direct = conformance(t, bin, up.Host(), "OCI_REPO1=conformance/direct1", "OCI_REPO2=conformance/direct2")
	through := conformance(t, bin, strings.TrimPrefix(split.URL, "http://"), "OCI_REPO1=conformance/wharf1", "OCI_REPO2=conformance/wharf2")
	var extra []string
	for _, f := range onlyIn(through, direct) {
		if !strings.Contains(f, "delete") {
			extra = append(extra, f)
		}
	}
	if len(extra) > 0 {
		t.Errorf("default profile: failed through Wharf only:\n  %s", strings.Join(extra, "\n  "))
	}
}
