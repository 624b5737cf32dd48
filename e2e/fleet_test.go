//go:build e2e

package e2e

import (
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/wharf-registry/wharf/api"
	"github.com/wharf-registry/wharf/replicate"
	"github.com/wharf-registry/wharf/storage/s3test"
	"github.com/wharf-registry/wharf/upstream/upstreamtest"
)

// The shipped topology: three wharf processes on one bucket, peers on
// a port of their own over mutual TLS, behind haproxy balancing each
// request round robin. Through the balancer the fleet behaves as one
// Wharf: jobs, pins and rules answer the same whichever replica a call
// lands on; a rule runs once; a tag moved upstream is served and pushed
// forwards only; killing a replica loses nothing; a stopped bucket delays
// no pull and is whole again once it returns.
func TestFleetBehindABalancer(t *testing.T) {
	haproxyBin := tool(t, "haproxy")
	s3 := s3test.Start(t)
	src := upstreamtest.New(t)
	dst := upstreamtest.New(t, upstreamtest.WithBasicAuth("robot$push", "s3cret"))
	f := newTestFleet(t, s3, src, dst)
	lb := startHaproxy(t, haproxyBin, f.addrs())
	server := "http://" + lb

	// 1. wharf prefetch --wait of 50 images through the balancer: the
	// CLI's polls land on every replica and all see the job.
	var refs []string
	for i := range 50 {
		src.PushImage(t, fmt.Sprintf("proj/img-%02d", i), "1", uint64(100+i), 1, 4<<10, amd64)
		refs = append(refs, fmt.Sprintf("harbor-a.example.com/proj/img-%02d:1", i))
	}
	out, stderr, err := wharf(t, append([]string{"prefetch", "--server", server, "--token-file", f.token, "--output", "json", "--wait"}, refs...)...)
	var job replicate.Job
	if err != nil || json.Unmarshal([]byte(out), &job) != nil || job.State != replicate.StateDone || job.Images != 50 || job.Done != 50 {
		t.Fatalf("prefetch --wait of 50 images through the balancer: %v %+v\n%s", err, job, stderr)
	}
	if n := strings.Count(stderr, "done      harbor-a.example.com/proj/img-"); n != 50 {
		t.Fatalf("the report names %d images done, want 50:\n%s", n, stderr)
	}

	// 2. Any replica answers for the job, its pages and the list.
	var lists []int
	for range 6 {
		var got replicate.Job
		if status := f.api(t, lb, http.MethodGet, "/api/v1/jobs/"+job.ID, &got); status != http.StatusOK || got.ID != job.ID || got.Done != 50 {
			t.Fatalf("GET the job through the balancer: %d %+v", status, got)
		}
		var list struct{ Jobs []replicate.Job }
		if status := f.api(t, lb, http.MethodGet, "/api/v1/jobs", &list); status != http.StatusOK {
			t.Fatalf("the list: %d", status)
		}
		lists = append(lists, len(list.Jobs))
	}
	for _, n := range lists {
		if n != lists[0] || n != 1 {
			t.Fatalf("the list of jobs through the balancer: %v jobs per call, want 1 each", lists)
		}
	}
	seen := map[int]bool{}
	for next := "/api/v1/jobs/" + job.ID + "/images?n=7"; next != ""; {
		var page api.ImagePage
		resp := f.do(t, lb, http.MethodGet, next)
		if resp.StatusCode != http.StatusOK || json.NewDecoder(resp.Body).Decode(&page) != nil {
			t.Fatalf("a page of images: %d", resp.StatusCode)
		}
		resp.Body.Close()
		for _, img := range page.Images {
			seen[img.Index] = true
		}
		next = ""
		if l := resp.Header.Get("Link"); l != "" {
			next = strings.Trim(strings.SplitN(l, ";", 2)[0], "<>")
		}
	}
	if len(seen) != 50 {
		t.Fatalf("the pages through the balancer hold %d images, want 50", len(seen))
	}

	// Cancelled through the balancer, whichever replica runs it.
	src.PushImage(t, "proj/held", "1", 95, 1, 8<<10, amd64)
	held := make(chan struct{})
	var heldOnce sync.Once
	src.SetHook(func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method == http.MethodGet && strings.HasPrefix(r.URL.Path, "/v2/proj/held/blobs/") {
			heldOnce.Do(func() { close(held) })
			<-r.Context().Done()
			return true
		}
		return false
	})
	out, stderr, err = wharf(t, "prefetch", "--server", server, "--token-file", f.token, "harbor-a.example.com/proj/held:1")
	if err != nil {
		t.Fatalf("prefetch: %v %s", err, stderr)
	}
	heldID := strings.TrimSpace(out)
	<-held
	out, stderr, err = wharf(t, "jobs", "--server", server, "--token-file", f.token, "--cancel", "--output", "json", heldID)
	var cancelled struct{ Job replicate.Job }
	if err != nil || json.Unmarshal([]byte(out), &cancelled) != nil || cancelled.Job.State != replicate.StateCancelled || cancelled.Job.ID != heldID {
		t.Fatalf("wharf jobs --cancel through the balancer: %v %s %s", err, out, stderr)
	}
	src.SetHook(nil)
	for range 3 {
		if out, _, err := wharf(t, "jobs", "--server", server, "--token-file", f.token); err != nil || !strings.Contains(out, job.ID) || !strings.Contains(out, heldID) {
			t.Fatalf("wharf jobs through the balancer: %v\n%s", err, out)
		}
	}

	// 3. Pins: set through one replica, listed and unpinned through any.
	if _, stderr, err := wharf(t, "prefetch", "--server", server, "--token-file", f.token, "--pin", "--wait", refs[0]); err != nil {
		t.Fatalf("prefetch --pin: %v %s", err, stderr)
	}
	for range 3 {
		if out, stderr, err := wharf(t, "pins", "--server", server, "--token-file", f.token); err != nil || !strings.HasPrefix(out, "harbor-a.example.com/proj/img-00 1 sha256:") {
			t.Fatalf("wharf pins through the balancer: %v %q %s", err, out, stderr)
		}
	}
	if _, stderr, err := wharf(t, "pins", "--server", server, "--token-file", f.token, "--unpin", refs[0]); err != nil {
		t.Fatalf("unpin through the balancer: %v %s", err, stderr)
	}
	for range 3 {
		if out, _, err := wharf(t, "pins", "--server", server, "--token-file", f.token); err != nil || out != "" {
			t.Fatalf("pins after unpinning: %v %q", err, out)
		}
	}

	// 4. The rule (on_pull, and a schedule every 2s, on all three) makes
	// one job and one manifest PUT for a new tag, pulled everywhere.
	puts := recordPuts(dst, "/v2/proj/app/manifests/1.0")
	v1 := src.PushImage(t, "proj/app", "1.0", 90, 1, 8<<10, amd64)
	for range 3 {
		f.pull(t, lb, "proj/app", "1.0", v1.Manifest.Digest)
	}
	waitFor(t, "the rule pushes 1.0", func() bool { return len(puts()) == 1 })
	runs := f.ruleRuns(t, lb)
	waitFor(t, "three more scheduled runs", func() bool { return f.ruleRuns(t, lb) >= runs+3 })
	if got := puts(); len(got) != 1 || got[0] != v1.Manifest.Digest {
		t.Fatalf("manifest PUTs of 1.0 on the target: %v, want just %s", got, v1.Manifest.Digest)
	}
	if n := f.ruleJobs(t, lb); n != 1 {
		t.Fatalf("the rule made %d jobs for one new tag, want 1", n)
	}

	// 5. The tag moves on the source: through the balancer it is served
	// as the old digest, then the new, never back; the target follows
	// and never goes back either.
	v2 := src.PushImage(t, "proj/app", "1.0", 91, 1, 8<<10, amd64)
	var served []digest.Digest
	waitFor(t, "the moved tag is served", func() bool {
		served = append(served, f.pull(t, lb, "proj/app", "1.0", ""))
		return served[len(served)-1] == v2.Manifest.Digest
	})
	for range 12 {
		if d := f.pull(t, lb, "proj/app", "1.0", ""); d != v2.Manifest.Digest {
			t.Fatalf("after serving %s, the balancer served %s for the same tag", v2.Manifest.Digest, d)
		}
	}
	waitFor(t, "the target takes the moved tag", func() bool { return len(puts()) == 2 })
	runs = f.ruleRuns(t, lb)
	waitFor(t, "two more scheduled runs", func() bool { return f.ruleRuns(t, lb) >= runs+2 })
	if got := puts(); len(got) != 2 || got[0] != v1.Manifest.Digest || got[1] != v2.Manifest.Digest {
		t.Fatalf("manifest PUTs of 1.0 on the target: %v, want %s then %s", got, v1.Manifest.Digest, v2.Manifest.Digest)
	}

	// 6. The rule's owner is killed: another replica runs it, and a new
	// tag reaches the target once.
	owner := f.ruleOwner(t, lb)
	f.procs[owner].kill(t)
	puts11 := recordPuts(dst, "/v2/proj/app/manifests/1.1")
	v11 := src.PushImage(t, "proj/app", "1.1", 92, 1, 8<<10, amd64)
	waitFor(t, "a new tag after the owner's death", func() bool { return len(puts11()) == 1 })
	f.restart(t, owner)
	runs = f.ruleRuns(t, lb)
	waitFor(t, "two more scheduled runs", func() bool { return f.ruleRuns(t, lb) >= runs+2 })
	if got := puts11(); len(got) != 1 || got[0] != v11.Manifest.Digest {
		t.Fatalf("manifest PUTs of 1.1: %v, want just %s", got, v11.Manifest.Digest)
	}

	// 7. A job's replica is killed mid-job: the job is 503 (not 404)
	// until another replica takes it over and finishes it.
	src.PushImage(t, "proj/slow", "1", 93, 1, 8<<10, amd64)
	reached := holdPut(dst, "/v2/proj/slow/manifests/1")
	out, stderr, err = wharf(t, "prefetch", "--server", server, "--token-file", f.token, "--push-to", "harbor-b", "harbor-a.example.com/proj/slow:1")
	if err != nil {
		t.Fatalf("prefetch: %v %s", err, stderr)
	}
	id := strings.TrimSpace(out)
	<-reached
	runner := -1
	for i, w := range f.procs {
		if metricValue(t, w.addr, "wharf_prefetch_jobs_running") == "1" {
			runner = i
		}
	}
	if runner < 0 {
		t.Fatal("no replica runs the job")
	}
	f.procs[runner].kill(t)
	dst.SetHook(nil)
	for i := range f.procs {
		if i == runner {
			continue
		}
		resp := f.do(t, f.procs[i].addr, http.MethodGet, "/api/v1/jobs/"+id)
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
			t.Fatalf("a job whose replica is down, asked of another: %d %s", resp.StatusCode, body)
		}
	}
	// Another replica takes the job over from the bucket and finishes it.
	var resumed replicate.Job
	waitFor(t, "another replica finishes the job", func() bool {
		status, err := f.try(t, lb, http.MethodGet, "/api/v1/jobs/"+id+"?wait=5s", &resumed)
		if err != nil {
			return false // a connection the balancer dropped while a replica died: asked again
		}
		if status != http.StatusOK && status != http.StatusServiceUnavailable {
			t.Fatalf("the job while its replica is down: %d", status)
		}
		return status == http.StatusOK && resumed.State == replicate.StateDone
	})
	// The replica comes back, finds its job taken over and drops its
	// copy: the fleet lists the job once, done.
	f.restart(t, runner)
	waitFor(t, "the fleet sees the replica back", func() bool {
		var list struct {
			Jobs        []replicate.Job
			Unreachable []string
		}
		status, err := f.try(t, lb, http.MethodGet, "/api/v1/jobs", &list)
		return err == nil && status == http.StatusOK && len(list.Unreachable) == 0
	})
	var list struct{ Jobs []replicate.Job }
	f.api(t, lb, http.MethodGet, "/api/v1/jobs", &list)
	n := 0
	for _, j := range list.Jobs {
		if j.ID == id {
			n++
			if j.State != replicate.StateDone {
				t.Fatalf("the taken-over job after its replica came back: %s", j.State)
			}
		}
	}
	if n != 1 {
		t.Fatalf("the fleet lists the job %d times", n)
	}

	// 8. The bucket stops (SIGSTOP): a cold pull through the balancer is
	// answered as fast as upstream answers; once the bucket is back,
	// every blob of it reaches the bucket.
	cold := src.PushImage(t, "proj/cold", "1", 94, 2, 64<<10, amd64)
	s3.Pause()
	resumedBucket := false
	defer func() {
		if !resumedBucket {
			s3.Resume()
		}
	}()
	start := time.Now()
	f.pull(t, lb, "proj/cold", "1", cold.Manifest.Digest)
	for _, b := range cold.Blobs() {
		resp := f.do(t, lb, http.MethodGet, "/v2/proj/cold/blobs/"+b.Digest.String())
		got, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusOK || digest.FromBytes(got) != b.Digest {
			t.Fatalf("a cold blob with the bucket stopped: %d %v", resp.StatusCode, err)
		}
	}
	// A bound far above a loopback pull and far below the minutes a pull
	// used to hang for a stopped bucket: no timing is asserted closer.
	if took := time.Since(start); took > 20*time.Second {
		t.Fatalf("a cold pull with the bucket stopped took %s", took)
	}
	s3.Resume()
	resumedBucket = true
	for _, b := range cold.Blobs() {
		key := "/docker/registry/v2/blobs/sha256/" + b.Digest.Encoded()[:2] + "/" + b.Digest.Encoded() + "/data"
		waitFor(t, "the bucket holds "+b.Digest.String(), func() bool {
			got, err := os.ReadFile(s3.ObjectFile(key))
			return err == nil && digest.FromBytes(got) == b.Digest
		})
	}
}

