package proxy_test

import (
	"bytes"
	"context"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/wharf-registry/wharf/cache"
	"github.com/wharf-registry/wharf/replicate"
	"github.com/wharf-registry/wharf/storage"
	"github.com/wharf-registry/wharf/storage/s3test"
	"github.com/wharf-registry/wharf/upstream/upstreamtest"
)

// Wharfs that share a bucket fetch each blob from upstream once between
// them: the first uploads every verified blob and manifest in
// distribution's layout; a second, on an empty disk, fills from the
// bucket, Range requests included; with the bucket gone, a third still
// serves, from upstream.
func TestWharfsSharingABucket(t *testing.T) {
	s3 := s3test.Start(t)
	up := upstreamtest.New(t)
	img := up.PushImage(t, "library/app", "1", 81, 3, 300_000, amd64)
	replica := func() *env { return bucketReplica(t, up, s3.Params(), cache.Config{}) }

	// Where each replica's bytes came from: blobs by source, and what
	// upstream sent (blobs and manifests).
	blobBytes, manifestBytes := 0, len(img.Manifest.Data)
	for _, b := range img.Blobs() {
		blobBytes += len(b.Data)
	}
	sources := func(e *env, upstream, bucket, fetched int) {
		t.Helper()
		got := []float64{metric(t, e, "wharf_filled_bytes_total", "source", "upstream"),
			metric(t, e, "wharf_filled_bytes_total", "source", "bucket"),
			metric(t, e, "wharf_filled_bytes_total", "source", "peer"),
			metric(t, e, "wharf_upstream_fetched_bytes_total")}
		if want := []float64{float64(upstream), float64(bucket), 0, float64(fetched)}; !slices.Equal(got, want) {
			t.Errorf("filled bytes from upstream, bucket, peer, and fetched from upstream: %v, want %v", got, want)
		}
	}

	up.Reset()
	first := replica()
	pull(t, first, "app", img, "")
	filled(t, first)
	wantCounts(t, up, map[string]int{"HEAD manifest": 1, "GET manifest": 1, "GET blob": 4})
	sources(first, blobBytes, 0, blobBytes+manifestBytes)
	for _, b := range append(img.Blobs(), img.Manifest) {
		key := "/docker/registry/v2/blobs/sha256/" + b.Digest.Encoded()[:2] + "/" + b.Digest.Encoded() + "/data"
		if got, err := os.ReadFile(s3.ObjectFile(key)); err != nil || !bytes.Equal(got, b.Data) {
			t.Fatalf("%s in the bucket: %v, %d bytes of %d", b.Digest, err, len(got), len(b.Data))
		}
	}

	// A second replica, empty disk: the manifest from upstream (tags and
	// manifests are each replica's own), every blob from the bucket.
	up.Reset()
	second := replica()
	pull(t, second, "app", img, "")
	filled(t, second)
	wantCounts(t, up, map[string]int{"HEAD manifest": 1, "GET manifest": 1})
	if n := metric(t, second, "wharf_remote_lookups_total"); n != 4 {
		t.Fatalf("bucket hits: %v, want 4", n)
	}
	sources(second, 0, blobBytes, manifestBytes)

	// A third: a Range request of a layer it never held.
	up.Reset()
	third := replica()
	third.get(t, "/v2/app/manifests/"+img.Manifest.Digest.String(), img.Manifest.Data, img.Manifest.Digest.String())
	l := img.Layers[1]
	r := third.do(t, http.MethodGet, "/v2/app/blobs/"+l.Digest.String(), "Range", "bytes=1000-1999")
	if r.status != http.StatusPartialContent || !bytes.Equal(r.body, l.Data[1000:2000]) {
		t.Fatalf("Range from the bucket: %d, %d bytes", r.status, len(r.body))
	}
	wantCounts(t, up, map[string]int{"GET manifest": 1})
	if r := third.do(t, http.MethodGet, "/healthz"); r.status != http.StatusOK || string(r.body) != "ok\n" {
		t.Fatalf("healthz with the bucket up: %d %q", r.status, r.body)
	}

	// The bucket gone: a replica serves what it holds with no request
	// anywhere; a fresh one serves from upstream and keeps what it
	// filled, its uploads queued; /healthz says so, still 200 (no
	// restart, no removal from the Service), naming no endpoint.
	s3.Stop()
	up.Reset()
	pull(t, first, "app", img, "") // what a replica holds is served as ever
	wantCounts(t, up, map[string]int{})
	fourth := replica()
	pull(t, fourth, "app", img, "")
	fillsDone(t, fourth)
	wantCounts(t, up, map[string]int{"HEAD manifest": 1, "GET manifest": 1, "GET blob": 4})
	if n := metric(t, fourth, "wharf_remote_lookups_total"); n != 4 {
		t.Fatalf("bucket lookups that failed or were passed by: %v, want 4", n)
	}
	sources(fourth, blobBytes, 0, blobBytes+manifestBytes)
	for _, b := range append(img.Blobs(), img.Manifest) {
		if _, err := fourth.store.Blob(b.Digest); err != nil {
			t.Fatalf("%s not kept with the bucket gone: %v", b.Digest, err)
		}
	}
	if n := fourth.store.Uploads().Pending; n != 5 {
		t.Fatalf("%d uploads queued, want 5", n)
	}
	if r := fourth.do(t, http.MethodGet, "/healthz"); r.status != http.StatusOK || !strings.HasPrefix(string(r.body), "degraded:\n- the shared bucket does not answer") ||
		!strings.Contains(string(r.body), "5 blobs wait to be uploaded") || strings.Contains(string(r.body), strings.TrimPrefix(s3.URL, "http://")) {
		t.Fatalf("healthz with the bucket down: %d %q", r.status, r.body)
	}
	up.Reset()
	pull(t, fourth, "app", img, "")
	wantCounts(t, up, map[string]int{})
}

