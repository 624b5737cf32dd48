package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/distribution/distribution/v3/configuration"
	"github.com/distribution/distribution/v3/registry/handlers"
	"github.com/wharf-registry/wharf/upstream/upstreamtest"

	_ "github.com/distribution/distribution/v3/registry/proxy"
)

// target is one registry endpoint under test, started cold.
type target struct {
	url  string
	stop func()
	rss  func() float64 // peak RSS in MiB, or -1 when not its own process
	cpu  func() float64 // CPU seconds used so far, or -1 when not its own process
	// debug is the pprof address of a Wharf started with a profile
	// directory, else "".
	debug string
	root  string // a Wharf's storage root, else ""
	pid   int    // a Wharf's process, else 0
}

// stored waits until a Wharf target holds blobs in its store: a fill
// releases the last byte to its clients once the digest verifies, and only
// then makes the blob durable (fsync, rename into place, index). CPU per
// cold GiB counts that too, and the warm pull after it must not. It looks
// at the files, not at the target, so that waiting costs the target
// nothing. Other targets return at once.
func (t *target) stored(blobs []upstreamtest.Blob) error {
	if t.root == "" {
		return nil
	}
	deadline := time.Now().Add(30 * time.Second)
	for _, b := range blobs {
		p := filepath.Join(t.root, "docker", "registry", "v2", "blobs", "sha256", b.Digest.Encoded()[:2], b.Digest.Encoded(), "data")
		for {
			if _, err := os.Stat(p); err == nil {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("%s: blob %s not stored after 30 s", t.url, b.Digest)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	return nil
}

// profileWindow is how long a profile runs: a cold pull and then some.
const profileWindow = 4 * time.Second

// profiled runs f inside a CPU profile of t written to profileDir/name.pprof
// (f alone without a profile directory or a Wharf). The profile starts a
// moment before f, and is read once its window closes.
func (b *bench) profiled(t *target, name string, f func()) error {
	wait := b.profile(t, name, profileWindow)
	f()
	return wait()
}

// profile starts a CPU profile of t over window, to be written to
// profileDir/name.pprof, and returns what waits for it (nothing happens
// without a profile directory or a Wharf).
func (b *bench) profile(t *target, name string, window time.Duration) (wait func() error) {
	if b.profileDir == "" || t.debug == "" {
		return func() error { return nil }
	}
	done := make(chan error, 1)
	go func() {
		url := fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", t.debug, int(window/time.Second))
		resp, err := http.Get(url)
		if err != nil {
			done <- err
			return
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			done <- fmt.Errorf("%s: %s", url, resp.Status)
			return
		}
		out, err := os.Create(filepath.Join(b.profileDir, name+".pprof"))
		if err == nil {
			_, err = io.Copy(out, resp.Body)
			err = errors.Join(err, out.Close())
		}
		done <- err
	}()
	time.Sleep(200 * time.Millisecond) // the profile's request reaches Wharf: a measuring tool's margin, not a test's synchronisation
	return func() error {
		if err := <-done; err != nil {
			return fmt.Errorf("profile %s: %w", name, err)
		}
		fmt.Fprintf(os.Stderr, "wrote %s\n", filepath.Join(b.profileDir, name+".pprof"))
		return nil
	}
}

// freeAddr is a loopback address nothing listens on now.
func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// startDistribution runs distribution's proxy mode in process, caching on
// the filesystem as a real deployment would.
func (b *bench) startDistribution(upstreamURL string) (*target, error) {
	cfg := &configuration.Configuration{
		Storage: configuration.Storage{
			"filesystem": configuration.Parameters{"rootdirectory": b.TempDir()},
			"maintenance": configuration.Parameters{"uploadpurging": map[any]any{
				"enabled": false,
			}},
		},
		Proxy: configuration.Proxy{RemoteURL: upstreamURL},
	}
	cfg.Log.Level = "error"
	cfg.Log.AccessLog.Disabled = true
	cfg.HTTP.Secret = "wharf-bench"
	srv := httptest.NewServer(handlers.NewApp(context.Background(), cfg))
	return &target{url: srv.URL, stop: srv.Close, rss: func() float64 { return -1 }, cpu: func() float64 { return -1 }}, nil
}

var listenRE = regexp.MustCompile(`msg=listening addr=(\S+)`)

// startWharf runs the real binary on a fresh store; extra is appended to
// its config.
func (b *bench) startWharf(upstreamURL string, extra ...string) (*target, error) {
	return b.startWharfAuth(upstreamURL, "", extra...)
}

// startWharfAuth is startWharf with lines added to the upstream's entry
// (credentials).
func (b *bench) startWharfAuth(upstreamURL, upstreamLines string, extra ...string) (*target, error) {
	dir := b.TempDir()
	debug := ""
	if b.profileDir != "" {
		var err error
		if debug, err = freeAddr(); err != nil {
			return nil, err
		}
	}
	cfg := fmt.Sprintf(`listen: "127.0.0.1:0"
log_level: info
debug_listen: %q
storage:
  root: %s
upstreams:
  - name: docker.io
    url: %s
    default: true
    insecure: true
    tag_ttl: 1h
%s%s`, debug, filepath.Join(dir, "store"), upstreamURL, upstreamLines, strings.Join(extra, ""))
	t, err := b.startWharfConfig(dir, cfg, debug)
	if err == nil {
		t.root = filepath.Join(dir, "store")
	}
	return t, err
}

// startWharfConfig runs the real binary with config cfg, written to dir;
// debug is its pprof address or "".
func (b *bench) startWharfConfig(dir, cfg, debug string) (*target, error) {
	path := filepath.Join(dir, "wharf.yml")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		return nil, err
	}
	cmd := exec.Command(b.wharfBin, "serve", "--config", path)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s (run `make build` first): %w", b.wharfBin, err)
	}
	addr := make(chan string, 1)
	exited := make(chan struct{})
	go func() {
		defer close(exited)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			line := sc.Text()
			if m := listenRE.FindStringSubmatch(line); m != nil {
				addr <- m[1]
			} else if !strings.Contains(line, "level=INFO") {
				fmt.Fprintln(os.Stderr, "wharf:", line)
			}
		}
		io.Copy(io.Discard, stderr)
	}()
	var once sync.Once
	t := &target{
		stop: func() {
			once.Do(func() {
				cmd.Process.Signal(os.Interrupt)
				cmd.Wait()
			})
		},
		rss:   func() float64 { return peakRSS(cmd.Process.Pid) },
		pid:   cmd.Process.Pid,
		cpu:   func() float64 { return cpuSeconds(cmd.Process.Pid) },
		debug: debug,
	}
	b.Cleanup(t.stop) // never leave a wharf behind, whatever fails
	select {
	case a := <-addr:
		t.url = "http://" + a
		return t, nil
	case <-exited:
		t.stop()
		return nil, fmt.Errorf("wharf exited before listening (its output is above)")
	case <-time.After(30 * time.Second):
		t.stop()
		return nil, fmt.Errorf("wharf did not start within 30s")
	}
}

// peakRSS reads VmHWM of pid in MiB.
func peakRSS(pid int) float64 {
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return -1
	}
	for _, line := range strings.Split(string(status), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmHWM:" {
			kb, _ := strconv.ParseFloat(f[1], 64)
			return kb / 1024
		}
	}
	return -1
}
