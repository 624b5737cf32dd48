package main

import (
	"fmt"
	"io"
	"strings"

	"github.com/wharf-registry/wharf/storage"
)

// check runs `wharf check`: walk the store and the index, verify blobs,
// report disagreements and, with --repair, fix them. It opens the index
// exclusively, so it refuses to run beside a live server.
func check(args []string, stdout, stderr io.Writer, isTerminal bool) error {
	fs := newCommand("check", stdout, stderr)
	path := fs.String("config", "", "configuration file (YAML)")
	repair := fs.Bool("repair", false, "fix what is found: index orphans that verify, remove corrupt files and dangling records")
	sample := fs.Int("sample", 1, "verify the digest of 1 in N blobs (1: all; 0: none)")
	rest, err := fs.parse(args)
	if err != nil {
		return err
	}
	if *path == "" || len(rest) > 0 {
		return usagef("check", "usage: wharf check --config FILE [--repair] [--sample N]")
	}
	if *sample < 0 {
		return fmt.Errorf("--sample %d: want 0 (verify none), 1 (all) or N (one in N)", *sample)
	}
	cfg, err := loadConfig(*path)
	if err != nil {
		return err
	}
	sopts, err := cfg.Storage.Options()
	if err != nil {
		return err
	}
	store, err := storage.Open(cfg.Storage.Root, sopts)
	if err != nil {
		return fmt.Errorf("%w (is wharf serve running on this store?)", err)
	}
	defer store.Close()
	opts := storage.CheckOptions{Verify: *sample > 0, Sample: *sample, Repair: *repair}
	if isTerminal {
		opts.Progress = func(done, total int) {
			const width = 40
			filled := width
			if total > 0 {
				filled = width * done / total
			}
			fmt.Fprintf(stderr, "\r[%s%s] %d/%d", strings.Repeat("#", filled), strings.Repeat(" ", width-filled), done, total)
			if done == total {
				fmt.Fprintln(stderr)
			}
		}
	}
	problems, err := store.Check(opts)
	counts := map[string]int{}
	for _, p := range problems {
		counts[p.Kind]++
		fmt.Fprintf(stdout, "%-8s %s: %s\n", p.Kind, p.Digest, p.Detail)
	}
	if err != nil {
		return err
	}
	bytes, blobs := store.Size()
	records, err := store.Records()
	if err != nil {
		return err
	}
	verb := "found"
	if *repair {
		verb = "repaired"
	}
	fmt.Fprintf(stdout, "checked %d blobs (%d bytes; %d index records): %s %d orphan, %d dangling, %d corrupt, %d mediatype\n",
		blobs, bytes, records, verb, counts["orphan"], counts["dangling"], counts["corrupt"], counts["mediatype"])
	if len(problems) > 0 && !*repair {
		return fmt.Errorf("%d problems; run with --repair to fix them", len(problems))
	}
	return nil
}
