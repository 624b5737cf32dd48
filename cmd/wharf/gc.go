package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/dustin/go-humanize"

	"github.com/wharf-registry/wharf/storage"
)

// safeMinAge is the least --min-age that spares every blob a client holds
// a redirect for: a redirect's marker stands for 10 minutes of further
// redirects, a presigned URL lives 20 minutes, and another replica's
// periodic marker for the same blob can set its use back by up to 6
// minutes (36 in all, and room for clocks apart).
const safeMinAge = 45 * time.Minute

// gcCmd runs `wharf gc`: bound the shared bucket of storage.driver s3 (a
// Kubernetes CronJob's work). The blobs least recently used across the
// fleet go first, as the replicas recorded their uses in the bucket, and
// whatever a replica pins or anyone used within --min-age stays. Replicas
// keep running: one that still indexes a deleted blob fetches it again on
// the next pull.
func gcCmd(args []string, stdout, stderr io.Writer) error {
	fs := newCommand("gc", stdout, stderr)
	path := fs.String("config", "", "configuration file (YAML) with storage.driver: s3")
	keep := fs.String("keep", "", "size to bring the bucket's blobs down to, like 500GiB")
	dry := fs.Bool("dry-run", false, "only say what would be deleted")
	pinsAge := fs.Duration("pins-age", time.Hour, "pin lists older than this (a replica gone) spare nothing")
	minAge := fs.Duration("min-age", time.Hour, "blobs used or uploaded more recently than this stay, whatever --keep says")
	rest, err := fs.parse(args)
	if err != nil {
		return err
	}
	if *path == "" || *keep == "" || len(rest) > 0 {
		return usagef("gc", "usage: wharf gc --config FILE --keep SIZE [--dry-run] [--pins-age 1h] [--min-age 1h]")
	}
	if *minAge < 0 || *pinsAge < 0 {
		return errors.New("--min-age and --pins-age are durations of 0 or more, like 1h")
	}
	if *minAge < safeMinAge {
		fmt.Fprintf(stderr, "wharf gc: --min-age %v is under %v: a blob a client was just redirected to (storage.redirect) may be deleted before it is fetched\n", *minAge, safeMinAge)
	}
	n, err := humanize.ParseBytes(*keep)
	if err != nil {
		return fmt.Errorf("--keep %q: want a size like 500GiB", *keep)
	}
	cfg, err := loadConfig(*path)
	if err != nil {
		return err
	}
	if cfg.Storage.Driver != "s3" {
		return errors.New("wharf gc bounds the shared bucket: it needs storage.driver: s3 (a local store is bounded by storage.max_size)")
	}
	sopts, err := cfg.Storage.Options()
	if err != nil {
		return err
	}
	res, err := sopts.Bucket.GC(context.Background(), storage.GCPolicy{Keep: int64(n), PinsAge: *pinsAge, MinAge: *minAge, Dry: *dry}, time.Now())
	if err != nil {
		return fmt.Errorf("gc: %w", err)
	}
	verb := "deleted"
	if *dry {
		verb = "would delete"
	}
	out := bufio.NewWriter(stdout) // a line per blob: a million of them at most
	var freed int64
	for _, b := range res.Deleted {
		freed += b.Size
		fmt.Fprintf(out, "%s %s %s (last used %s)\n", verb, b.Digest, humanize.IBytes(uint64(b.Size)), b.Used.UTC().Format(time.RFC3339))
	}
	fmt.Fprintf(out, "%s %d blobs, %s; the bucket's blobs: %s before, %s after; %d pinned and %d recently used blobs spared\n",
		verb, len(res.Deleted), humanize.IBytes(uint64(freed)), humanize.IBytes(uint64(res.Before)), humanize.IBytes(uint64(res.After)), res.Pinned, res.Recent)
	return out.Flush()
}
