//go:build e2e

package e2e

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/wharf-registry/wharf/upstream/upstreamtest"
)

// testCA is a certificate authority made for one test.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	file string // PEM of the CA certificate
}

func newCA(t *testing.T) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "wharf test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	ca := &testCA{cert: cert, key: key, file: filepath.Join(t.TempDir(), "ca.crt")}
	writePEM(t, ca.file, "CERTIFICATE", der)
	return ca
}

// issue writes a certificate and key for 127.0.0.1 and localhost (a
// server's) or for name (a client's) to dir, with serial.
func (ca *testCA) issue(t *testing.T, dir, name string, serial int64, client bool) (certFile, keyFile string) {
	usage := x509.ExtKeyUsageServerAuth
	if client {
		usage = x509.ExtKeyUsageClientAuth
	}
	return ca.issueFor(t, dir, name, serial, usage)
}

// issueFor is issue with the usages given: with ServerAuth among them, for
// 127.0.0.1 and localhost.
func (ca *testCA) issueFor(t *testing.T, dir, name string, serial int64, usages ...x509.ExtKeyUsage) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: usages}
	if slices.Contains(usages, x509.ExtKeyUsageServerAuth) {
		tmpl.IPAddresses, tmpl.DNSNames = []net.IP{net.ParseIP("127.0.0.1")}, []string{"localhost"}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key")
	writePEM(t, certFile+".new", "CERTIFICATE", der)
	writePEM(t, keyFile+".new", "EC PRIVATE KEY", kb)
	// Renamed into place, key first, as a certificate manager does.
	for _, f := range []string{keyFile, certFile} {
		if err := os.Rename(f+".new", f); err != nil {
			t.Fatal(err)
		}
	}
	return certFile, keyFile
}

