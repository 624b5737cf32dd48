//go:build e2e

package e2e

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wharf-registry/wharf/cluster"
	"github.com/wharf-registry/wharf/storage/s3test"
	"github.com/wharf-registry/wharf/upstream/upstreamtest"
)

// Two wharf processes with storage.driver s3 share a bucket: the first
// puts every blob in it, in distribution's layout; the second, on an empty
// disk, pulls the image with crane and fetches no blob upstream. The
// bucket's secret key comes from the environment. Then wharf gc empties
// the bucket under the running replica.
func TestTwoWharfsShareABucket(t *testing.T) {
	crane := tool(t, "crane")
	s3 := s3test.Start(t)
	up := upstreamtest.New(t)
	img := up.PushImage(t, "library/app", "1.0", 62, 3, 256<<10, amd64)
	t.Setenv("WHARF_TEST_S3_SECRET", s3.SecretKey)
	cfg := func() string {
		root := t.TempDir()
		return fmt.Sprintf(`listen: "127.0.0.1:0"
storage:
  root: %s
  driver: s3
  s3:
    bucket: %s
    region: us-east-1
    regionendpoint: %s
    accesskey: %s
    secretkey: ${WHARF_TEST_S3_SECRET}
    forcepathstyle: true
    secure: false
upstreams:
  - name: docker.io
    url: %s
    default: true
    insecure: true
`, root, s3.Bucket, s3.URL, s3.AccessKey, up.URL)
	}

	first := startWharf(t, cfg())
	runTool(t, crane, "pull", "--insecure", "--format", "oci", first.addr+"/library/app:1.0", filepath.Join(t.TempDir(), "first"))
	first.stop(t) // a clean stop waits for the fills, and so their uploads
	for _, b := range append(img.Blobs(), img.Manifest) {
		key := "/docker/registry/v2/blobs/sha256/" + b.Digest.Encoded()[:2] + "/" + b.Digest.Encoded() + "/data"
		if got, err := os.ReadFile(s3.ObjectFile(key)); err != nil || !bytes.Equal(got, b.Data) {
			t.Fatalf("%s in the bucket: %v, %d bytes of %d", b.Digest, err, len(got), len(b.Data))
		}
	}

	up.Reset()
	second := startWharf(t, cfg())
	layout := filepath.Join(t.TempDir(), "second")
	runTool(t, crane, "pull", "--insecure", "--format", "oci", second.addr+"/library/app:1.0", layout)
	for _, b := range img.Blobs() {
		got, err := os.ReadFile(filepath.Join(layout, "blobs", "sha256", b.Digest.Encoded()))
		if err != nil || !bytes.Equal(got, b.Data) {
			t.Fatalf("blob %s through the second Wharf differs (%v)", b.Digest, err)
		}
	}
	if n := up.Count("GET", "blob"); n != 0 {
		t.Fatalf("the second Wharf fetched %d blobs upstream, want 0", n)
	}

	// wharf gc bounds the bucket while the replica runs: a dry run deletes
	// nothing, a real one everything down to the size asked, and the
	// replica, which still indexes the blobs it holds, serves them; a
	// fresh one fetches them upstream again, byte for byte.
	gcPath := filepath.Join(t.TempDir(), "gc.yml")
	if err := os.WriteFile(gcPath, []byte(cfg()), 0o644); err != nil {
		t.Fatal(err)
	}
	wharfGC := func(args ...string) string {
		t.Helper()
		out, err := exec.Command(wharfBinary(t), append([]string{"gc", "--config", gcPath}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("wharf gc %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	objects := len(img.Blobs()) + 1
	// Everything was just uploaded: within --min-age (1h), nothing goes.
	if out := wharfGC("--keep", "0"); !strings.Contains(out, "deleted 0 blobs") || !strings.Contains(out, fmt.Sprintf("0 pinned and %d recently used blobs spared", objects)) {
		t.Fatalf("gc of blobs used within the hour:\n%s", out)
	}
	if out := wharfGC("--keep", "0", "--min-age", "0", "--dry-run"); !strings.Contains(out, fmt.Sprintf("would delete %d blobs", objects)) ||
		!strings.Contains(out, "--min-age 0s is under 45m0s") {
		t.Fatalf("dry run:\n%s", out)
	}
	for _, b := range img.Blobs() {
		key := "/docker/registry/v2/blobs/sha256/" + b.Digest.Encoded()[:2] + "/" + b.Digest.Encoded() + "/data"
		if _, err := os.Stat(s3.ObjectFile(key)); err != nil {
			t.Fatalf("the dry run deleted %s: %v", b.Digest, err)
		}
	}
	if out := wharfGC("--keep", "0", "--min-age", "0"); !strings.Contains(out, fmt.Sprintf("deleted %d blobs", objects)) || !strings.Contains(out, "after; 0 pinned") {
		t.Fatalf("gc:\n%s", out)
	}
	up.Reset()
	third := startWharf(t, cfg())
	layout = filepath.Join(t.TempDir(), "third")
	runTool(t, crane, "pull", "--insecure", "--format", "oci", third.addr+"/library/app:1.0", layout)
	for _, b := range img.Blobs() {
		got, err := os.ReadFile(filepath.Join(layout, "blobs", "sha256", b.Digest.Encoded()))
		if err != nil || !bytes.Equal(got, b.Data) {
			t.Fatalf("blob %s after gc differs (%v)", b.Digest, err)
		}
	}
	if n := up.Count("GET", "blob"); n != len(img.Blobs()) {
		t.Fatalf("after gc a fresh Wharf fetched %d blobs upstream, want %d", n, len(img.Blobs()))
	}
	// The replica pulls after the fresh one: had it pulled first, it would
	// have put its blobs back in the bucket (the bucket heals) and the
	// fresh one would have fetched fewer, depending on timing.
	runTool(t, crane, "pull", "--insecure", "--format", "oci", second.addr+"/library/app:1.0", filepath.Join(t.TempDir(), "again"))
	if n := up.Count("GET", "blob"); n != len(img.Blobs()) {
		t.Fatalf("the replica that still held the blobs fetched %d upstream after gc", n-len(img.Blobs()))
	}
}

// Three wharf processes with a cluster: block and one bucket: eight
// clients spread over them pull the same cold image at once, and each blob
// is fetched from upstream once for the fleet, every client's bytes right.
func TestClusterOfThreeProcesses(t *testing.T) {
	s3 := s3test.Start(t)
	up := upstreamtest.New(t)
	img := up.PushImage(t, "library/app", "1.0", 63, 4, 200_000, amd64)
	fleet := startFleet(t, 3, s3, up.URL)
	// Each replica's manifest fetch starts its eager fills too: they go
	// through the owners as well.
	up.Reset()
	for _, w := range fleet {
		resp, err := http.Get("http://" + w.addr + "/v2/library/app/manifests/" + img.Manifest.Digest.String())
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	var wg sync.WaitGroup
	errs := make(chan string, 8*len(img.Blobs()))
	for i := range 8 {
		w := fleet[i%3]
		wg.Go(func() {
			for _, b := range img.Blobs() {
				resp, err := http.Get("http://" + w.addr + "/v2/library/app/blobs/" + b.Digest.String())
				if err != nil {
					errs <- err.Error()
					continue
				}
				got, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				if err != nil || !bytes.Equal(got, b.Data) {
					errs <- fmt.Sprintf("%s through %s: %d, %v", b.Digest, w.addr, resp.StatusCode, err)
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
	if n := up.Count("GET", "blob"); n != len(img.Blobs()) {
		t.Fatalf("the fleet fetched %d blobs upstream, want %d (once each)", n, len(img.Blobs()))
	}
}

// startFleet runs n wharf processes sharing s3 as a cluster with static
// peers, in the order of their addresses.
func startFleet(t *testing.T, n int, s3 *s3test.Server, upstreamURL string) []*wharfProc {
	t.Helper()
	secret := filepath.Join(t.TempDir(), "peer")
	if err := os.WriteFile(secret, []byte(fleetSecret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("WHARF_TEST_S3_SECRET", s3.SecretKey)
	var addrs []string
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addrs = append(addrs, l.Addr().String())
		l.Close()
	}
	peers := "[http://" + strings.Join(addrs, ", http://") + "]"
	var fleet []*wharfProc
	for _, a := range addrs {
		fleet = append(fleet, startWharf(t, fmt.Sprintf(`listen: %q
storage:
  root: %s
  driver: s3
  s3: {bucket: %s, region: us-east-1, regionendpoint: %s, accesskey: %s, secretkey: "${WHARF_TEST_S3_SECRET}", forcepathstyle: true, secure: false}
cluster:
  peers: %s
  advertise: http://%s
  secret_file: %s
upstreams:
  - name: docker.io
    url: %s
    default: true
    insecure: true
`, a, t.TempDir(), s3.Bucket, s3.URL, s3.AccessKey, peers, a, secret, upstreamURL)))
	}
	return fleet
}

const fleetSecret = "fleet-secret-0123456789"

// The owner of a blob killed with kill -9 in the middle of its fill: the
// replicas streaming from it pick up from upstream where the owner's
// stream broke, their clients get every byte right, and the bucket holds
// the whole blob, never a part.
func TestClusterOwnerKilledMidFill(t *testing.T) {
	s3 := s3test.Start(t)
	up := upstreamtest.New(t)
	img := up.PushImage(t, "library/app", "1.0", 64, 1, 4<<20, amd64)
	l := img.Layers[0]
	released := make(chan struct{})
	t.Cleanup(func() {
		select {
		case <-released:
		default:
			close(released)
		}
	})
	// The owner's fill gets half the layer, then upstream stalls; a
	// resumed request (with Range) is served whole.
	up.SetHook(func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method != http.MethodGet || !strings.HasSuffix(r.URL.Path, l.Digest.String()) || r.Header.Get("Range") != "" {
			return false
		}
		w.Header().Set("Content-Length", strconv.Itoa(len(l.Data)))
		w.Write(l.Data[:len(l.Data)/2])
		w.(http.Flusher).Flush()
		<-released
		return true
	})
	fleet := startFleet(t, 3, s3, up.URL)
	var urls []string
	for _, w := range fleet {
		urls = append(urls, "http://"+w.addr)
	}
	view, err := cluster.New(cluster.Config{Peers: urls, Advertise: urls[0], Secret: fleetSecret})
	if err != nil {
		t.Fatal(err)
	}
	defer view.Close()
	owner, _ := view.Owner(l.Digest)
	var ownerProc *wharfProc
	var askers []*wharfProc
	for _, w := range fleet {
		if "http://"+w.addr == owner {
			ownerProc = w
		} else {
			askers = append(askers, w)
		}
	}
	// Two clients on each of the other two replicas, each with its first
	// MiB in hand when the owner dies.
	var bodies []io.ReadCloser
	for i := range 4 {
		base := "http://" + askers[i%2].addr + "/v2/library/app/"
		resp, err := http.Get(base + "manifests/" + img.Manifest.Digest.String())
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		resp, err = http.Get(base + "blobs/" + l.Digest.String())
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		first := make([]byte, 1<<20)
		if _, err := io.ReadFull(resp.Body, first); err != nil || !bytes.Equal(first, l.Data[:len(first)]) {
			t.Fatalf("the first MiB through %s (owner %s): %v", askers[i%2].addr, owner, err)
		}
		bodies = append(bodies, resp.Body)
	}
	ownerProc.kill(t)
	close(released)
	for i, body := range bodies {
		rest, err := io.ReadAll(body)
		if err != nil || !bytes.Equal(rest, l.Data[1<<20:]) {
			t.Fatalf("client %d after the owner died: %d of %d bytes, %v", i, 1<<20+len(rest), len(l.Data), err)
		}
	}
	// One whole GET (the owner's) and one resume with Range for each
	// asking replica, from where the owner's stream broke: no replica
	// fetched the layer whole itself, and each fetched it once for its
	// two clients.
	var whole, ranged int
	for _, r := range up.Requests() {
		if r.Method == http.MethodGet && strings.HasSuffix(r.Path, l.Digest.String()) {
			if r.Range == "" {
				whole++
			} else if strings.HasPrefix(r.Range, "bytes=") && r.Range != "bytes=0-" {
				ranged++
			}
		}
	}
	if whole != 1 || ranged != 2 {
		t.Fatalf("upstream saw %d whole and %d resumed GETs of the layer, want 1 and 2: %+v", whole, ranged, up.Requests())
	}
	key := "/docker/registry/v2/blobs/sha256/" + l.Digest.Encoded()[:2] + "/" + l.Digest.Encoded() + "/data"
	deadline := time.Now().Add(20 * time.Second)
	for {
		got, err := os.ReadFile(s3.ObjectFile(key))
		if err == nil && bytes.Equal(got, l.Data) {
			break
		}
		if err == nil && len(got) != len(l.Data) {
			t.Fatalf("a partial object in the bucket: %d of %d bytes", len(got), len(l.Data))
		}
		if time.Now().After(deadline) {
			t.Fatalf("the blob never reached the bucket whole: %v", err)
		}
		time.Sleep(20 * time.Millisecond) // polling a condition, bounded
	}
}