// A bucket that hangs (SIGSTOP: connections accepted, never answered)
// costs cold pulls nothing beyond their upstream time: their clients are
// answered before any upload, the bucket is passed by once it failed to
// answer a lookup, and what is filled is kept. Once it answers again the
// queued uploads reach it, and after gc deleted blobs that replicas
// still serve, those serving them upload them again.
func TestHungBucket(t *testing.T) {
	s3 := s3test.Start(t)
	up := upstreamtest.New(t)
	img := up.PushImage(t, "library/app", "1", 86, 3, 200_000, amd64)
	e := bucketReplicaOpts(t, up, s3.Params(), envOpts{sopts: storage.Options{UploadRetry: 20 * time.Millisecond, UseEvery: 50 * time.Millisecond}})
	inBucket := func() int {
		n := 0
		for _, b := range append(img.Blobs(), img.Manifest) {
			key := "/docker/registry/v2/blobs/sha256/" + b.Digest.Encoded()[:2] + "/" + b.Digest.Encoded() + "/data"
			if got, err := os.ReadFile(s3.ObjectFile(key)); err == nil && bytes.Equal(got, b.Data) {
				n++
			}
		}
		return n
	}

	s3.Pause()
	client := &http.Client{Timeout: 30 * time.Second} // an upload before the answer waited 15 minutes
	for _, b := range append([]upstreamtest.Blob{img.Manifest}, img.Blobs()...) {
		kind := "blobs"
		if b.Digest == img.Manifest.Digest {
			kind = "manifests"
		}
		resp, err := client.Get(e.URL + "/v2/app/" + kind + "/" + b.Digest.String())
		if err != nil {
			s3.Resume()
			t.Fatal(err)
		}
		got, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusOK || digest.FromBytes(got) != b.Digest {
			s3.Resume()
			t.Fatalf("%s with the bucket hung: %d, %v", b.Digest, resp.StatusCode, err)
		}
	}
	fillsDone(t, e)
	for _, b := range append(img.Blobs(), img.Manifest) {
		if _, err := e.store.Blob(b.Digest); err != nil {
			s3.Resume()
			t.Fatalf("%s not kept with the bucket hung: %v", b.Digest, err)
		}
	}
	s3.Resume()
	filled(t, e)
	if n := inBucket(); n != 5 {
		t.Fatalf("%d of 5 blobs in the bucket after it came back", n)
	}

	r, err := storage.OpenBucket(t.Context(), "s3", s3.Params())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.GC(t.Context(), storage.GCPolicy{}, time.Now()); err != nil {
		t.Fatal(err)
	}
	if n := inBucket(); n != 0 {
		t.Fatalf("gc left %d blobs", n)
	}
	up.Reset()
	pull(t, e, "app", img, "")                            // served here, from the local tier
	wantCounts(t, up, map[string]int{"HEAD manifest": 1}) // the tag, pulled by digest before
	if n := settle(func() int { return 5 - inBucket() }, 0); n != 0 {
		t.Fatalf("%d blobs served here never returned to the bucket", n)
	}
}

