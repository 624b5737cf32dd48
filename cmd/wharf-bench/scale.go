package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/opencontainers/go-digest"
)

// How Wharf's costs grow with its store: `wharf-bench -scale 10000,...`
// builds, per N, a store of N real blobs in distribution's layout (a
// third of them image manifests, each naming a config and a layer of
// its own), N/10 repositories holding them (a tenth of the repositories
// with many tags), N tags and a few hundred job records, then measures
// the real binary on it. The largest N is held to the targets below
// against the smallest.

// scaleRow is one measure at every N.
type scaleRow struct {
	Measure string    `json:"measure"`
	Unit    string    `json:"unit"`
	Values  []float64 `json:"values"` // one per N, in order
}

// scaleTarget is what the largest N must reach: a bound on the value, or
// on its ratio to the smallest N's.
type scaleTarget struct {
	measure string
	max     float64 // the value must be at most this (0: no bound)
	min     float64 // at least this (0: no bound)
	ratio   float64 // value / smallest N's must be at least (throughput) or at most (latency, size) this; 0: none
	lower   bool    // the ratio is a floor, not a ceiling
}

// scaleTargets are issue 26's, at 1M blobs on a 2-core machine.
var scaleTargets = []scaleTarget{
	{measure: "start-up to first answer", max: 3},
	{measure: "RSS idle", max: 256},
	{measure: "manifest by tag", ratio: 0.85, lower: true},
	{measure: "manifest by tag p99", ratio: 2},
	{measure: "blob by digest", ratio: 0.85, lower: true},
	{measure: "blob by digest p99", ratio: 2},
	{measure: "manifest by tag, Zipf", ratio: 0.85, lower: true},
	{measure: "blob by digest, Zipf", ratio: 0.85, lower: true},
	{measure: "eviction", min: 5000},
	{measure: "pulls' p99 during eviction / without", max: 2},
	{measure: "wharf check, no verification", min: 20000},
	{measure: "index after churn / live", max: 2},
}

// pacedRate is the pulls per second of the hot set around eviction: a
// busy mirror's load, well under what the machine can serve, so that the
// p99 shows what eviction costs the pulls rather than a queue.
const pacedRate = 2000

// evictionProfile is how long a CPU profile of eviction runs (-pprof).
const evictionProfile = 10 * time.Second

type scaleBench struct {
	*bench
	versitygw string  // the S3 server wharf gc is measured against; "": not measured
	churn     float64 // tag updates per blob in the churn pass (10: ten million at a million blobs)
}

// runScale measures every N and returns the rows; missed lists the
// targets the largest N misses.
func (s *scaleBench) runScale(ns []int) (rows []scaleRow, missed []string, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%v", r)
		}
	}()
	vals := map[string][]float64{}
	units := map[string]string{}
	var order []string
	for _, n := range ns {
		fmt.Fprintf(os.Stderr, "scale %d: building the store...\n", n)
		got, err := s.one(n)
		if err != nil {
			return nil, nil, fmt.Errorf("a store of %d blobs: %w", n, err)
		}
		for _, m := range got {
			if _, ok := units[m.name]; !ok {
				order = append(order, m.name)
				units[m.name] = m.unit
			}
			vals[m.name] = append(vals[m.name], m.v)
		}
	}
	for _, name := range order {
		rows = append(rows, scaleRow{Measure: name, Unit: units[name], Values: vals[name]})
	}
	if len(ns) < 2 {
		return rows, nil, nil
	}
	for _, t := range scaleTargets {
		v := vals[t.measure]
		if len(v) != len(ns) {
			continue
		}
		last, first := v[len(v)-1], v[0]
		switch {
		case t.max > 0 && last > t.max:
			missed = append(missed, fmt.Sprintf("%s: %.4g, target at most %g", t.measure, last, t.max))
		case t.min > 0 && last < t.min:
			missed = append(missed, fmt.Sprintf("%s: %.4g, target at least %g", t.measure, last, t.min))
		case t.ratio > 0 && t.lower && first > 0 && last/first < t.ratio:
			missed = append(missed, fmt.Sprintf("%s: %.2f× the smallest store's, target at least %g×", t.measure, last/first, t.ratio))
		case t.ratio > 0 && !t.lower && first > 0 && last/first > t.ratio:
			missed = append(missed, fmt.Sprintf("%s: %.2f× the smallest store's, target at most %g×", t.measure, last/first, t.ratio))
		}
	}
	return rows, missed, nil
}