// testFleet is three wharf processes of one cluster, and how to restart
// each as it was.
type testFleet struct {
	procs   []*wharfProc
	configs []string
	token   string
}

func newTestFleet(t *testing.T, s3 *s3test.Server, src, dst *upstreamtest.Registry) *testFleet {
	t.Helper()
	dir := t.TempDir()
	secret, peerSecret, token := filepath.Join(dir, "harbor-b"), filepath.Join(dir, "peer"), filepath.Join(dir, "api-token")
	os.WriteFile(secret, []byte("s3cret\n"), 0o600)
	os.WriteFile(peerSecret, []byte(fleetSecret+"\n"), 0o600)
	os.WriteFile(token, []byte("e2e-token-0123456789\n"), 0o600)
	t.Setenv("WHARF_TEST_S3_SECRET", s3.SecretKey)
	ca := newCA(t)
	free := func() string {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		return l.Addr().String()
	}
	var clients, peers []string
	for range 3 {
		clients, peers = append(clients, free()), append(peers, free())
	}
	f := &testFleet{token: token}
	for i := range 3 {
		cert, key := ca.issueFor(t, dir, fmt.Sprint("peer-", i), int64(10+i), x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth)
		f.configs = append(f.configs, fmt.Sprintf(`listen: %q
storage:
  root: %s
  driver: s3
  s3: {bucket: %s, region: us-east-1, regionendpoint: %s, accesskey: %s, secretkey: "${WHARF_TEST_S3_SECRET}", forcepathstyle: true, secure: false}
server:
  trusted_proxies: [127.0.0.1]
cluster:
  peers: [https://%s]
  advertise: https://%s
  listen: %s
  tls: {cert_file: %s, key_file: %s, client_ca_file: %s}
  secret_file: %s
upstreams:
  - name: harbor-a.example.com
    url: %s
    default: true
    insecure: true
    tag_ttl: 1s
targets:
  - name: harbor-b
    url: %s
    username: robot$push
    password_file: %s
    insecure: true
api:
  token_file: %s
replication:
  - name: app-to-b
    sources: [harbor-a.example.com/proj/app]
    target: harbor-b
    on_pull: true
    schedule: '@every 2s'
`, clients[i], filepath.Join(dir, fmt.Sprint("store-", i)), s3.Bucket, s3.URL, s3.AccessKey, strings.Join(peers, ", https://"), peers[i], peers[i],
			cert, key, ca.file, peerSecret, src.URL, dst.URL, secret, token))
		f.procs = append(f.procs, startWharf(t, f.configs[i]))
	}
	return f
}

