package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
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

	_ "github.com/distribution/distribution/v3/registry/proxy"
)

// target is one registry endpoint under test, started cold.
type target struct {
	url  string
	stop func()
	rss  func() float64 // peak RSS in MiB, or -1 when not its own process
	cpu  func() float64 // CPU seconds used so far, or -1 when not its own process
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
%s%s`, b.debugListen, filepath.Join(dir, "store"), upstreamURL, upstreamLines, strings.Join(extra, ""))
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
		rss: func() float64 { return peakRSS(cmd.Process.Pid) },
		cpu: func() float64 { return cpuSeconds(cmd.Process.Pid) },
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
