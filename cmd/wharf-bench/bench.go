package main

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/crypto/bcrypt"

	"github.com/wharf-registry/wharf/upstream/upstreamtest"
)

// bench holds the run's temporary state; it is the upstreamtest.T of the
// seeding helpers, failing by panic.
type bench struct {
	wharfBin     string
	profileDir   string        // where CPU profiles of cold pulls go; "": none
	wanOnly      bool          // only the pass at rtt
	showRequests bool          // print the upstream requests of each cold pull at rtt
	upstreamRate int64         // bytes/s, 0 for unlimited
	rtt          time.Duration // the WAN pass's upstream latency; 0: no WAN pass
	duration     time.Duration
	workers      int
	sizes        sizes
	cleanups     []func()
}

// sizes are the data set's: the figures' names say the full sizes, which
// only a smoke test changes.
type sizes struct {
	big, small, huge int // bytes of a layer of the big image, of the small ones, of the huge one
	images           int // small images
}

var fullSizes = sizes{big: 64 << 20, small: 1 << 20, huge: 512 << 20, images: 50}

func (b *bench) Helper()                      {}
func (b *bench) Fatal(args ...any)            { panic(fmt.Sprint(args...)) }
func (b *bench) Fatalf(f string, args ...any) { panic(fmt.Sprintf(f, args...)) }
func (b *bench) Cleanup(f func())             { b.cleanups = append(b.cleanups, f) }
func (b *bench) TempDir() string {
	dir, err := os.MkdirTemp("", "wharf-bench-")
	if err != nil {
		panic(err)
	}
	b.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

func (b *bench) cleanup() {
	for i := len(b.cleanups) - 1; i >= 0; i-- {
		b.cleanups[i]()
	}
	b.cleanups = nil
}

// scoped runs f, then the cleanups f registered: a scenario's targets,
// stores and registries go when it ends, so that the page cache and heap
// they filled do not weigh on the scenarios after it.
func (b *bench) scoped(f func() error) error {
	outer := b.cleanups
	b.cleanups = nil
	defer func() {
		b.cleanup()
		b.cleanups = outer
		debug.FreeOSMemory() // in-memory registries' blobs
	}()
	return f()
}

var (
	amd64 = ocispec.Platform{OS: "linux", Architecture: "amd64"}
	arm64 = ocispec.Platform{OS: "linux", Architecture: "arm64"}
)

// seed pushes the data set: one image of 4 × 64 MiB incompressible layers,
// 50 images of 3 × 1 MiB layers and one two-platform index.
func seed(b *bench, up *upstreamtest.Registry) (big upstreamtest.Image, small []upstreamtest.Image, idx upstreamtest.Index) {
	image := func(repo, tag string, seed uint64, n, size int, p ocispec.Platform) upstreamtest.Image {
		var layers []upstreamtest.Blob
		var diffIDs []digest.Digest
		for i := range n {
			l := upstreamtest.NewBlob(upstreamtest.Random(seed*100+uint64(i), size))
			layers = append(layers, l)
			diffIDs = append(diffIDs, l.Digest)
		}
		return up.PushLayers(b, repo, tag, layers, diffIDs, p)
	}
	big = image("bench/big", "v1", 1, 4, b.sizes.big, amd64)
	for i := range b.sizes.images {
		small = append(small, image(fmt.Sprintf("bench/small-%02d", i), "v1", uint64(10+i), 3, b.sizes.small, amd64))
	}
	a := image("bench/multi", "", 90, 1, b.sizes.small, amd64)
	m := image("bench/multi", "", 91, 1, b.sizes.small, arm64)
	idx = up.PushIndex(b, "bench/multi", "v1", a, m)
	return big, small, idx
}

func imageSize(img upstreamtest.Image) int64 {
	n := int64(len(img.Manifest.Data))
	for _, bl := range img.Blobs() {
		n += int64(len(bl.Data))
	}
	return n
}

// run measures every scenario on every target and returns the rows.
func (b *bench) run() (rows []row, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%v", r)
		}
	}()
	fmt.Fprintln(os.Stderr, "seeding the upstream (4 × 64 MiB, 50 × 3 × 1 MiB, one index)...")
	data := b.TempDir()
	up := upstreamtest.New(b, upstreamtest.WithFilesystem(data))
	big, small, idx := seed(b, up)
	if b.upstreamRate > 0 {
		// Seeded at full speed; measured through the capped link.
		up = upstreamtest.New(b, upstreamtest.WithFilesystem(data), upstreamtest.WithBandwidth(b.upstreamRate))
	}

	res := map[string]map[string]float64{}
	set := func(scenario, tgt string, v float64) {
		if res[scenario] == nil {
			res[scenario] = map[string]float64{}
		}
		res[scenario][tgt] = v
	}
	if !b.wanOnly {
		if err := b.scoped(func() error { return b.loopback(up, big, small, idx, set) }); err != nil {
			return nil, err
		}
	}
	var wanRows []string
	if b.rtt > 0 {
		// The same cold pulls through Docker Hub's token flow and blob
		// redirects, without latency and then at rtt.
		for _, rtt := range []time.Duration{0, b.rtt} {
			rows, err := b.wan(rtt, data, big, small, idx, set)
			if err != nil {
				return nil, err
			}
			wanRows = append(wanRows, rows...)
		}
	}
	units := map[string]string{"wharf CPU-s per cold GiB": "CPU-s", "wharf CPU-s per warm GiB": "CPU-s", "manifest by tag": "req/s", "manifest by tag, authenticated": "req/s", "manifest by tag: authenticated / anonymous": "×", "manifest by digest": "req/s", "manifest by tag p99": "ms",
		"manifest by digest p99": "ms", "8 concurrent: upstream bytes / image": "×", "peak RSS": "MiB", "promote: peak RSS": "MiB",
		"promote one image of 64 MiB layers: peak RSS": "MiB", "promote one 512 MiB layer: peak RSS": "MiB"}
	order := []string{"cold pull, 4 × 64 MiB", "warm pull, 4 × 64 MiB", "cold pull, 4 × 64 MiB, draining client", "warm pull, 4 × 64 MiB, draining client", "wharf CPU-s per cold GiB", "wharf CPU-s per warm GiB", "8 concurrent cold pulls", "8 concurrent: upstream bytes / image",
		"50 images × 3 × 1 MiB, cold", "50 images × 3 × 1 MiB, warm", "manifest by tag", "manifest by tag p99",
		"manifest by tag, authenticated", "manifest by tag: authenticated / anonymous",
		"manifest by digest", "manifest by digest p99", "peak RSS"}
	order = append(order, promoteRows...)
	order = append(order, wanRows...)
	for _, r := range wanRows {
		if strings.HasPrefix(r, "wharf CPU") {
			units[r] = "CPU-s"
		} else if strings.HasPrefix(r, "upstream requests") {
			units[r] = "req"
		}
	}
	order = append(order, "replicate all by a rule, cold (direct: skopeo sync)", "replicate all by a rule, cold (direct: crane copy)")
	order = append(order, fleetRows...)
	for _, r := range fleetRows {
		if strings.HasSuffix(r, "/ image") {
			units[r] = "×"
		}
	}
	for _, s := range order {
		if res[s] == nil {
			continue // a pass not run
		}
		u := units[s]
		if u == "" {
			u = "s"
		}
		rows = append(rows, row{Scenario: s, Unit: u, Direct: res[s]["direct"], Wharf: res[s]["wharf"], Distribution: res[s]["distribution"]})
	}
	return rows, nil
}