func writePEM(t *testing.T, file, kind string, der []byte) {
	t.Helper()
	if err := os.WriteFile(file, pem.EncodeToMemory(&pem.Block{Type: kind, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

func writeHtpasswd(t *testing.T, file string, users ...string) {
	t.Helper()
	var b strings.Builder
	for _, u := range users {
		h, err := bcrypt.GenerateFromPassword([]byte(u+"-pw"), bcrypt.MinCost)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&b, "%s:%s\n", u, h)
	}
	if err := os.WriteFile(file+".new", []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(file+".new", file); err != nil {
		t.Fatal(err)
	}
}

// secureWharf is a wharf binary serving TLS with users: ci may pull
// everything of docker.io (an in-process registry), anonymous nothing.
type secureWharf struct {
	*wharfProc
	ca       *testCA
	dir      string
	htpasswd string
	up       *upstreamtest.Registry
	img      upstreamtest.Image
}

func startSecureWharf(t *testing.T, extra string) *secureWharf {
	t.Helper()
	s := &secureWharf{ca: newCA(t), dir: t.TempDir(), up: upstreamtest.New(t)}
	s.img = s.up.PushImage(t, "library/app", "1.0", 70, 2, 64<<10, amd64)
	certFile, keyFile := s.ca.issue(t, s.dir, "server", 100, false)
	s.htpasswd = filepath.Join(s.dir, "htpasswd")
	writeHtpasswd(t, s.htpasswd, "ci")
	s.wharfProc = startWharf(t, mirrorConfig(t.TempDir(), s.up.URL)+fmt.Sprintf(`tls:
  cert_file: %s
  key_file: %s
auth:
  htpasswd: %s
  rules:
    - users: [ci, alice]
      pull: [docker.io/*]
      api: [prefetch]
%s`, certFile, keyFile, s.htpasswd, extra))
	s.up.Reset()
	return s
}

// client trusts the test CA.
func (s *secureWharf) client(cert ...tls.Certificate) *http.Client {
	pool := x509.NewCertPool()
	pool.AddCert(s.ca.cert)
	return &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, Certificates: cert},
		ForceAttemptHTTP2: true, DisableKeepAlives: true}}
}

// get sends GET path with Basic credentials (none if user is "").
func (s *secureWharf) get(c *http.Client, path, user string) (*http.Response, error) {
	req, err := http.NewRequest("GET", "https://"+s.addr+path, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", s.img.MediaType)
	if user != "" {
		req.SetBasicAuth(user, user+"-pw")
	}
	resp, err := c.Do(req)
	if err == nil {
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	return resp, err
}

// Real clients over TLS with a CA made here: crane (auth login, then a
// pull), skopeo --creds, containerd with a hosts.toml carrying the CA and
// an Authorization header; each refused without credentials.
func TestClientsOverTLSWithUsers(t *testing.T) {
	crane, skopeo := tool(t, "crane"), tool(t, "skopeo")
	s := startSecureWharf(t, "")
	ref := s.addr + "/library/app:1.0"

	// The exact answers, and HTTP/2.
	for user, want := range map[string]int{"": 401, "ci": 200, "mallory": 401} {
		resp, err := s.get(s.client(), "/v2/library/app/manifests/1.0", user)
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != want || resp.Proto != "HTTP/2.0" {
			t.Fatalf("%q: %d over %s, want %d over HTTP/2.0", user, resp.StatusCode, resp.Proto, want)
		}
		if want == 401 && resp.Header.Get("WWW-Authenticate") != `Basic realm="wharf"` {
			t.Fatalf("challenge %q", resp.Header.Get("WWW-Authenticate"))
		}
	}

	// crane: Go's TLS reads SSL_CERT_FILE; crane auth login writes DOCKER_CONFIG.
	env := []string{"SSL_CERT_FILE=" + s.ca.file, "DOCKER_CONFIG=" + t.TempDir()}
	if out, err := toolErr(env, crane, "manifest", ref); err == nil || !strings.Contains(out, "401") && !strings.Contains(out, "UNAUTHORIZED") {
		t.Fatalf("crane without credentials: %v\n%s", err, out)
	}
	runToolEnv(t, env, crane, "auth", "login", s.addr, "-u", "ci", "-p", "ci-pw")
	if got := runToolEnv(t, env, crane, "manifest", ref); string(got) != string(s.img.Manifest.Data) {
		t.Fatalf("crane manifest after login:\n%s", got)
	}
	runToolEnv(t, env, crane, "pull", "--format", "oci", ref, filepath.Join(t.TempDir(), "pulled"))

	// skopeo: --cert-dir holds the CA as *.crt.
	certDir := t.TempDir()
	caPEM, err := os.ReadFile(s.ca.file)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(certDir, "ca.crt"), caPEM, 0o644)
	if out, err := toolErr(nil, skopeo, "inspect", "--cert-dir", certDir, "docker://"+ref); err == nil || !strings.Contains(strings.ToLower(out), "unauthorized") && !strings.Contains(out, "401") {
		t.Fatalf("skopeo without credentials: %v\n%s", err, out)
	}
	var inspect struct{ Digest string }
	json.Unmarshal(runTool(t, skopeo, "inspect", "--cert-dir", certDir, "--creds", "ci:ci-pw", "docker://"+ref), &inspect)
	if inspect.Digest != s.img.Manifest.Digest.String() {
		t.Fatalf("skopeo inspect digest %q", inspect.Digest)
	}
	runTool(t, skopeo, "copy", "--insecure-policy", "--src-cert-dir", certDir, "--src-creds", "ci:ci-pw", "docker://"+ref, "oci:"+filepath.Join(t.TempDir(), "oci")+":app")
	if n := s.up.Count("GET", "blob"); n != 3 {
		t.Fatalf("upstream blob GETs: %d, want 3", n)
	}

	// containerd: hosts.toml with ca and an Authorization header.
	ctr, sock, dir := startContainerd(t)
	hosts := func(header string) string {
		h := filepath.Join(dir, "hosts"+fmt.Sprint(len(header)), "docker.io")
		os.MkdirAll(h, 0o755)
		toml := fmt.Sprintf("server = \"https://registry-1.docker.io\"\n\n[host.\"https://%s\"]\n  capabilities = [\"pull\", \"resolve\"]\n  ca = %q\n", s.addr, s.ca.file)
		if header != "" {
			toml += fmt.Sprintf("  [host.\"https://%s\".header]\n    Authorization = [%q]\n", s.addr, header)
		}
		os.WriteFile(filepath.Join(h, "hosts.toml"), []byte(toml), 0o644)
		return filepath.Dir(h)
	}
	dref := "docker.io/library/app:1.0"
	if out, err := toolErr(nil, ctr, "--address", sock, "images", "pull", "--snapshotter", "native", "--hosts-dir", hosts(""), dref); err == nil {
		t.Fatalf("ctr without credentials pulled:\n%s", out)
	} else if !strings.Contains(out, "401") && !strings.Contains(strings.ToLower(out), "unauthorized") {
		t.Fatalf("ctr without credentials failed otherwise: %v\n%s", err, out)
	}
	auth := "Basic " + base64.StdEncoding.EncodeToString([]byte("ci:ci-pw"))
	runTool(t, ctr, "--address", sock, "images", "pull", "--snapshotter", "native", "--hosts-dir", hosts(auth), dref)
	if out := string(runTool(t, ctr, "--address", sock, "images", "ls")); !strings.Contains(out, s.img.Manifest.Digest.String()) {
		t.Fatalf("ctr images ls:\n%s", out)
	}
}

// The CLI logs in as a user over TLS: --user with $WHARF_PASSWORD and
// --ca-file; without them it is told why.
func TestCLIOverTLSWithUsers(t *testing.T) {
	s := startSecureWharf(t, "")
	server := "https://" + s.addr
	if _, stderr, err := wharf(t, "jobs", "--server", server, "--ca-file", s.ca.file); err == nil || !strings.Contains(stderr, "401") && !strings.Contains(stderr, "UNAUTHORIZED") {
		t.Fatalf("jobs without a user: %v %s", err, stderr)
	}
	if _, stderr, err := wharf(t, "jobs", "--server", server, "--user", "ci"); err == nil || !strings.Contains(stderr, "WHARF_PASSWORD") {
		t.Fatalf("--user without a password: %v %s", err, stderr)
	}
	t.Setenv("WHARF_PASSWORD", "ci-pw")
	if _, stderr, err := wharf(t, "jobs", "--server", server, "--user", "ci"); err == nil || !strings.Contains(stderr, "certificate") {
		t.Fatalf("without --ca-file: %v %s", err, stderr)
	}
	out, stderr, err := wharf(t, "prefetch", "--server", server, "--ca-file", s.ca.file, "--user", "ci", "--wait", "--output", "json", "docker.io/library/app:1.0")
	var job struct{ ID, State, Owner string }
	if err != nil || json.Unmarshal([]byte(out), &job) != nil || job.State != "done" || job.Owner != "ci" {
		t.Fatalf("prefetch as ci: %v %+v\n%s%s", err, job, out, stderr)
	}
	if out, _, err := wharf(t, "jobs", "--server", server, "--ca-file", s.ca.file, "--user", "ci"); err != nil || !strings.Contains(out, job.ID) {
		t.Fatalf("jobs as ci: %v\n%s", err, out)
	}
	if n := s.up.Count("GET", "blob"); n != 3 {
		t.Fatalf("upstream blob GETs: %d, want 3", n)
	}
}

// Certificates and users change under load: no request fails, new
// connections get the new certificate, and a new user gets in, all
// without a restart.
func TestReloadUnderLoad(t *testing.T) {
	s := startSecureWharf(t, "")
	c := s.client()
	var failed atomic.Int64
	var sent atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for i := 0; i < 2000; i++ { // bounded: the test stops them far sooner
				select {
				case <-stop:
					return
				default:
				}
				resp, err := s.get(c, "/v2/library/app/manifests/1.0", "ci")
				sent.Add(1)
				if err != nil || resp.StatusCode != 200 {
					failed.Add(1)
				}
			}
		})
	}
	serial := func() int64 {
		conn, err := tls.Dial("tcp", s.addr, &tls.Config{RootCAs: c.Transport.(*http.Transport).TLSClientConfig.RootCAs})
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		return conn.ConnectionState().PeerCertificates[0].SerialNumber.Int64()
	}
	s.ca.issue(t, s.dir, "server", 200, false)
	waitFor(t, "the new certificate served", func() bool { return serial() == 200 })
	writeHtpasswd(t, s.htpasswd, "ci", "alice")
	waitFor(t, "alice let in", func() bool {
		resp, err := s.get(c, "/v2/library/app/manifests/1.0", "alice")
		return err == nil && resp.StatusCode == 200
	})
	close(stop)
	wg.Wait()
	if failed.Load() != 0 || sent.Load() == 0 {
		t.Fatalf("%d of %d requests failed during the reloads", failed.Load(), sent.Load())
	}
}

