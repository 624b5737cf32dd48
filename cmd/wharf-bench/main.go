// Command wharf-bench measures Wharf end to end against the same upstream
// pulled directly and through distribution's own proxy mode, and prints
// absolute figures and ratios. `make bench` runs it; it needs nothing but
// the repository: the upstream and distribution run in process, Wharf as
// the real binary.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
)

func main() {
	wharf := flag.String("wharf", "bin/wharf", "wharf binary to measure")
	jsonOut := flag.String("json", "", "also write the results as JSON to this file")
	duration := flag.Duration("duration", 3e9, "length of each request-rate run")
	workers := flag.Int("workers", 16, "concurrent clients in request-rate runs")
	rate := flag.Int64("upstream-mibps", 0, "cap the upstream's total send rate in MiB/s, as a remote registry's link would (0: loopback speed)")
	rtt := flag.Duration("upstream-rtt", 0, "also measure the cold scenarios with the upstream answering each request this late, behind Docker Hub's token flow and blob redirects (e.g. 20ms)")
	pprof := flag.String("pprof", "", "write a CPU profile of the Wharf under test over each cold 4 × 64 MiB pull into this directory (cold-loopback.pprof, and cold-0s.pprof and cold-20ms.pprof through the token flow), and over the 50 small images (cold-small-0s.pprof, cold-small-20ms.pprof); with -scale, over each measured request-rate run and the eviction (scale-N-KIND.pprof)")
	wanOnly := flag.Bool("wan-only", false, "measure only the cold scenarios at -upstream-rtt")
	showRequests := flag.Bool("show-requests", false, "print the upstream requests each target made for the cold 4 × 64 MiB pull at -upstream-rtt")
	scale := flag.String("scale", "", "instead, measure how costs grow with the store: N blobs per run, comma-separated (e.g. 10000,100000,1000000); exits 1 if the largest misses a target")
	churn := flag.Float64("churn", 10, "with -scale: tag updates per blob in the churn pass")
	flag.Parse()
	if *scale != "" {
		os.Exit(scaleMain(*wharf, *scale, *churn, *duration, *workers, *jsonOut, *pprof))
	}
	if *wanOnly && *rtt <= 0 {
		fmt.Fprintln(os.Stderr, "wharf-bench: -wan-only needs -upstream-rtt")
		os.Exit(2)
	}
	b := &bench{wharfBin: *wharf, duration: *duration, workers: *workers, profileDir: *pprof, wanOnly: *wanOnly, showRequests: *showRequests,
		upstreamRate: *rate << 20, rtt: *rtt, sizes: fullSizes}
	defer b.cleanup()
	rows, err := b.run()
	if err != nil {
		fmt.Fprintln(os.Stderr, "wharf-bench:", err)
		b.cleanup()
		os.Exit(1)
	}
	printTable(os.Stdout, rows)
	if *jsonOut != "" {
		out, _ := json.MarshalIndent(rows, "", "  ")
		if err := os.WriteFile(*jsonOut, out, 0o644); err != nil {
			fmt.Fprintln(os.Stderr, "wharf-bench:", err)
			os.Exit(1)
		}
	}
}

// row is one scenario's figures per target.
type row struct {
	Scenario     string  `json:"scenario"`
	Unit         string  `json:"unit"`
	Direct       float64 `json:"direct"`
	Wharf        float64 `json:"wharf"`
	Distribution float64 `json:"distribution"`
}

func printTable(w io.Writer, rows []row) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "scenario\tunit\tdirect\twharf\tdistribution\twharf/direct\twharf/distribution\t")
	fmt.Fprintln(tw, strings.Repeat("-\t", 7))
	for _, r := range rows {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t\n", r.Scenario, r.Unit,
			num(r.Direct), num(r.Wharf), num(r.Distribution), ratio(r.Wharf, r.Direct), ratio(r.Wharf, r.Distribution))
	}
	tw.Flush()
}

func num(v float64) string {
	switch {
	case v < 0:
		return "n/a"
	case v >= 1000:
		return fmt.Sprintf("%.0f", v)
	default:
		return fmt.Sprintf("%.3g", v)
	}
}

func ratio(a, b float64) string {
	if a < 0 || b <= 0 {
		return "n/a"
	}
	return fmt.Sprintf("%.2f×", a/b)
}

// scaleMain runs -scale and returns the exit status.
func scaleMain(wharf, list string, churn float64, duration time.Duration, workers int, jsonOut, pprof string) int {
	var ns []int
	for f := range strings.SplitSeq(list, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 100 {
			fmt.Fprintf(os.Stderr, "wharf-bench: -scale %q: want numbers of blobs of 100 or more, like 10000,100000\n", list)
			return 2
		}
		ns = append(ns, n)
	}
	s := &scaleBench{bench: &bench{wharfBin: wharf, duration: duration, workers: workers, profileDir: pprof}, churn: churn}
	if p, err := exec.LookPath(filepath.Join(filepath.Dir(wharf), "versitygw")); err == nil {
		s.versitygw = p
	} else if p, err := exec.LookPath("versitygw"); err == nil {
		s.versitygw = p
	}
	defer s.cleanup()
	rows, missed, err := s.runScale(ns)
	if err != nil {
		fmt.Fprintln(os.Stderr, "wharf-bench:", err)
		return 1
	}
	printScale(os.Stdout, ns, rows)
	if jsonOut != "" {
		out, _ := json.MarshalIndent(map[string]any{"n": ns, "rows": rows}, "", "  ")
		if err := os.WriteFile(jsonOut, out, 0o644); err != nil {
			fmt.Fprintln(os.Stderr, "wharf-bench:", err)
			return 1
		}
	}
	for _, m := range missed {
		fmt.Fprintln(os.Stderr, "target missed at N =", ns[len(ns)-1], "-", m)
	}
	if len(missed) > 0 {
		return 1
	}
	return 0
}