func (f *testFleet) addrs() []string {
	var out []string
	for _, w := range f.procs {
		out = append(out, w.addr)
	}
	return out
}

// restart starts replica i again after a kill, on its own store.
func (f *testFleet) restart(t *testing.T, i int) { f.procs[i] = startWharf(t, f.configs[i]) }

func (f *testFleet) do(t *testing.T, addr, method, path string) *http.Response {
	t.Helper()
	req, _ := http.NewRequestWithContext(t.Context(), method, "http://"+addr+path, nil)
	req.Header.Set("Authorization", "Bearer e2e-token-0123456789")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

// try is api that returns a transport error rather than failing the
// test: while a replica dies behind the balancer, a connection may drop.
func (f *testFleet) try(t *testing.T, addr, method, path string, v any) (int, error) {
	t.Helper()
	req, _ := http.NewRequestWithContext(t.Context(), method, "http://"+addr+path, nil)
	req.Header.Set("Authorization", "Bearer e2e-token-0123456789")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusOK {
		if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
			return 0, err
		}
	}
	return resp.StatusCode, nil
}

// api calls the API at addr and decodes a 200 answer into v.
func (f *testFleet) api(t *testing.T, addr, method, path string, v any) int {
	t.Helper()
	resp := f.do(t, addr, method, path)
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusOK {
		if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
	}
	return resp.StatusCode
}

