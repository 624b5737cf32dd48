//go:build e2e

package main

import (
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/wharf-registry/wharf/upstream/upstreamtest"
)

// The benchmark, whose figures the README quotes, runs through every
// scenario at tiny sizes: each measures Wharf, and each is there.
func TestBenchAtTinySizes(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "wharf")
	if out, err := exec.Command("go", "build", "-o", bin, "../wharf").CombinedOutput(); err != nil {
		t.Fatalf("build wharf: %v\n%s", err, out)
	}
	b := &bench{wharfBin: bin, duration: 200 * time.Millisecond, workers: 2, rtt: 5 * time.Millisecond,
		sizes: sizes{big: 256 << 10, small: 16 << 10, huge: 1 << 20, images: 3}}
	defer b.cleanup()
	rows, err := b.run()
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, r := range rows {
		seen[r.Scenario] = true
		if r.Wharf < 0 {
			t.Errorf("%s: Wharf not measured", r.Scenario)
		}
	}
	for _, want := range []string{"cold pull, 4 × 64 MiB", "manifest by tag, authenticated", "promote all to a new registry, cold",
		"replicate all by a rule, cold (direct: skopeo sync)", "cold pull, 4 × 64 MiB @5ms", "3 replicas: upstream bytes / image"} {
		if !seen[want] {
			t.Errorf("no %q row among %d", want, len(rows))
		}
	}
}

// The scale bench at its smallest size, 10,000 blobs: every measure is
// taken and positive, so that make bench-scale cannot rot.
func TestScaleBenchAt10k(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "wharf")
	if out, err := exec.Command("go", "build", "-o", bin, "../wharf").CombinedOutput(); err != nil {
		t.Fatalf("build wharf: %v\n%s", err, out)
	}
	s := &scaleBench{bench: &bench{wharfBin: bin, duration: 300 * time.Millisecond, workers: 2}, churn: 1, versitygw: upstreamtest.Tool(t, "versitygw")}
	defer s.cleanup()
	rows, missed, err := s.runScale([]int{10_000})
	if err != nil {
		t.Fatal(err)
	}
	if len(missed) != 0 {
		t.Fatalf("one size is held to no target: %v", missed)
	}
	got := map[string]float64{}
	for _, r := range rows {
		got[r.Measure] = r.Values[0]
	}
	for _, tg := range scaleTargets {
		if v, ok := got[tg.measure]; !ok || v <= 0 {
			t.Errorf("%s: %v (measured: %v)", tg.measure, v, ok)
		}
	}
	for _, m := range []string{"index on disk per record", "RSS idle", "wharf check --repair (indexing)", "wharf check, verifying", "wharf gc --dry-run over the bucket", "wharf gc: peak RSS", "eviction: start to the first removal"} {
		if got[m] <= 0 {
			t.Errorf("%s: %v", m, got[m])
		}
	}
}