// With redirect on, a blob the bucket holds and this replica does not is
// answered with a 307 to a presigned URL there, which serves the exact
// bytes, Range included; a repository not known to hold the blob is not
// sent anywhere.
func TestRedirectToTheBucket(t *testing.T) {
	s3 := s3test.Start(t)
	up := upstreamtest.New(t)
	img := up.PushImage(t, "library/app", "1", 82, 2, 200_000, amd64)
	other := up.PushImage(t, "library/other", "1", 83, 1, 1000, amd64)
	replica := func(redirect bool) *env { return bucketReplica(t, up, s3.Params(), cache.Config{Redirect: redirect}) }
	first := replica(false)
	pull(t, first, "app", img, "")
	filled(t, first)

	up.Reset()
	e := replica(true)
	e.get(t, "/v2/app/manifests/"+img.Manifest.Digest.String(), img.Manifest.Data, img.Manifest.Digest.String())
	l := img.Layers[0]
	status, loc, _ := getNoFollow(t, e.URL+"/v2/app/blobs/"+l.Digest.String())
	if status != http.StatusTemporaryRedirect || !strings.HasPrefix(loc, s3.URL+"/") || !strings.Contains(loc, "X-Amz-Signature=") {
		t.Fatalf("blob in the bucket: %d, Location %q", status, loc)
	}
	// A signature, never the bucket's secret key.
	if strings.Contains(loc, s3.SecretKey) {
		t.Fatalf("the secret key reached a client: %s", loc)
	}
	req, _ := http.NewRequest(http.MethodGet, loc, nil)
	req.Header.Set("Range", "bytes=10-19")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusPartialContent || !bytes.Equal(got, l.Data[10:20]) {
		t.Fatalf("the presigned URL with a Range: %d, %q", resp.StatusCode, got)
	}
	// Followed, as a client does: the whole blob.
	e.get(t, "/v2/app/blobs/"+l.Digest.String(), l.Data, "")
	wantCounts(t, up, map[string]int{"GET manifest": 1})

	// A repository that does not hold the blob learns nothing of the bucket.
	up.Reset()
	if r := e.do(t, http.MethodGet, "/v2/other/blobs/"+l.Digest.String()); r.status != http.StatusNotFound {
		t.Fatalf("another repository's blob: %d %s", r.status, r.body)
	}
	// A blob the bucket lacks is filled as ever.
	e.get(t, "/v2/other/manifests/"+other.Manifest.Digest.String(), other.Manifest.Data, other.Manifest.Digest.String())
	e.get(t, "/v2/other/blobs/"+other.Layers[0].Digest.String(), other.Layers[0].Data, other.Layers[0].Digest.String())
}

