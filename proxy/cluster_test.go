package proxy_test

import (
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/wharf-registry/wharf/cluster"
	"github.com/wharf-registry/wharf/storage/s3test"
	"github.com/wharf-registry/wharf/upstream/upstreamtest"
)

// newFleet starts n replicas sharing bucket and knowing each other, and
// the peers gone besides; stall is their StallTimeout (0: the default).
func newFleet(t *testing.T, n int, up *upstreamtest.Registry, bucket *s3test.Server, secret string, stall time.Duration, gone ...string) []*env {
	t.Helper()
	secrets := make([]string, n)
	for i := range secrets {
		secrets[i] = secret
	}
	return fleetWith(t, up, bucket, secrets, stall, gone...)
}

// fleetWith is newFleet with a secret for each replica.
func fleetWith(t *testing.T, up *upstreamtest.Registry, bucket *s3test.Server, secrets []string, stall time.Duration, gone ...string) []*env {
	t.Helper()
	return fleetOf(t, len(secrets), gone, func(i int, o *envOpts) *env {
		o.fleet.Secret = secrets[i]
		o.cfg.StallTimeout = stall
		return bucketReplicaOpts(t, up, bucket.Params(), *o)
	})
}

// fleetOf starts n replicas that know each other (and the peers gone):
// each gets its listener and cluster config in o, which replica builds
// it with. Their probes run every 50ms.
func fleetOf(t *testing.T, n int, gone []string, replica func(i int, o *envOpts) *env) []*env {
	t.Helper()
	var lns []net.Listener
	urls := slices.Clone(gone)
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		lns = append(lns, ln)
		urls = append(urls, "http://"+ln.Addr().String())
	}
	envs := make([]*env, n)
	for i := range n {
		envs[i] = replica(i, &envOpts{ln: lns[i], fleet: &cluster.Config{Peers: urls, Secret: "fleet-secret-0123456789", ProbeEvery: 50 * time.Millisecond, ProbeTimeout: 500 * time.Millisecond}})
	}
	return envs
}

