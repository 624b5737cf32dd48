package main

import (
	"bytes"
	"fmt"
	"io"
	"log/slog"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/wharf-registry/wharf/api"
	"github.com/wharf-registry/wharf/server"
	"github.com/wharf-registry/wharf/storage"
	"github.com/wharf-registry/wharf/upstream/upstreamtest"
)

// inProcess serves the configuration body from this process, wired as
// wharf serve wires it, and returns its base URL.
func inProcess(t *testing.T, body string) string {
	t.Helper()
	cfg, err := loadConfig(writeConfig(t, body))
	if err != nil {
		t.Fatal(err)
	}
	store, err := storage.Open(cfg.Storage.Root, storage.Options{})
	if err != nil {
		t.Fatal(err)
	}
	scfg, closeFleet, err := cfg.server(prometheus.NewRegistry(), slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	srv, err := server.New(store, scfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv.Handler)
	t.Cleanup(func() {
		hs.Close()
		srv.Close(t.Context())
		closeFleet()
		store.Close()
	})
	return hs.URL
}

// On a terminal, --wait redraws a bar per running image and the overall
// bytes in place, and leaves a line per finished image.
func TestPrefetchProgressOnATerminal(t *testing.T) {
	src := upstreamtest.New(t, upstreamtest.WithBandwidth(1<<20)) // 2 MiB take two seconds: bars get drawn
	src.PushImage(t, "proj/slow", "1", 75, 2, 1<<20, ocispec.Platform{OS: "linux", Architecture: "amd64"})
	dst := upstreamtest.New(t, upstreamtest.WithBasicAuth("robot$push", "s3cret"))
	dir := t.TempDir()
	secret, token := filepath.Join(dir, "harbor-b"), filepath.Join(dir, "api-token")
	os.WriteFile(secret, []byte("s3cret\n"), 0o600)
	os.WriteFile(token, []byte("unit-token-0123456789\n"), 0o600)
	base := inProcess(t, fmt.Sprintf("storage: {root: %s}\nupstreams:\n  - {name: harbor-a.example.com, url: %s, default: true, insecure: true}\n"+
		"targets:\n  - {name: harbor-b, url: %s, username: robot$push, password_file: %s, insecure: true}\napi: {token_file: %s}\n",
		filepath.Join(dir, "store"), src.URL, dst.URL, secret, token))
	var stdout, stderr bytes.Buffer
	err := prefetchCmd([]string{"--server", base, "--token-file", token, "--push-to", "harbor-b", "--wait",
		"harbor-a.example.com/proj/slow:1"}, &stdout, &stderr, true)
	if err != nil {
		t.Fatalf("%v\n%s", err, stderr.String())
	}
	out := stderr.String()
	for _, want := range []string{"] ", " / 2.0 MiB   harbor-a.example.com/proj/slow:1\n", "0/1 images, ", "\x1b[2A\x1b[J",
		"done      harbor-a.example.com/proj/slow:1 -> proj/slow:1 ", "done: 1 of 1 images done"} {
		if !strings.Contains(out, want) {
			t.Fatalf("terminal output lacks %q:\n%q", want, out)
		}
	}
}

// An image pushed as a filtered index shows the digest the target holds.
func TestImageLineShowsTheTargetsDigest(t *testing.T) {
	src, filtered := digest.FromString("source index"), digest.FromString("filtered index")
	line := imageLine(api.Image{State: api.StateDone, Source: "a/proj/multi:v1", Target: "proj-b/multi:v1", Digest: src, FilteredDigest: filtered})
	if !strings.Contains(line, "proj-b/multi:v1 "+filtered.String()+" (filtered from "+src.String()+")") {
		t.Fatalf("%s", line)
	}
}