// A blob long unused in the bucket, which a replica has just redirected a
// client to, outlives a gc run that starts then: the client's presigned
// GET finds its bytes, not a 404. What nobody used lately still goes.
func TestRedirectOutlivesGC(t *testing.T) {
	s3 := s3test.Start(t)
	up := upstreamtest.New(t)
	img := up.PushImage(t, "library/app", "1", 85, 2, 50_000, amd64)
	first := bucketReplica(t, up, s3.Params(), cache.Config{})
	pull(t, first, "app", img, "")
	filled(t, first)
	// Everything in the bucket was last used three hours ago.
	long := time.Now().Add(-3 * time.Hour)
	for _, b := range append(img.Blobs(), img.Manifest) {
		key := "/docker/registry/v2/blobs/sha256/" + b.Digest.Encoded()[:2] + "/" + b.Digest.Encoded() + "/data"
		if err := os.Chtimes(s3.ObjectFile(key), long, long); err != nil {
			t.Fatal(err)
		}
	}

	e := bucketReplica(t, up, s3.Params(), cache.Config{Redirect: true})
	l := img.Layers[0]
	status, loc, _ := getNoFollow(t, e.URL+"/v2/app/blobs/"+l.Digest.String())
	if status != http.StatusTemporaryRedirect {
		t.Fatalf("blob in the bucket: %d, want a redirect", status)
	}

	r, err := storage.OpenBucket(t.Context(), "s3", s3.Params())
	if err != nil {
		t.Fatal(err)
	}
	res, err := r.GC(t.Context(), storage.GCPolicy{Keep: 0, PinsAge: time.Hour, MinAge: time.Hour}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	status, _, got := getNoFollow(t, loc)
	if status != http.StatusOK || !bytes.Equal(got, l.Data) {
		t.Fatalf("the presigned URL after gc: %d, %d bytes of %d", status, len(got), len(l.Data))
	}
	var deleted []string
	for _, b := range res.Deleted {
		deleted = append(deleted, b.Digest.String())
	}
	slices.Sort(deleted)
	want := []string{img.Config.Digest.String(), img.Layers[1].Digest.String(), img.Manifest.Digest.String()}
	slices.Sort(want)
	if !slices.Equal(deleted, want) {
		t.Fatalf("gc deleted %v, want %v (the config, the other layer, the manifest)", deleted, want)
	}

	// A replica that cannot write the marker sends nobody to the bucket:
	// it serves the blob itself.
	target, _ := url.Parse(s3.URL)
	rp := &httputil.ReverseProxy{Rewrite: func(r *httputil.ProxyRequest) { r.SetURL(target); r.Out.Host = r.In.Host }}
	front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPut && strings.Contains(r.URL.Path, "/wharf/access/") {
			http.Error(w, "read-only", http.StatusForbidden)
			return
		}
		rp.ServeHTTP(w, r)
	}))
	defer front.Close()
	p := s3.Params()
	p["regionendpoint"] = front.URL
	ro := bucketReplica(t, up, p, cache.Config{Redirect: true})
	status, loc, got = getNoFollow(t, ro.URL+"/v2/app/blobs/"+l.Digest.String())
	if status != http.StatusOK || !bytes.Equal(got, l.Data) {
		t.Fatalf("a replica that cannot mark the blob used: %d, Location %q, %d bytes of %d", status, loc, len(got), len(l.Data))
	}
}

// getNoFollow GETs url as a client that does not follow redirects: the
// status, Location and body.
func getNoFollow(t *testing.T, url string) (int, string, []byte) {
	t.Helper()
	c := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := c.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, resp.Header.Get("Location"), body
}

// A replica with a bucket tells it what it served (markers gc reads for
// the fleet's last use) and what it pins.
func TestReplicaTellsTheBucketUsesAndPins(t *testing.T) {
	s3 := s3test.Start(t)
	up := upstreamtest.New(t)
	img := up.PushImage(t, "library/app", "1", 84, 1, 1000, amd64)
	r, err := storage.OpenBucket(t.Context(), "s3", s3.Params())
	if err != nil {
		t.Fatal(err)
	}
	e := newEnvFull(t, t.TempDir(), storage.Options{Bucket: r, Replica: "wharf-0"}, cache.Config{PinPatterns: []string{"docker.io/library/app:1"}},
		replicate.Config{}, "", nil, nil, spec{name: "docker.io", reg: up, def: true, ttl: time.Hour})
	pull(t, e, "app", img, "")
	pins := s3.ObjectFile("/wharf/pins/wharf-0")
	if n := settle(func() int {
		body, _ := os.ReadFile(pins)
		if strings.Contains(string(body), img.Manifest.Digest.String()) {
			return 0
		}
		return 1
	}, 0); n != 0 {
		body, err := os.ReadFile(pins)
		t.Fatalf("pin list in the bucket: %v, %s", err, body)
	}
	// A fill's upload time is its use; a warm read is told with a marker.
	filled(t, e)
	pull(t, e, "app", img, "")
	e.close() // flushes the uses
	for _, b := range img.Blobs() {
		marker, err := os.ReadFile(s3.ObjectFile("/wharf/access/sha256/" + b.Digest.Encoded()))
		if at, perr := time.Parse(time.RFC3339Nano, string(marker)); err != nil || perr != nil || time.Since(at) > time.Minute {
			t.Fatalf("use of %s in the bucket: %v %v %q", b.Digest, err, perr, marker)
		}
	}
}