type measure struct {
	name, unit string
	v          float64
}

// synthetic is the store's content, as the clients will ask for it.
type synthetic struct {
	tags      [][3]string // repository, tag, manifest digest
	blobs     [][2]string // repository, blob digest
	manifests []digest.Digest
	bytes     int64 // of every blob
	count     int   // blobs
}

// one builds a store of n blobs and measures it.
func (s *scaleBench) one(n int) ([]measure, error) {
	dir := s.TempDir()
	root := filepath.Join(dir, "store")
	var out []measure
	add := func(name, unit string, v float64) {
		out = append(out, measure{name, unit, v})
		fmt.Fprintf(os.Stderr, "  %-40s %12.4g %s\n", name, v, unit)
	}
	syn, err := buildStore(root, n)
	if err != nil {
		return nil, err
	}
	debug := ""
	if s.profileDir != "" {
		if debug, err = freeAddr(); err != nil {
			return nil, err
		}
	}
	cfg := func(extra string) string {
		return fmt.Sprintf(`listen: "127.0.0.1:0"
debug_listen: %q
storage:
  root: %s
%supstreams:
  - name: docker.io
    url: http://127.0.0.1:9
    default: true
    insecure: true
    tag_ttl: 10000h
`, debug, root, extra)
	}
	cfgPath := filepath.Join(dir, "check.yml")
	if err := os.WriteFile(cfgPath, []byte(cfg("")), 0o644); err != nil {
		return nil, err
	}
	check := func(args ...string) (float64, error) {
		return timed(func() error {
			cmd := exec.Command(s.wharfBin, append([]string{"check", "--config", cfgPath}, args...)...)
			if out, err := cmd.CombinedOutput(); err != nil {
				return fmt.Errorf("wharf check %v: %v\n%s", args, err, out)
			}
			return nil
		})
	}
	// The blobs were written as files only: --repair indexes them, as it
	// does a store whose index was lost.
	d, err := check("--repair", "--sample", "0")
	if err != nil {
		return nil, err
	}
	add("wharf check --repair (indexing)", "blobs/s", float64(n)/d)
	if err := typeManifests(root, syn.manifests); err != nil {
		return nil, err
	}
	if d, err = check("--sample", "0"); err != nil {
		return nil, err
	}
	add("wharf check, no verification", "blobs/s", float64(n)/d)
	if d, err = check("--sample", "1"); err != nil {
		return nil, err
	}
	add("wharf check, verifying", "blobs/s", float64(n)/d)
	add("wharf check, verifying (bytes)", "MiB/s", float64(syn.bytes)/(1<<20)/d)
	lsm, vlog := indexSize(filepath.Join(root, "index"))
	records := float64(n + len(syn.tags) + n/10) // blobs, tags, repositories (and their memberships, counted in the bytes)
	add("index on disk per record", "B", float64(lsm+vlog)/records)
	if gc, ok, err := s.measureGC(dir, root); err != nil {
		return nil, err
	} else if ok {
		add("wharf gc: blobs in the bucket", "blobs", float64(gc.objects/2))
		add("wharf gc --dry-run over the bucket", "s", gc.secs)
		add("wharf gc: its CPU per 1,000 blobs", "s", gc.cpu/float64(gc.objects/2)*1000)
		add("wharf gc: peak RSS", "MiB", gc.rssMiB)
	}

	// Start-up, RSS and request rates on the whole store.
	start := time.Now()
	t, err := s.startWharfConfig(dir, cfg(""), debug)
	if err != nil {
		return nil, err
	}
	rng := rand.New(rand.NewPCG(uint64(n), 1))
	tagURL := func() string {
		tg := syn.tags[rng.IntN(len(syn.tags))]
		return t.url + "/v2/" + tg[0] + "/manifests/" + tg[1]
	}
	if err := waitOK(tagURL(), 30*time.Second); err != nil {
		t.stop()
		return nil, err
	}
	add("start-up to first answer", "s", time.Since(start).Seconds())
	time.Sleep(time.Second) // idle: what it holds with nothing to do
	add("RSS idle", "MiB", currentRSS(t.pid))
	var mu sync.Mutex
	// Uniform: every tag and blob as likely as any, the worst case for
	// the store's caches. Zipf (s = 1.1): a few images pulled often and a
	// long tail, as a mirror's pulls are.
	zipfTags := rand.NewZipf(rand.New(rand.NewPCG(uint64(n), 3)), 1.1, 1, uint64(len(syn.tags)-1))
	zipfBlobs := rand.NewZipf(rand.New(rand.NewPCG(uint64(n), 4)), 1.1, 1, uint64(len(syn.blobs)-1))
	next := func(kind string) string {
		mu.Lock()
		defer mu.Unlock()
		switch kind {
		case "tag":
			return tagURL()
		case "tag zipf":
			tg := syn.tags[zipfTags.Uint64()]
			return t.url + "/v2/" + tg[0] + "/manifests/" + tg[1]
		case "blob zipf":
			b := syn.blobs[zipfBlobs.Uint64()]
			return t.url + "/v2/" + b[0] + "/blobs/" + b[1]
		}
		b := syn.blobs[rng.IntN(len(syn.blobs))]
		return t.url + "/v2/" + b[0] + "/blobs/" + b[1]
	}
	for _, kind := range []string{"tag", "blob", "tag zipf", "blob zipf"} {
		// Steady state, not a cold start: a first run warms what the
		// store keeps in memory, the second is measured.
		if _, _, err := loadMany(func() string { return next(kind) }, s.workers, s.duration); err != nil {
			t.stop()
			return nil, err
		}
		var rps, p99 float64
		perr := s.profiled(t, fmt.Sprintf("scale-%d-%s", n, strings.ReplaceAll(kind, " ", "-")), func() {
			rps, p99, err = loadMany(func() string { return next(kind) }, s.workers, s.duration)
		})
		if err = errors.Join(err, perr); err != nil {
			t.stop()
			return nil, err
		}
		name := map[string]string{"tag": "manifest by tag", "blob": "blob by digest",
			"tag zipf": "manifest by tag, Zipf", "blob zipf": "blob by digest, Zipf"}[kind]
		add(name, "req/s", rps)
		add(name+" p99", "ms", p99)
	}
	add("RSS under load (peak)", "MiB", t.rss())
	// The hot set: the tags pulled during eviction below, used last, as
	// what a mirror serves while it evicts is what it served lately.
	hot := syn.tags[:min(len(syn.tags), 1000)]
	hotURL := func() string {
		mu.Lock()
		defer mu.Unlock()
		tg := hot[rng.IntN(len(hot))]
		return t.url + "/v2/" + tg[0] + "/manifests/" + tg[1]
	}
	for _, tg := range hot {
		if err := get(t.url+"/v2/"+tg[0]+"/manifests/"+tg[1], -1); err != nil {
			t.stop()
			return nil, err
		}
	}
	// The hot set pulled at a steady rate, as a busy mirror serves it:
	// the pulls' p99 without eviction, to hold the p99 during eviction to.
	_, base, err := loadPaced(hotURL, s.workers, pacedRate, s.duration, nil)
	t.stop() // access times are written at the stop
	if err != nil {
		return nil, err
	}

	// Eviction of a tenth of the store, with the same pulls meanwhile.
	size := syn.bytes
	maxSize := int64(float64(size) / 0.95 * 0.999)
	evictCfg := fmt.Sprintf("  max_size: %dB\n  high_watermark: 0.95\n  low_watermark: 0.85\n", maxSize)
	start = time.Now()
	if t, err = s.startWharfConfig(dir, cfg(evictCfg), debug); err != nil {
		return nil, err
	}
	before := float64(syn.count) // not read from the Wharf: it may have begun evicting already
	// The pulls run from the start; those of the eviction proper, from
	// the first blob gone, are measured (the first ones warm the new
	// process's caches).
	pulls := func(stop chan struct{}) (wait func() (rps, p99 float64, err error)) {
		done := make(chan struct{})
		var rps, p99 float64
		var err error
		go func() {
			defer close(done)
			rps, p99, err = loadPaced(hotURL, s.workers, pacedRate, 10*time.Minute, stop)
		}()
		return func() (float64, float64, error) { close(stop); <-done; return rps, p99, err }
	}
	warming := pulls(make(chan struct{}))
	// Eviction starts at the cache's first sweep after start, with a
	// walk of every blob record: timed from start to the first blob gone,
	// and from there to the tenth of the store gone. Polled as a
	// Prometheus would, only more often: the removals are timed from the
	// last poll that saw the store whole, so a small store evicted
	// between two polls still takes a poll's time, never none.
	want := before - float64(n)/10*0.95
	deadline := time.Now().Add(10 * time.Minute)
	evStart := time.Now()
	for metricValue(t.url, "wharf_store_blobs") >= before && time.Now().Before(deadline) {
		evStart = time.Now()
		time.Sleep(100 * time.Millisecond) // polling another process
	}
	add("eviction: start to the first removal", "s", evStart.Sub(start).Seconds())
	_, _, werr := warming()
	measured := pulls(make(chan struct{}))
	wait := s.profile(t, fmt.Sprintf("scale-%d-eviction", n), evictionProfile)
	for metricValue(t.url, "wharf_store_blobs") > want && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond) // polling another process
	}
	evicted := before - metricValue(t.url, "wharf_store_blobs")
	evSecs := time.Since(evStart).Seconds()
	rps, p99, lerr := measured()
	perr := wait()
	t.stop()
	if err := errors.Join(werr, lerr, perr); err != nil {
		return nil, err
	}
	add("eviction", "blobs/s", evicted/evSecs)
	add("pulls' p99 without eviction", "ms", base)
	add("pulls' p99 during eviction", "ms", p99)
	add("pulls' p99 during eviction / without", "×", p99/base)
	add("pulls during eviction", "req/s", rps)

	// Churn: months of tag updates and blob insert/evict cycles, then the
	// index's own collection; the index must come back near its live size.
	updates := int(float64(n) * s.churn)
	start = time.Now()
	live, after, err := churn(root, syn, updates, n/10, n)
	if err != nil {
		return nil, err
	}
	add("index before churn", "MiB", float64(live)/(1<<20))
	add("index after churn", "MiB", float64(after)/(1<<20))
	add("index after churn / live", "×", float64(after)/float64(live))
	add("churn: tag updates, jobs, blob cycles", "s", time.Since(start).Seconds())
	return out, nil
}