// With tls.client_ca_file a client without a certificate signed by that
// CA does not get past the handshake.
func TestMutualTLS(t *testing.T) {
	clientCA := newCA(t)
	s := startSecureWharf(t, "")
	s.stop(t)
	certFile, keyFile := s.ca.issue(t, s.dir, "server", 300, false)
	ccert, ckey := clientCA.issue(t, t.TempDir(), "client", 301, true)
	w := startWharf(t, mirrorConfig(t.TempDir(), s.up.URL)+fmt.Sprintf("tls: {cert_file: %s, key_file: %s, client_ca_file: %s}\nauth: {htpasswd: %s, rules: [{users: [ci], pull: [docker.io/*]}]}\n",
		certFile, keyFile, clientCA.file, s.htpasswd))
	s.wharfProc = w
	if _, err := s.get(s.client(), "/v2/", "ci"); err == nil {
		t.Fatal("a client without a certificate got an answer")
	}
	pair, err := tls.LoadX509KeyPair(ccert, ckey)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := s.get(s.client(pair), "/v2/library/app/manifests/1.0", "ci")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("with a client certificate: %v %v", resp, err)
	}
	// The client CA rotated: within a second the new CA's clients get in
	// and the old one's do not, without a restart.
	next := newCA(t)
	ncert, nkey := next.issue(t, t.TempDir(), "client", 302, true)
	npair, err := tls.LoadX509KeyPair(ncert, nkey)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(next.file)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(clientCA.file+".new", raw, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(clientCA.file+".new", clientCA.file); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the rotated client CA's client let in", func() bool {
		resp, err := s.get(s.client(npair), "/v2/library/app/manifests/1.0", "ci")
		return err == nil && resp.StatusCode == 200
	})
	if _, err := s.get(s.client(pair), "/v2/", "ci"); err == nil {
		t.Fatal("a client of the CA rotated out still got an answer")
	}
}

func runToolEnv(t *testing.T, env []string, name string, args ...string) []byte {
	t.Helper()
	out, err := toolErr(env, name, args...)
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return []byte(out)
}

// toolErr runs a client and returns its output, stderr included.
func toolErr(env []string, name string, args ...string) (string, error) {
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}
