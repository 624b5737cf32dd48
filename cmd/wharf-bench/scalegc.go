package main

import (
	"bufio"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/wharf-registry/wharf/storage/s3test"
)

// gcCost is what `wharf gc` took over a bucket: its listing, in time and
// memory.
type gcCost struct {
	objects int     // blobs and their use markers
	secs    float64 // a dry run, end to end: mostly the S3 server's listing
	cpu     float64 // wharf gc's own CPU seconds
	rssMiB  float64 // its peak
}

// gcBucketMax bounds the blobs put in the bucket: versitygw, which stores
// each object as a file, lists a directory tree of millions of files far
// slower than an object store lists keys, and at a million blobs its
// listing, not Wharf, is what a run would time.
const gcBucketMax = 200_000

// measureGC fills a bucket (versitygw over a directory) with the store's
// blobs (at most gcBucketMax), hard-linked, and a use marker each, as a
// fleet that served them all would leave it, and times a dry run of
// `wharf gc` over it. ok is false without versitygw.
func (s *scaleBench) measureGC(dir, root string) (c gcCost, ok bool, err error) {
	bin := s.versitygw
	if bin == "" {
		fmt.Fprintln(os.Stderr, "  (no versitygw beside the wharf binary or in PATH: wharf gc over a bucket is not measured; make test installs it in bin/)")
		return c, false, nil
	}
	s3 := s3test.StartBinary(s.bench, bin)
	blobs := filepath.Join(root, "docker/registry/v2/blobs")
	used := []byte(time.Now().Add(-48 * time.Hour).UTC().Format(time.RFC3339Nano))
	err = filepath.WalkDir(blobs, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || d.Name() != "data" {
			return err
		}
		if c.objects >= 2*gcBucketMax {
			return filepath.SkipAll
		}
		rel, _ := filepath.Rel(root, p)
		hex := filepath.Base(filepath.Dir(p))
		obj, marker := s3.ObjectFile("/"+filepath.ToSlash(rel)), s3.ObjectFile("/wharf/access/sha256/"+hex)
		for _, f := range []string{obj, marker} {
			if err := os.MkdirAll(filepath.Dir(f), 0o755); err != nil {
				return err
			}
		}
		if err := os.Link(p, obj); err != nil {
			return err
		}
		c.objects += 2
		return os.WriteFile(marker, used, 0o644)
	})
	if err != nil {
		return c, false, err
	}
	cfg := filepath.Join(dir, "gc.yml")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf(`listen: "127.0.0.1:0"
storage:
  root: %s
  driver: s3
  s3: {bucket: %s, region: us-east-1, regionendpoint: %s, accesskey: %s, secretkey: %s, forcepathstyle: true, secure: false}
upstreams:
  - name: docker.io
    url: http://127.0.0.1:9
    default: true
    insecure: true
`, filepath.Join(dir, "gc-store"), s3.Bucket, s3.URL, s3.AccessKey, s3.SecretKey)), 0o644); err != nil {
		return c, false, err
	}
	// --min-age 0 and --keep 1 byte: the dry
	// run lists them all, a line each, and their count last.
	cmd := exec.Command(s.wharfBin, "gc", "--config", cfg, "--keep", "1B", "--min-age", "0s", "--dry-run")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return c, false, err
	}
	start, stop := time.Now(), make(chan struct{})
	if err := cmd.Start(); err != nil {
		return c, false, err
	}
	// Its peak RSS, read while it runs: the rusage of a child the
	// runtime started with vfork counts the parent's RSS at the exec.
	rss := make(chan float64)
	go func() {
		peak := 0.0
		for {
			select {
			case <-stop:
				rss <- peak
				return
			case <-time.After(50 * time.Millisecond):
				peak = max(peak, peakRSS(cmd.Process.Pid))
			}
		}
	}()
	last := ""
	for sc := bufio.NewScanner(stdout); sc.Scan(); {
		last = sc.Text()
	}
	close(stop)
	c.rssMiB = <-rss
	err = cmd.Wait()
	c.secs = time.Since(start).Seconds()
	if want := fmt.Sprintf("would delete %d blobs,", c.objects/2); err != nil || !strings.HasPrefix(last, want) {
		return c, false, fmt.Errorf("wharf gc: %v, want %q, got %q\n%s", err, want, last, stderr.String())
	}
	c.cpu = (cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()).Seconds()
	return c, true, nil
}