// promoteRows are the promotion scenarios, which distribution cannot run.
var promoteRows = []string{"promote all to a new registry, cold", "promote all again (all present)", "promote all to a new registry, warm cache",
	"promote: peak RSS", "promote one image of 64 MiB layers: peak RSS", "promote one 512 MiB layer: peak RSS"}

// starter starts a target of the loopback pass.
type starter func() (*target, error)

// loopback measures every scenario at loopback speed on every target.
func (b *bench) loopback(up *upstreamtest.Registry, big upstreamtest.Image, small []upstreamtest.Image, idx upstreamtest.Index, set func(scenario, tgt string, v float64)) error {
	targets := []struct {
		name  string
		start starter
	}{
		{"direct", func() (*target, error) {
			return &target{url: up.URL, stop: func() {}, rss: func() float64 { return -1 }, cpu: func() float64 { return -1 }}, nil
		}},
		{"wharf", func() (*target, error) { return b.startWharf(up.URL) }},
		{"distribution", func() (*target, error) { return b.startDistribution(up.URL) }},
	}
	for _, tg := range targets {
		fmt.Fprintf(os.Stderr, "measuring %s...\n", tg.name)
		peak, err := b.bigImage(tg.name, tg.start, up, big, idx, set)
		if err != nil {
			return err
		}
		p, err := b.concurrentPulls(tg.name, tg.start, up, big, set)
		if err != nil {
			return err
		}
		q, err := b.smallImages(tg.name, tg.start, small, set)
		if err != nil {
			return err
		}
		set("peak RSS", tg.name, max(peak, p, q))
	}
	for _, s := range promoteRows {
		set(s, "distribution", -1) // distribution cannot push elsewhere
	}
	if err := b.scoped(func() error { return b.promote(up, append([]upstreamtest.Image{big}, small...), set) }); err != nil {
		return err
	}
	all := [][2]string{{big.Repo, big.Tag}, {idx.Repo, idx.Tag}}
	for _, img := range small {
		all = append(all, [2]string{img.Repo, img.Tag})
	}
	if err := b.scoped(func() error { return b.replicateByRule(up, all, set) }); err != nil {
		return err
	}
	return b.scoped(func() error { return b.fleet(up, big, set) })
}