// pull GETs a manifest and returns its digest; want, if set, is checked.
func (f *testFleet) pull(t *testing.T, addr, repo, tag string, want digest.Digest) digest.Digest {
	t.Helper()
	resp := f.do(t, addr, http.MethodGet, "/v2/"+repo+"/manifests/"+tag)
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	got := digest.FromBytes(body)
	if err != nil || resp.StatusCode != http.StatusOK || (want != "" && got != want) || resp.Header.Get("Docker-Content-Digest") != got.String() {
		t.Fatalf("GET %s:%s: %d %v, %s; want %s", repo, tag, resp.StatusCode, err, got, want)
	}
	return got
}

func (f *testFleet) rule(t *testing.T, addr string) api.Rule {
	t.Helper()
	var list api.RuleList
	if status := f.api(t, addr, http.MethodGet, "/api/v1/replication", &list); status != http.StatusOK || len(list.Rules) != 1 {
		t.Fatalf("the rules: %d %+v", status, list)
	}
	return list.Rules[0]
}

func (f *testFleet) ruleRuns(t *testing.T, addr string) int { return f.rule(t, addr).Runs }

// ruleOwner is the index of the replica that runs the rule.
func (f *testFleet) ruleOwner(t *testing.T, addr string) int {
	t.Helper()
	r := f.rule(t, addr)
	for i, c := range f.configs {
		if strings.Contains(c, "advertise: "+r.Replica+"\n") {
			return i
		}
	}
	t.Fatalf("the rule's replica %q is none of the fleet", r.Replica)
	return -1
}

