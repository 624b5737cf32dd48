package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"time"

	"github.com/dustin/go-humanize"
)

// gcCmd runs `wharf gc`: bound the shared bucket of storage.driver s3 (a
// Kubernetes CronJob's work). The blobs least recently used across the
// fleet go first, as the replicas recorded their uses in the bucket, and
// whatever a replica pins stays. Replicas keep running: one that still
// indexes a deleted blob fetches it again on the next pull.
func gcCmd(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("gc", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", "", "configuration file (YAML) with storage.driver: s3")
	keep := fs.String("keep", "", "size to bring the bucket's blobs down to, like 500GiB")
	dry := fs.Bool("dry-run", false, "only say what would be deleted")
	pinsAge := fs.Duration("pins-age", time.Hour, "pin lists older than this (a replica gone) spare nothing")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *path == "" || *keep == "" || fs.NArg() > 0 {
		return errors.New("usage: wharf gc --config FILE --keep SIZE [--dry-run] [--pins-age 1h]")
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
	sopts, err := cfg.Storage.options()
	if err != nil {
		return err
	}
	res, err := sopts.Remote.GC(context.Background(), int64(n), *pinsAge, time.Now(), *dry)
	if err != nil {
		return fmt.Errorf("gc: %w", err)
	}
	verb := "deleted"
	if *dry {
		verb = "would delete"
	}
	var freed int64
	for _, b := range res.Deleted {
		freed += b.Size
		fmt.Fprintf(stdout, "%s %s %s (last used %s)\n", verb, b.Digest, humanize.IBytes(uint64(b.Size)), b.Used.UTC().Format(time.RFC3339))
	}
	fmt.Fprintf(stdout, "%s %d blobs, %s; the bucket's blobs: %s before, %s after; %d pinned blobs spared\n",
		verb, len(res.Deleted), humanize.IBytes(uint64(freed)), humanize.IBytes(uint64(res.Before)), humanize.IBytes(uint64(res.After)), res.Pinned)
	return nil
}
