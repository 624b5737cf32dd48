package main

import (
	"crypto/sha256"
	"encoding/json"
	"errors"
	"os"
	"slices"
	"sync/atomic"

	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

var client = &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64, DisableCompression: true}}

const accept = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, " +
	"application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json"

// get fetches url, discards the body and checks its length.
func get(url string, want int64) error { return getWith(client, url, want) }

func getWith(c *http.Client, url string, want int64) error {
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	req.Header.Set("Accept", accept)
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var n int64
	if dgst := blobDigest(url); dgst != "" && !drainOnly.Load() {
		n, err = store(resp.Body, dgst)
	} else {
		n, err = drain(resp.Body) // a manifest read for a request rate, or the draining client
	}
	if err != nil {
		return fmt.Errorf("GET %s: %w after %d bytes", url, err, n)
	}
	if resp.StatusCode != http.StatusOK || (want >= 0 && n != want) {
		return fmt.Errorf("GET %s: %d, %d bytes, want %d", url, resp.StatusCode, n, want)
	}
	return nil
}

// The bench's client pulls as real clients do: containerd, crane and
// skopeo hash every blob as it arrives and write it to a file, and a
// ratio against a client that does neither charges the mirror for work
// every real client does. drainOnly switches to a client that only reads
// (the "draining client" rows), to show the transfer alone.
var (
	drainOnly atomic.Bool
	storeDir  = os.TempDir() // where the client writes what it pulls; main sets its own
)

// blobDigest is the digest a blob URL names, "" for a manifest's.
func blobDigest(url string) digest.Digest {
	if i := strings.LastIndex(url, "/blobs/"); i >= 0 {
		return digest.Digest(url[i+len("/blobs/"):])
	}
	return ""
}

// store reads r into a new file under storeDir in containerd's 1 MiB
// steps, hashing as it goes, checks the digest, and removes the file: what a client's content store does, but keeping
// nothing.
func store(r io.Reader, want digest.Digest) (int64, error) {
	f, err := os.CreateTemp(storeDir, "ingest-")
	if err != nil {
		return 0, err
	}
	defer os.Remove(f.Name())
	defer f.Close()
	h := sha256.New()
	buf := readBuffers.Get().(*[]byte)
	defer readBuffers.Put(buf)
	var n int64
	for {
		k, rerr := io.ReadFull(r, *buf)
		n += int64(k)
		h.Write((*buf)[:k])
		if _, err := f.Write((*buf)[:k]); err != nil {
			return n, err
		}
		if rerr == io.EOF || rerr == io.ErrUnexpectedEOF {
			break
		}
		if rerr != nil {
			return n, rerr
		}
	}
	if err := f.Close(); err != nil {
		return n, err
	}
	if want.Algorithm() == digest.SHA256 && digest.NewDigest(digest.SHA256, h) != want {
		return n, fmt.Errorf("blob %s: the bytes hash to %s", want, digest.NewDigest(digest.SHA256, h))
	}
	return n, nil
}

// readBuffers are the client's read buffers. containerd reads a blob 1 MiB
// at a time (content.Copy fills a 1 MiB buffer before each write), and so
// does this client: io.Copy's 8 KiB reads cost a client several times the
// CPU, more so for a stream that arrives as a mirror's fill lands.
var readBuffers = sync.Pool{New: func() any { b := make([]byte, 1<<20); return &b }}

// drain reads r to its end as containerd does, and counts the bytes.
func drain(r io.Reader) (int64, error) {
	buf := readBuffers.Get().(*[]byte)
	defer readBuffers.Put(buf)
	var n int64
	for {
		k, err := io.ReadFull(r, *buf)
		n += int64(k)
		switch err {
		case nil:
		case io.EOF, io.ErrUnexpectedEOF: // the end, the buffer full or not; the caller checks the length
			return n, nil
		default:
			return n, err
		}
	}
}

// pull does what a client does: resolve the tag, then fetch config and
// layers, up to 4 at once as containerd does.
func pull(base, repo, tag string) error { return pullWith(client, base, repo, tag) }

func pullWith(c *http.Client, base, repo, tag string) error {
	req, _ := http.NewRequest(http.MethodGet, base+"/v2/"+repo+"/manifests/"+tag, nil)
	req.Header.Set("Accept", accept)
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	var m ocispec.Manifest
	err = json.NewDecoder(resp.Body).Decode(&m)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK {
		return fmt.Errorf("manifest %s:%s: %d %v", repo, tag, resp.StatusCode, err)
	}
	blobs := append([]ocispec.Descriptor{m.Config}, m.Layers...)
	return parallel(4, len(blobs), func(i int) error {
		return getWith(c, base+"/v2/"+repo+"/blobs/"+blobs[i].Digest.String(), blobs[i].Size)
	})
}