func timed(f func() error) (float64, error) {
	start := time.Now()
	err := f()
	return time.Since(start).Seconds(), err
}

// bigImage pulls the big image through a fresh target cold, then warm,
// measures manifest request rates on the warm cache (and, for Wharf, with
// users on), and returns the target's peak RSS.
func (b *bench) bigImage(name string, start starter, up *upstreamtest.Registry, big upstreamtest.Image, idx upstreamtest.Index, set func(scenario, tgt string, v float64)) (float64, error) {
	t, err := start()
	if err != nil {
		return 0, err
	}
	defer t.stop()
	gib := float64(imageSize(big)) / (1 << 30)
	cpu0 := t.cpu()
	var cold float64
	if perr := b.profiled(t, "cold-loopback", func() {
		cold, err = timed(func() error { return pull(t.url, big.Repo, big.Tag) })
	}); perr != nil {
		return 0, perr
	}
	if err != nil {
		return 0, err
	}
	if err := t.stored(big.Blobs()); err != nil {
		return 0, err
	}
	cpu1 := t.cpu()
	warm, err := timed(func() error { return pull(t.url, big.Repo, big.Tag) })
	if err != nil {
		return 0, err
	}
	if cpu0 >= 0 {
		set("wharf CPU-s per cold GiB", name, (cpu1-cpu0)/gib)
		set("wharf CPU-s per warm GiB", name, (t.cpu()-cpu1)/gib)
	} else {
		set("wharf CPU-s per cold GiB", name, -1)
		set("wharf CPU-s per warm GiB", name, -1)
	}
	set("cold pull, 4 × 64 MiB", name, cold)
	set("warm pull, 4 × 64 MiB", name, warm)
	// The same with a client that neither hashes nor writes: the transfer
	// alone, cold through another fresh target.
	drainOnly.Store(true)
	defer drainOnly.Store(false)
	if warm, err = timed(func() error { return pull(t.url, big.Repo, big.Tag) }); err != nil {
		return 0, err
	}
	set("warm pull, 4 × 64 MiB, draining client", name, warm)
	t2, err := start()
	if err != nil {
		return 0, err
	}
	cold, err = timed(func() error { return pull(t2.url, big.Repo, big.Tag) })
	t2.stop()
	if err != nil {
		return 0, err
	}
	set("cold pull, 4 × 64 MiB, draining client", name, cold)
	drainOnly.Store(false)
	for _, c := range []struct{ name, ref string }{{"manifest by tag", idx.Tag}, {"manifest by digest", idx.Manifest.Digest.String()}} {
		rps, p99, err := load(t.url+"/v2/"+idx.Repo+"/manifests/"+c.ref, b.workers, b.duration)
		if err != nil {
			return 0, err
		}
		set(c.name, name, rps)
		set(c.name+" p99", name, p99)
	}
	peak := t.rss()
	if name != "wharf" {
		set("manifest by tag, authenticated", name, -1)
		set("manifest by tag: authenticated / anonymous", name, -1)
		return peak, nil
	}
	// With users on: every request authenticated, against the same
	// Wharf's anonymous rate.
	open, authed, err := b.authenticatedRate(up.URL, idx)
	if err != nil {
		return 0, err
	}
	set("manifest by tag, authenticated", name, authed)
	set("manifest by tag: authenticated / anonymous", name, authed/open)
	return peak, nil
}