// Eight clients spread over three replicas pull the same cold image at
// once: each blob is fetched from upstream exactly once for the fleet,
// and every client gets the exact bytes. The peer route admits only the
// requests signed with the fleet's secret, not the secret itself.
func TestFleetFetchesEachBlobOnce(t *testing.T) {
	bucket := s3test.Start(t)
	up := upstreamtest.New(t)
	img := up.PushImage(t, "library/app", "1", 91, 4, 300_000, amd64)
	fleet := newFleet(t, 3, up, bucket, "fleet-secret-0123456789", 0)
	for _, e := range fleet {
		e.get(t, "/v2/app/manifests/"+img.Manifest.Digest.String(), img.Manifest.Data, img.Manifest.Digest.String())
	}
	up.Reset()
	var wg sync.WaitGroup
	errs := make(chan string, 8*len(img.Blobs()))
	for i := range 8 {
		e := fleet[i%3]
		wg.Go(func() {
			for _, b := range img.Blobs() {
				resp, err := e.Client().Get(e.URL + "/v2/app/blobs/" + b.Digest.String())
				if err != nil {
					errs <- err.Error()
					continue
				}
				got, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				if err != nil || resp.StatusCode != http.StatusOK || digest.FromBytes(got) != b.Digest {
					errs <- b.Digest.String() + ": " + resp.Status
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
	wantCounts(t, up, map[string]int{"GET blob": len(img.Blobs())})

	// Each replica filled every blob once: the fleet's bytes from upstream
	// are the image's once (its manifest too, fetched through its owner),
	// the rest came from peers or the bucket.
	blobBytes := 0
	for _, b := range img.Blobs() {
		blobBytes += len(b.Data)
	}
	var fromUpstream, fromElsewhere, fetched float64
	for _, e := range fleet {
		filled(t, e)
		fromUpstream += metric(t, e, "wharf_filled_bytes_total", "source", "upstream")
		fromElsewhere += metric(t, e, "wharf_filled_bytes_total", "source", "peer") + metric(t, e, "wharf_filled_bytes_total", "source", "bucket")
		fetched += metric(t, e, "wharf_upstream_fetched_bytes_total")
	}
	if want := float64(blobBytes); fromUpstream != want || fromElsewhere != 2*want || fetched != want+float64(len(img.Manifest.Data)) {
		t.Errorf("fleet filled %v bytes from upstream and %v from peers or the bucket, fetched %v from upstream; the image's blobs are %v",
			fromUpstream, fromElsewhere, fetched, want)
	}

	l := img.Layers[0]
	for _, authz := range []string{"", "Bearer wrong", "Bearer fleet-secret-0123456789"} { // the secret itself never passes: requests are signed
		r := fleet[0].do(t, http.MethodGet, cluster.BlobPath+l.Digest.String()+"?upstream=docker.io&repo=library/app", "Authorization", authz)
		if r.status != http.StatusUnauthorized {
			t.Fatalf("peer route with %q: %d", authz, r.status)
		}
	}
	if r := fleet[0].do(t, http.MethodPost, cluster.BlobPath+l.Digest.String()); r.status != http.StatusMethodNotAllowed || !strings.Contains(string(r.body), `"code":"UNSUPPORTED"`) {
		t.Fatalf("POST to the peer route: %d %q", r.status, r.body)
	}
}

// An owner that cannot be reached is passed by: the replica fills from
// upstream itself, slower, never an error.
func TestFleetWithAnOwnerGone(t *testing.T) {
	bucket := s3test.Start(t)
	up := upstreamtest.New(t)
	img := up.PushImage(t, "library/app", "1", 92, 6, 10_000, amd64)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := "http://" + l.Addr().String()
	l.Close() // nothing listens there now
	fleet := newFleet(t, 2, up, bucket, "fleet-secret-0123456789", 0, dead)
	for _, e := range fleet {
		pull(t, e, "app", img, "")
	}
	if n := metric(t, fleet[0], "wharf_peer_fills_total") + metric(t, fleet[1], "wharf_peer_fills_total"); n == 0 {
		t.Fatal("no fill went through a peer or past a dead one: the fleet was not used")
	}
}

// Replicas whose secrets differ (or whose clocks are minutes apart) refuse
// each other: their probes find it out, each then fills from upstream
// itself without asking the other, every client gets its bytes, and
// /healthz and the metrics say why.
func TestFleetWithDifferentSecrets(t *testing.T) {
	bucket := s3test.Start(t)
	up := upstreamtest.New(t)
	img := up.PushImage(t, "library/app", "1", 94, 6, 10_000, amd64)
	fleet := fleetWith(t, up, bucket, []string{"fleet-secret-0123456789", "another-secret-0123456789"}, 0)
	for _, e := range fleet {
		settle(func() int { return len(e.fleet.Live()) }, 1)
		r := e.do(t, http.MethodGet, "/healthz")
		if r.status != http.StatusOK || !strings.Contains(string(r.body), "refuses this replica's signed requests") {
			t.Fatalf("healthz: %d %s", r.status, r.body)
		}
		if n := metric(t, e, "wharf_peer_up"); n != 0 {
			t.Fatalf("wharf_peer_up %v", n)
		}
	}
	up.Reset()
	for _, e := range fleet {
		pull(t, e, "app", img, "")
	}
	var refused, owner, unreachable float64
	for _, e := range fleet {
		refused += metric(t, e, "wharf_peer_fills_total", "result", "refused")
		owner += metric(t, e, "wharf_peer_fills_total", "result", "owner")
		unreachable += metric(t, e, "wharf_peer_fills_total", "result", "unreachable")
	}
	if refused+owner+unreachable != 0 {
		t.Fatalf("peer fills: %v refused, %v from the owner, %v unreachable; want none asked", refused, owner, unreachable)
	}
	// The second replica's blobs come from the bucket the first filled.
	wantCounts(t, up, map[string]int{"HEAD manifest": 2, "GET manifest": 2, "GET blob": len(img.Blobs())})
}

// An owner whose stream stalls (frozen, or cut off without a reset) is
// passed by once the replica has waited StallTimeout for a byte: the
// replica goes on from upstream from the byte it had, and its client gets
// every byte, not a transfer hung until the owner's own upstream gives up.
func TestFleetWithAStalledOwner(t *testing.T) {
	const secret = "fleet-secret-0123456789"
	bucket := s3test.Start(t)
	up := upstreamtest.New(t)
	img := up.PushImage(t, "library/app", "1", 93, 1, 300_000, amd64)
	l := img.Layers[0]
	half := len(l.Data) / 2
	// The owner's upstream GET of the layer sends half, then nothing
	// until the test ends; any later GET is answered in full.
	release := make(chan struct{})
	var gets atomic.Int32
	up.SetHook(func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method != http.MethodGet || !strings.HasSuffix(r.URL.Path, l.Digest.String()) || gets.Add(1) > 1 {
			return false
		}
		w.Header().Set("Content-Length", strconv.Itoa(len(l.Data)))
		w.Write(l.Data[:half])
		w.(http.Flusher).Flush()
		select {
		case <-release:
		case <-r.Context().Done():
		}
		return true
	})
	fleet := newFleet(t, 2, up, bucket, secret, time.Second) // the owner's own upstream gives up at 3 s
	defer close(release)
	c, err := cluster.New(cluster.Config{Peers: []string{fleet[0].URL, fleet[1].URL}, Advertise: fleet[0].URL, Secret: secret, ProbeEvery: -1})
	if err != nil {
		t.Fatal(err)
	}
	replica := fleet[1] // the one that does not own the layer
	if _, self := c.Owner(l.Digest); !self {
		replica = fleet[0]
	}

	replica.get(t, "/v2/app/manifests/"+img.Manifest.Digest.String(), img.Manifest.Data, img.Manifest.Digest.String())
	replica.get(t, "/v2/app/blobs/"+l.Digest.String(), l.Data, l.Digest.String())
	half-- // the owner streams all but the last byte it holds until the blob verifies
	var got []string
	for _, r := range up.Requests() {
		if r.Method == http.MethodGet && strings.HasSuffix(r.Path, l.Digest.String()) {
			got = append(got, r.Range)
		}
	}
	if want := []string{"", "bytes=" + strconv.Itoa(half) + "-"}; !slices.Equal(got, want) {
		t.Errorf("upstream GETs of the layer, by Range: %q, want %q (the owner's, then the replica's)", got, want)
	}
	if p, u := metric(t, replica, "wharf_filled_bytes_total", "source", "peer"), metric(t, replica, "wharf_filled_bytes_total", "source", "upstream"); p != float64(half) || u != float64(len(l.Data)-half) {
		t.Errorf("the replica's bytes from the owner, upstream: %v, %v; want %d, %d", p, u, half, len(l.Data)-half)
	}
}

// A peer that hangs (a SIGSTOPped process: connections accepted, nothing
// answered) costs the others a few seconds, once: the probes find it
// down, the request waiting on it is cancelled, its blobs are filled from
// upstream, and it is asked nothing more. /healthz and wharf_peer_up say
// so.
func TestFleetWithAHungPeer(t *testing.T) {
	bucket := s3test.Start(t)
	up := upstreamtest.New(t)
	img := up.PushImage(t, "library/app", "1", 95, 12, 10_000, amd64)
	release := make(chan struct{})
	var asked atomic.Int32
	hung := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, cluster.BlobPath) {
			asked.Add(1)
		}
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	defer hung.Close()
	defer close(release)
	fleet := newFleet(t, 2, up, bucket, "fleet-secret-0123456789", 0, hung.URL)
	e := fleet[0]
	client := &http.Client{Timeout: 30 * time.Second} // the old peer client waited 60 s per blob
	for _, b := range append([]upstreamtest.Blob{img.Manifest}, img.Blobs()...) {
		kind := "blobs"
		if b.Digest == img.Manifest.Digest {
			kind = "manifests"
		}
		resp, err := client.Get(e.URL + "/v2/app/" + kind + "/" + b.Digest.String())
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusOK || digest.FromBytes(got) != b.Digest {
			t.Fatalf("%s: %d, %v", b.Digest, resp.StatusCode, err)
		}
	}
	if n := asked.Load(); n > 1 {
		t.Fatalf("the hung peer was asked for %d blobs, want at most the one in flight when it was found out", n)
	}
	if n := metric(t, e, "wharf_peer_up", "peer", hung.URL); n != 0 {
		t.Fatalf("wharf_peer_up of the hung peer: %v", n)
	}
	if r := e.do(t, http.MethodGet, "/healthz"); r.status != http.StatusOK || !strings.Contains(string(r.body), "peer "+hung.URL+" does not answer") {
		t.Fatalf("healthz: %d %s", r.status, r.body)
	}
}

// Readiness and liveness are two probes: a replica that is stopping
// fails the first (the Service and its peers stop sending it work) and
// passes the second (nobody restarts it while it finishes).
func TestReadinessAndLiveness(t *testing.T) {
	bucket := s3test.Start(t)
	up := upstreamtest.New(t)
	fleet := newFleet(t, 2, up, bucket, "fleet-secret-0123456789", 0)
	a, b := fleet[0], fleet[1]
	settle(func() int { return 2 - len(a.fleet.Live()) }, 0)
	if r := a.do(t, http.MethodGet, "/healthz"); r.status != http.StatusOK || string(r.body) != "ok\n" {
		t.Fatalf("healthz: %d %q", r.status, r.body)
	}
	b.srv.Drain()
	for path, want := range map[string]int{"/healthz": http.StatusServiceUnavailable, "/livez": http.StatusOK} {
		if r := b.do(t, http.MethodGet, path); r.status != want {
			t.Errorf("%s of a stopping replica: %d %q, want %d", path, r.status, r.body, want)
		}
	}
	if n := settle(func() int { return len(a.fleet.Live()) }, 1); n != 1 {
		t.Fatalf("a stopping replica is still live for its peer: %v", a.fleet.Live())
	}
	if r := a.do(t, http.MethodGet, "/healthz"); r.status != http.StatusOK || string(r.body) != "ok\n" {
		t.Fatalf("a peer stopping is no trouble: %d %q", r.status, r.body)
	}
}