// An object in the bucket whose bytes do not hash to its key (corrupted,
// or written by something else) is never served: the fill from it fails
// that request, the object is deleted, and the next request fills from
// upstream and puts the right bytes back.
func TestCorruptObjectInTheBucket(t *testing.T) {
	s3 := s3test.Start(t)
	up := upstreamtest.New(t)
	img := up.PushImage(t, "library/app", "1", 84, 1, 200_000, amd64)
	replica := func() *env { return bucketReplica(t, up, s3.Params(), cache.Config{}) }
	first := replica()
	pull(t, first, "app", img, "")
	filled(t, first)
	l := img.Layers[0]
	key := s3.ObjectFile("/docker/registry/v2/blobs/sha256/" + l.Digest.Encoded()[:2] + "/" + l.Digest.Encoded() + "/data")
	bad := bytes.Clone(l.Data)
	bad[len(bad)/2] ^= 0xff
	if err := os.WriteFile(key, bad, 0o644); err != nil {
		t.Fatal(err)
	}

	second := replica()
	second.get(t, "/v2/app/manifests/"+img.Manifest.Digest.String(), img.Manifest.Data, img.Manifest.Digest.String())
	up.Reset()
	// The last byte is held back until the digest verifies: the client
	// sees an error or a cut transfer, never the corrupt blob whole.
	if resp, err := second.Client().Get(second.URL + "/v2/app/blobs/" + l.Digest.String()); err == nil {
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err == nil && resp.StatusCode == http.StatusOK {
			t.Fatalf("the corrupt object was served whole: %d bytes, intact %v", len(body), bytes.Equal(body, l.Data))
		}
	}
	if _, err := os.Stat(key); !os.IsNotExist(err) {
		t.Fatalf("the corrupt object is still in the bucket: %v", err)
	}
	wantCounts(t, up, map[string]int{})
	second.get(t, "/v2/app/blobs/"+l.Digest.String(), l.Data, l.Digest.String())
	wantCounts(t, up, map[string]int{"GET blob": 1})
	filled(t, second)
	if got, err := os.ReadFile(key); err != nil || !bytes.Equal(got, l.Data) {
		t.Fatalf("the bucket after the refill: %v, %d bytes", err, len(got))
	}
}