// waitOK polls url until it answers 200.
func waitOK(url string, within time.Duration) error {
	deadline := time.Now().Add(within)
	for {
		resp, err := client.Get(url)
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: no 200 within %v (%v)", url, within, err)
		}
		time.Sleep(5 * time.Millisecond) // polling another process
	}
}

// metricValue reads one unlabelled metric from a Wharf's /metrics.
func metricValue(base, name string) float64 {
	resp, err := client.Get(base + "/metrics")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) == 2 && f[0] == name {
			v, _ := strconv.ParseFloat(f[1], 64)
			return v
		}
	}
	return -1
}

// currentRSS is a process's resident memory now, in MiB.
func currentRSS(pid int) float64 {
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return -1
	}
	for _, line := range bytes.Split(status, []byte("\n")) {
		if f := strings.Fields(string(line)); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseFloat(f[1], 64)
			return kb / 1024
		}
	}
	return -1
}

func printScale(w io.Writer, ns []int, rows []scaleRow) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprint(tw, "measure\tunit\t")
	for _, n := range ns {
		fmt.Fprintf(tw, "N=%d\t", n)
	}
	if len(ns) > 1 {
		fmt.Fprint(tw, "largest / smallest\t")
	}
	fmt.Fprintln(tw)
	for _, r := range rows {
		fmt.Fprintf(tw, "%s\t%s\t", r.Measure, r.Unit)
		for _, v := range r.Values {
			fmt.Fprintf(tw, "%.4g\t", v)
		}
		if len(r.Values) > 1 && r.Values[0] != 0 {
			fmt.Fprintf(tw, "%.2f×\t", r.Values[len(r.Values)-1]/r.Values[0])
		}
		fmt.Fprintln(tw)
	}
	tw.Flush()
}
