package main

import (
	"cmp"
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/distribution/distribution/v3/configuration"
	"github.com/distribution/distribution/v3/registry/handlers"

	"github.com/wharf-registry/wharf/upstream/upstreamtest"
)

// The WAN pass: the same data behind an upstream that answers every
// request rtt late, with Docker Hub's token flow and blob redirects; the
// cold scenarios again, against direct pulls (which do the token dance
// too) and distribution's proxy mode.

const hubUser, hubPass = "bench", "bench-password"

// hubTransport does the token dance for direct pulls as docker and
// containerd do: on a Bearer challenge it fetches a token for the
// repository from the realm with the bench credentials, and sends it for
// that repository from then on (a token per repository, as Docker Hub's
// scopes make clients do).
type hubTransport struct {
	next   http.RoundTripper
	mu     sync.Mutex
	tokens map[string]string // by repository
}

// repoOf is the repository a /v2 request path names.
func repoOf(path string) string {
	rest := strings.TrimPrefix(path, "/v2/")
	for _, sep := range []string{"/manifests/", "/blobs/", "/tags/"} {
		if i := strings.LastIndex(rest, sep); i > 0 {
			return rest[:i]
		}
	}
	return ""
}

func (h *hubTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	repo := repoOf(req.URL.Path)
	h.mu.Lock()
	tok := h.tokens[repo]
	h.mu.Unlock()
	send := func(tok string) (*http.Response, error) {
		r := req.Clone(req.Context())
		if tok != "" {
			r.Header.Set("Authorization", "Bearer "+tok)
		}
		return h.next.RoundTrip(r)
	}
	resp, err := send(tok)
	if err != nil || resp.StatusCode != http.StatusUnauthorized {
		return resp, err
	}
	ch := resp.Header.Get("WWW-Authenticate")
	i := strings.Index(ch, `realm="`)
	if i < 0 {
		return resp, nil
	}
	realm, _, _ := strings.Cut(ch[i+len(`realm="`):], `"`)
	resp.Body.Close()
	treq, _ := http.NewRequestWithContext(req.Context(), http.MethodGet, realm, nil)
	treq.SetBasicAuth(hubUser, hubPass)
	tresp, err := h.next.RoundTrip(treq)
	if err != nil {
		return nil, err
	}
	var body struct{ Token string }
	err = jsonDecode(tresp, &body)
	if err != nil {
		return nil, err
	}
	h.mu.Lock()
	if h.tokens == nil {
		h.tokens = map[string]string{}
	}
	h.tokens[repo] = body.Token
	h.mu.Unlock()
	return send(body.Token)
}

// wanRuns is how often each WAN scenario runs, on a fresh target each
// time; the median is reported.
const wanRuns = 3

// wan measures the cold scenarios at rtt; rows are named with it.
func (b *bench) wan(rtt time.Duration, data string, big upstreamtest.Image, small []upstreamtest.Image, idx upstreamtest.Index, set func(scenario, tgt string, v float64)) ([]string, error) {
	at := " @" + rtt.String()
	rows := []string{"cold pull, 4 × 64 MiB" + at, "50 images × 3 × 1 MiB, cold" + at, "two-platform index, cold" + at,
		"wharf CPU-s per cold GiB" + at, "upstream requests, cold 4 × 64 MiB" + at,
		fmt.Sprintf("CPU floor (all CPU-s / %d cores), cold 4 × 64 MiB", runtime.NumCPU()) + at,
		fmt.Sprintf("CPU floor (all CPU-s / %d cores), 50 images cold", runtime.NumCPU()) + at}
	up := upstreamtest.New(b, upstreamtest.WithFilesystem(data), upstreamtest.WithLatency(rtt),
		upstreamtest.WithTokenAuth(hubUser, hubPass), upstreamtest.WithBlobRedirects())
	targets := []struct {
		name  string
		start starter
	}{
		{"direct", func() (*target, error) {
			return &target{url: up.URL, stop: func() {}, rss: func() float64 { return -1 }, cpu: func() float64 { return -1 }}, nil
		}},
		{"wharf", func() (*target, error) {
			return b.startWharfAuth(up.URL, "    username: "+hubUser+"\n    password: "+hubPass+"\n    public: true\n")
		}},
		{"distribution", func() (*target, error) { return b.startDistributionAuth(up.URL, hubUser, hubPass) }},
	}
	for _, tg := range targets {
		fmt.Fprintf(os.Stderr, "measuring %s at %s...\n", tg.name, rtt)
		for i, pull := range []func(*http.Client, *target) error{
			func(c *http.Client, t *target) error { return pullWith(c, t.url, big.Repo, big.Tag) },
			func(c *http.Client, t *target) error {
				return parallel(4, len(small), func(i int) error { return pullWith(c, t.url, small[i].Repo, small[i].Tag) })
			},
			func(c *http.Client, t *target) error { return pullIndex(c, t.url, idx.Repo, idx.Tag) },
		} {
			var times, cpus, floors []float64
			for run := range wanRuns {
				var r wanResult
				err := b.scoped(func() (err error) {
					r, err = b.wanRun(tg.name, tg.start, up, rtt, i, run, pull, big)
					return err
				})
				if err != nil {
					return nil, err
				}
				times = append(times, r.seconds)
				if r.cpuPerGiB >= 0 {
					cpus = append(cpus, r.cpuPerGiB)
				}
				if r.floor >= 0 {
					floors = append(floors, r.floor)
				}
				if i == 0 {
					set(rows[4], tg.name, float64(r.requests))
				}
			}
			set(rows[i], tg.name, median(times))
			if i == 0 {
				set(rows[3], tg.name, median(cpus))
			}
			if i < 2 {
				set(rows[5+i], tg.name, median(floors))
			}
		}
	}
	return rows, nil
}