// A bucket object that the lookup found and the read then cannot have, or
// that breaks or stalls mid-read, costs its fill nothing but a trip to
// upstream:
// the client gets every byte, never a 404 (the blob exists) or a 503,
// and the bucket ends up with the blob whole. The object vanishing is
// `wharf gc` deleting it between the lookup and the read.
func TestBucketFailingAfterTheLookup(t *testing.T) {
	const cut = 70_000 // bytes the bucket sends before it breaks
	for _, fault := range []string{"vanished", "broke", "stalled"} {
		t.Run(fault, func(t *testing.T) {
			s3 := s3test.Start(t)
			up := upstreamtest.New(t)
			img := up.PushImage(t, "library/app", "1", 85, 1, 200_000, amd64)
			l := img.Layers[0]
			key := "/docker/registry/v2/blobs/sha256/" + l.Digest.Encoded()[:2] + "/" + l.Digest.Encoded() + "/data"

			// The bucket as the replicas see it: a proxy that keeps the
			// Host they signed for and, once armed, does the fault to
			// the layer's reads (not to its lookups, which are HEADs).
			target, _ := url.Parse(s3.URL)
			var armed atomic.Bool
			var reads atomic.Int32
			rp := &httputil.ReverseProxy{
				Rewrite:       func(r *httputil.ProxyRequest) { r.SetURL(target); r.Out.Host = r.In.Host },
				ErrorLog:      log.New(io.Discard, "", 0), // the cut read is the point
				FlushInterval: -1,                         // every byte before the fault reaches the replica
				ModifyResponse: func(resp *http.Response) error {
					if fault != "vanished" && reads.Load() == 1 && strings.HasSuffix(resp.Request.URL.Path, key) && resp.Request.Method == http.MethodGet {
						var end io.Reader = catchingReader{} // broke: the connection drops
						if fault == "stalled" {
							end = blocked{resp.Request.Context()} // stalled: silence until the reader goes
						}
						resp.Body = struct {
							io.Reader
							io.Closer
						}{io.MultiReader(io.LimitReader(resp.Body, cut), end), resp.Body}
					}
					return nil
				},
			}
			front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if armed.Load() && r.Method == http.MethodGet && strings.HasSuffix(r.URL.Path, key) {
					switch n := reads.Add(1); {
					case fault == "vanished":
						os.Remove(s3.ObjectFile(key))
					case n > 1:
						http.Error(w, "the bucket is down", http.StatusServiceUnavailable)
						return
					}
				}
				rp.ServeHTTP(w, r)
			}))
			defer front.Close()
			replica := func() *env {
				p := s3.Params()
				p["regionendpoint"] = front.URL
				return bucketReplica(t, up, p, cache.Config{StallTimeout: time.Second})
			}
			first := replica()
			pull(t, first, "app", img, "")
			filled(t, first)

			second := replica()
			second.get(t, "/v2/app/manifests/"+img.Manifest.Digest.String(), img.Manifest.Data, img.Manifest.Digest.String())
			armed.Store(true)
			up.Reset()
			second.get(t, "/v2/app/blobs/"+l.Digest.String(), l.Data, l.Digest.String())
			filled(t, second)
			armed.Store(false)

			var gets []string
			for _, r := range up.Requests() {
				gets = append(gets, r.Method+" "+r.Kind()+" "+r.Range)
			}
			fromBucket, fromUpstream := 0, len(l.Data)
			want := []string{"GET blob "}
			if fault != "vanished" {
				fromBucket, fromUpstream = cut, len(l.Data)-cut
				want = []string{"GET blob bytes=" + strconv.Itoa(cut) + "-"}
			}
			if !slices.Equal(gets, want) {
				t.Errorf("upstream requests: %q, want %q", gets, want)
			}
			got := []float64{metric(t, second, "wharf_filled_bytes_total", "source", "bucket"), metric(t, second, "wharf_filled_bytes_total", "source", "upstream")}
			if !slices.Equal(got, []float64{float64(fromBucket), float64(fromUpstream)}) {
				t.Errorf("filled from the bucket, upstream: %v, want [%d %d]", got, fromBucket, fromUpstream)
			}
			if b, err := os.ReadFile(s3.ObjectFile(key)); err != nil || !bytes.Equal(b, l.Data) {
				t.Fatalf("the bucket afterwards: %v, %d bytes", err, len(b))
			}
		})
	}
}

type catchingReader struct{}

func (catchingReader) Read([]byte) (int, error) { return 0, io.ErrUnexpectedEOF }

// blocked reads nothing until ctx ends.
type blocked struct{ ctx context.Context }

func (b blocked) Read([]byte) (int, error) {
	<-b.ctx.Done()
	return 0, b.ctx.Err()
}

// bucketReplica is a replica on an empty disk over the bucket params name,
// with up as its default upstream.
func bucketReplica(t *testing.T, up *upstreamtest.Registry, params map[string]any, cfg cache.Config) *env {
	t.Helper()
	return bucketReplicaOpts(t, up, params, envOpts{cfg: cfg})
}

// fillsDone waits until e has no fill running.
func fillsDone(t *testing.T, e *env) {
	t.Helper()
	if n := settle(func() int { return int(metric(t, e, "wharf_fills_in_flight")) }, 0); n != 0 {
		t.Fatalf("%d fills still running", n)
	}
}

// bucketReplicaOpts is bucketReplica with every option.
func bucketReplicaOpts(t *testing.T, up *upstreamtest.Registry, params map[string]any, o envOpts) *env {
	t.Helper()
	r, err := storage.OpenBucket(t.Context(), "s3", params)
	if err != nil {
		t.Fatal(err)
	}
	o.sopts.Bucket = r
	return newEnvOpts(t, t.TempDir(), o, spec{name: "docker.io", reg: up, def: true, ttl: time.Hour})
}

// filled waits until e has no fill running and nothing left to upload: a
// fill stores and indexes after its client has every byte, and the
// bucket gets it after that.
func filled(t *testing.T, e *env) {
	t.Helper()
	fillsDone(t, e)
	if n := settle(func() int { return int(e.store.Uploads().Pending) }, 0); n != 0 {
		t.Fatalf("%d blobs still to upload", n)
	}
}