// ruleJobs counts the jobs of the rule, as the fleet lists them.
func (f *testFleet) ruleJobs(t *testing.T, addr string) int {
	t.Helper()
	var list struct{ Jobs []replicate.Job }
	if status := f.api(t, addr, http.MethodGet, "/api/v1/jobs", &list); status != http.StatusOK {
		t.Fatalf("jobs: %d", status)
	}
	n := 0
	for _, j := range list.Jobs {
		if j.Rule == "app-to-b" {
			n++
		}
	}
	return n
}

// recordPuts records the digests of the manifests dst takes under path,
// in order.
func recordPuts(dst *upstreamtest.Registry, path string) func() []digest.Digest {
	var mu sync.Mutex
	var got []digest.Digest
	dst.SetHook(func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method == http.MethodPut && r.URL.Path == path {
			body, _ := io.ReadAll(r.Body)
			r.Body = io.NopCloser(strings.NewReader(string(body)))
			mu.Lock()
			got = append(got, digest.FromBytes(body))
			mu.Unlock()
		}
		return false
	})
	return func() []digest.Digest {
		mu.Lock()
		defer mu.Unlock()
		return append([]digest.Digest(nil), got...)
	}
}

// startHaproxy balances each request over backends round robin, as a
// Kubernetes Service with an L7 balancer would, and returns its address.
func startHaproxy(t *testing.T, bin string, backends []string) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	var b strings.Builder
	fmt.Fprintf(&b, `global
  maxconn 512
defaults
  mode http
  timeout connect 2s
  timeout client 5m
  timeout server 5m
  option http-server-close
  option forwardfor
  option redispatch
  retries 3
frontend wharf
  bind %s
  default_backend replicas
backend replicas
  balance roundrobin
  option httpchk GET /healthz
`, addr)
	for i, a := range backends {
		fmt.Fprintf(&b, "  server w%d %s check inter 300ms fall 2 rise 1\n", i, a)
	}
	cfg := filepath.Join(t.TempDir(), "haproxy.cfg")
	if err := os.WriteFile(cfg, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-db", "-f", cfg)
	var logs strings.Builder
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
		if t.Failed() {
			t.Logf("haproxy:\n%s", logs.String())
		}
	})
	waitFor(t, "haproxy listens", func() bool {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	return addr
}