// wanResult is one cold pull's figures: its time, the target's CPU per
// GiB (the big image on Wharf only; -1 otherwise), the CPU floor (-1 for
// the index), and the upstream requests it made.
type wanResult struct {
	seconds, cpuPerGiB, floor float64
	requests                  int
}

// wanRun pulls cold (i: 0 the big image, 1 the small ones, 2 the index)
// through a fresh target of the WAN pass, the first run of the first two
// profiled.
func (b *bench) wanRun(name string, start starter, up *upstreamtest.Registry, rtt time.Duration, i, run int, pull func(*http.Client, *target) error, big upstreamtest.Image) (wanResult, error) {
	res := wanResult{cpuPerGiB: -1, floor: -1}
	c := client
	if name == "direct" {
		// A cold direct pull fetches its tokens too.
		c = &http.Client{Transport: &hubTransport{next: &http.Transport{MaxIdleConnsPerHost: 64, DisableCompression: true}}}
	}
	t, err := start()
	if err != nil {
		return res, err
	}
	defer t.stop()
	syscall.Sync() // every run starts with no dirty pages of the last one to write back
	up.Reset()
	cpu, self := t.cpu(), selfCPU()
	if i < 2 && run == 0 {
		profile := []string{"cold-", "cold-small-"}[i] + rtt.String()
		perr := b.profiled(t, profile, func() { res.seconds, err = timedErr(func() error { return pull(c, t) }) })
		err = cmp.Or(err, perr)
	} else {
		res.seconds, err = timedErr(func() error { return pull(c, t) })
	}
	if i < 2 {
		// Every CPU-second the pull cost: the client's and upstream's
		// (this process), and the target's when it runs apart. No pull
		// can take less wall time than that spread over every core.
		all := selfCPU() - self
		if cpu >= 0 {
			all += t.cpu() - cpu
			if i == 0 && err == nil {
				err = t.stored(big.Blobs())
				res.cpuPerGiB = (t.cpu() - cpu) / (float64(imageSize(big)) / (1 << 30))
			}
		}
		res.floor = all / float64(runtime.NumCPU())
	}
	if err != nil {
		return res, fmt.Errorf("%s at %s: %w", name, rtt, err)
	}
	res.requests = up.Total()
	if i == 0 && b.showRequests {
		for _, r := range up.Requests() {
			fmt.Fprintf(os.Stderr, "%s: %s %s\n", name, r.Method, r.Path)
		}
	}
	return res, nil
}

// median of vs, -1 for none.
func median(vs []float64) float64 {
	if len(vs) == 0 {
		return -1
	}
	vs = slices.Clone(vs)
	slices.Sort(vs)
	return vs[len(vs)/2]
}

// startDistributionAuth is startDistribution for an upstream with
// credentials.
func (b *bench) startDistributionAuth(upstreamURL, user, pass string) (*target, error) {
	cfg := &configuration.Configuration{
		Storage: configuration.Storage{
			"filesystem":  configuration.Parameters{"rootdirectory": b.TempDir()},
			"maintenance": configuration.Parameters{"uploadpurging": map[any]any{"enabled": false}},
		},
		Proxy: configuration.Proxy{RemoteURL: upstreamURL, Username: user, Password: pass},
	}
	cfg.Log.Level = "error"
	cfg.Log.AccessLog.Disabled = true
	cfg.HTTP.Secret = "wharf-bench"
	srv := httptest.NewServer(handlers.NewApp(context.Background(), cfg))
	return &target{url: srv.URL, stop: srv.Close, rss: func() float64 { return -1 }, cpu: func() float64 { return -1 }}, nil
}

// selfCPU is the user and system CPU time of this process: the bench's
// client, its upstream and, in process, distribution.
func selfCPU() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
}

// cpuSeconds reads the user and system CPU time of pid.
func cpuSeconds(pid int) float64 {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return -1
	}
	s := string(stat)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	if len(f) < 13 {
		return -1
	}
	ut, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return (ut + st) / 100 // USER_HZ
}
