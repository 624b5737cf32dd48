// Package s3test starts a real S3-compatible object store for tests:
// versitygw (Apache-2.0) with its POSIX backend, one bucket, on loopback.
// `make test` installs versitygw (.ci/install-tools); without it a test
// fails in CI and skips elsewhere.
package s3test

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/wharf-registry/wharf/upstream/upstreamtest"
)

// Server is a running object store.
type Server struct {
	URL       string // http://127.0.0.1:port
	Bucket    string
	AccessKey string
	SecretKey string
	root      string
	cmd       *exec.Cmd
}

// Start runs versitygw on a fresh directory with bucket "wharf"; it stops
// when the test ends.
//
// AWS_CA_BUNDLE is cleared for the test: with it set, aws-sdk-go v1
// replaces http.DefaultClient's transport each time a session is created,
// which races with the sessions a test's other replicas are using. The
// store is plain HTTP on loopback and needs no CA; a Wharf process opens
// one session and never uses http.DefaultClient.
func Start(t testing.TB) *Server {
	t.Helper()
	t.Setenv("AWS_CA_BUNDLE", "")
	return StartBinary(t, upstreamtest.Tool(t, "versitygw"))
}

// StartBinary is Start with the versitygw binary at bin, for programs that
// are not tests (the benchmark).
func StartBinary(t upstreamtest.T, bin string) *Server {
	t.Helper()
	s := &Server{Bucket: "wharf", AccessKey: "wharf-test", SecretKey: "wharf-test-secret", root: t.TempDir()}
	// The POSIX backend serves each directory under its root as a bucket.
	if err := os.Mkdir(filepath.Join(s.root, s.Bucket), 0o755); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	s.URL = "http://" + addr
	s.cmd = exec.Command(bin, "--access", s.AccessKey, "--secret", s.SecretKey, "--port", addr, "posix", s.root)
	logs, err := os.Create(filepath.Join(t.TempDir(), "versitygw.log"))
	if err != nil {
		t.Fatal(err)
	}
	s.cmd.Stdout, s.cmd.Stderr = logs, logs
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		s.Stop()
		logs.Close()
	})
	deadline := time.Now().Add(20 * time.Second)
	for {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
			return s
		}
		if time.Now().After(deadline) {
			out, _ := os.ReadFile(logs.Name())
			t.Fatalf("versitygw did not listen on %s within 20s: %v\n%s", addr, err, out)
		}
		time.Sleep(10 * time.Millisecond) // polling a condition, bounded
	}
}

// Params are the parameters of distribution's s3 driver for this store.
func (s *Server) Params() map[string]any {
	return map[string]any{
		"bucket": s.Bucket, "region": "us-east-1", "regionendpoint": s.URL,
		"accesskey": s.AccessKey, "secretkey": s.SecretKey,
		"forcepathstyle": true, "secure": false, "rootdirectory": "/",
	}
}

// ObjectFile is where the store keeps the object at key ("/a/b"): tests
// look at the bucket's layout and contents directly.
func (s *Server) ObjectFile(key string) string {
	return filepath.Join(s.root, s.Bucket, filepath.FromSlash(key))
}

// Stop ends the store (a test of an unreachable bucket); idempotent.
func (s *Server) Stop() {
	if s.cmd.ProcessState == nil {
		s.cmd.Process.Kill()
		s.cmd.Wait()
	}
}

// Pause freezes the store (SIGSTOP): connections are accepted by the
// kernel and never answered, as with a hung server. Resume thaws it.
func (s *Server) Pause() { s.cmd.Process.Signal(syscall.SIGSTOP) }

// Resume thaws a paused store; the requests it held are answered then.
func (s *Server) Resume() { s.cmd.Process.Signal(syscall.SIGCONT) }