// concurrentPulls has eight clients pull the big image cold at once
// through a fresh target, and returns its peak RSS.
func (b *bench) concurrentPulls(name string, start starter, up *upstreamtest.Registry, big upstreamtest.Image, set func(scenario, tgt string, v float64)) (float64, error) {
	t, err := start()
	if err != nil {
		return 0, err
	}
	defer t.stop()
	up.Reset()
	conc, err := timed(func() error {
		return parallel(8, 8, func(int) error { return pull(t.url, big.Repo, big.Tag) })
	})
	if err != nil {
		return 0, err
	}
	set("8 concurrent cold pulls", name, conc)
	set("8 concurrent: upstream bytes / image", name, float64(up.BytesSent())/float64(imageSize(big)))
	return t.rss(), nil
}

// smallImages pulls the small images, four at a time, cold then warm,
// through a fresh target, and returns its peak RSS.
func (b *bench) smallImages(name string, start starter, small []upstreamtest.Image, set func(scenario, tgt string, v float64)) (float64, error) {
	t, err := start()
	if err != nil {
		return 0, err
	}
	defer t.stop()
	pullAll := func() error {
		return parallel(4, len(small), func(i int) error { return pull(t.url, small[i].Repo, small[i].Tag) })
	}
	coldSmall, err := timed(pullAll)
	if err != nil {
		return 0, err
	}
	warmSmall, err := timed(pullAll)
	if err != nil {
		return 0, err
	}
	set("50 images × 3 × 1 MiB, cold", name, coldSmall)
	set("50 images × 3 × 1 MiB, warm", name, warmSmall)
	return t.rss(), nil
}

// authenticatedRate measures manifest-by-tag requests per second on one
// Wharf with users, open to anonymous pulls too, with and without
// credentials on every request, alternating twice and keeping the best of
// each: the cost of authentication (bcrypt at its default cost, once, then
// the credential cache) on the same process and data.
func (b *bench) authenticatedRate(upstreamURL string, idx upstreamtest.Index) (open, authed float64, err error) {
	hash, err := bcrypt.GenerateFromPassword([]byte("bench-password"), bcrypt.DefaultCost)
	if err != nil {
		return 0, 0, err
	}
	htpasswd := filepath.Join(b.TempDir(), "htpasswd")
	if err := os.WriteFile(htpasswd, []byte("bench:"+string(hash)+"\n"), 0o600); err != nil {
		return 0, 0, err
	}
	t, err := b.startWharf(upstreamURL, fmt.Sprintf("auth:\n  htpasswd: %s\n  anonymous: ['*/*']\n  rules:\n    - {users: [bench], pull: ['*/*']}\n", htpasswd))
	if err != nil {
		return 0, 0, err
	}
	defer t.stop()
	path := "/v2/" + idx.Repo + "/manifests/" + idx.Tag
	// Credentials in the URL: net/http sends them as Basic auth.
	withCreds := strings.Replace(t.url, "http://", "http://bench:bench-password@", 1)
	for range 2 {
		o, _, err := load(t.url+path, b.workers, b.duration)
		if err != nil {
			return 0, 0, err
		}
		a, _, err := load(withCreds+path, b.workers, b.duration)
		if err != nil {
			return 0, 0, err
		}
		open, authed = max(open, o), max(authed, a)
	}
	return open, authed, nil
}