// pullIndex pulls an index as a client on linux/amd64 does: the index,
// then that platform's image.
func pullIndex(c *http.Client, base, repo, tag string) error {
	req, _ := http.NewRequest(http.MethodGet, base+"/v2/"+repo+"/manifests/"+tag, nil)
	req.Header.Set("Accept", accept)
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	var idx ocispec.Index
	err = jsonDecode(resp, &idx)
	if err != nil {
		return fmt.Errorf("index %s:%s: %w", repo, tag, err)
	}
	for _, m := range idx.Manifests {
		if m.Platform != nil && m.Platform.Architecture == "amd64" {
			return pullWith(c, base, repo, m.Digest.String())
		}
	}
	return fmt.Errorf("index %s:%s has no amd64 image", repo, tag)
}

// jsonDecode reads a 200 answer's JSON body into v and closes it.
func jsonDecode(resp *http.Response, v any) error {
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("status %d", resp.StatusCode)
	}
	return json.NewDecoder(resp.Body).Decode(v)
}

// parallel runs fn(0..n-1) on at most workers goroutines and returns the
// first error.
func parallel(workers, n int, fn func(int) error) error {
	var mu sync.Mutex
	var first error
	next := 0
	var wg sync.WaitGroup
	for range min(workers, n) {
		wg.Go(func() {
			for {
				mu.Lock()
				i := next
				next++
				stop := first != nil
				mu.Unlock()
				if i >= n || stop {
					return
				}
				if err := fn(i); err != nil {
					mu.Lock()
					if first == nil {
						first = err
					}
					mu.Unlock()
				}
			}
		})
	}
	wg.Wait()
	return first
}

// load GETs url from workers clients for d and returns requests per second
// and the 99th percentile latency in milliseconds.
func load(url string, workers int, d time.Duration) (rps, p99 float64, err error) {
	if err := get(url, -1); err != nil {
		return 0, 0, err
	}
	return loadMany(func() string { return url }, workers, d)
}

// loadMany GETs the URLs next gives, one per request, from workers
// clients for d, and returns requests per second and the 99th percentile
// latency in milliseconds.
func loadMany(next func() string, workers int, d time.Duration) (rps, p99 float64, err error) {
	deadline := time.Now().Add(d)
	lat := make([][]time.Duration, workers)
	errs := make([]error, workers)
	var wg sync.WaitGroup
	start := time.Now()
	for w := range workers {
		wg.Go(func() {
			for time.Now().Before(deadline) {
				t := time.Now()
				if err := get(next(), -1); err != nil {
					errs[w] = err
					return
				}
				lat[w] = append(lat[w], time.Since(t))
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	for _, e := range errs {
		if e != nil {
			return 0, 0, e
		}
	}
	all := slices.Concat(lat...)
	if len(all) == 0 {
		return 0, 0, fmt.Errorf("no requests completed")
	}
	slices.Sort(all)
	return float64(len(all)) / elapsed.Seconds(), float64(all[len(all)*99/100]) / 1e6, nil
}

// loadPaced GETs the URLs next gives at rate requests per second in all,
// from workers clients, until d passes or stop closes, and returns the
// rate reached and the 99th percentile latency in milliseconds. Latency
// counts from when each request was due, so a request held up behind a
// slow one is charged for its wait.
func loadPaced(next func() string, workers int, rate float64, d time.Duration, stop <-chan struct{}) (rps, p99 float64, err error) {
	interval := time.Duration(float64(workers) / rate * float64(time.Second))
	start := time.Now()
	deadline := start.Add(d)
	lat := make([][]time.Duration, workers)
	errs := make([]error, workers)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			due := start.Add(time.Duration(w) * interval / time.Duration(workers))
			for due.Before(deadline) {
				select {
				case <-stop:
					return
				case <-time.After(time.Until(due)):
				}
				if err := get(next(), -1); err != nil {
					errs[w] = err
					return
				}
				lat[w] = append(lat[w], time.Since(due))
				due = due.Add(interval)
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	if err := errors.Join(errs...); err != nil {
		return 0, 0, err
	}
	all := slices.Concat(lat...)
	if len(all) == 0 {
		return 0, 0, fmt.Errorf("no requests completed")
	}
	slices.Sort(all)
	return float64(len(all)) / elapsed.Seconds(), float64(all[len(all)*99/100]) / 1e6, nil
}
