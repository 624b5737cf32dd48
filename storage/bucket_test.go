package storage

import (
	"bytes"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/wharf-registry/wharf/storage/s3test"
)

// failAfter yields n bytes of data and then fails, as a fill's source
// cut off would.
type failAfter struct {
	r io.Reader
	n int
}

func (f *failAfter) Read(p []byte) (int, error) {
	if f.n <= 0 {
		return 0, errors.New("cut off")
	}
	p = p[:min(len(p), f.n)]
	n, err := f.r.Read(p)
	f.n -= n
	return n, err
}

// Blobs go to a real S3-compatible store through distribution's s3
// driver, in distribution's key layout, in several parts when large;
// they read back whole and from an offset; an upload that fails or comes
// up short leaves no object; "not there" is ErrNotFound and an
// unreachable store is not.
func TestRemoteBlobsOnS3(t *testing.T) {
	s3 := s3test.Start(t)
	params := s3.Params()
	params["chunksize"] = 5 << 20 // the driver's smallest part: a 12 MiB blob goes in three
	r, err := OpenBucket(t.Context(), "s3", params)
	if err != nil {
		t.Fatal(err)
	}
	data := bytes.Repeat([]byte("wharf keeps blobs in buckets. "), 12<<20/30)
	dgst := digest.FromBytes(data)
	if err := r.Upload(t.Context(), dgst, int64(len(data)), bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	key, _ := remoteKey(dgst)
	if key != "/docker/registry/v2/blobs/sha256/"+dgst.Encoded()[:2]+"/"+dgst.Encoded()+"/data" {
		t.Fatalf("key %s is not distribution's", key)
	}
	if onDisk, err := os.ReadFile(s3.ObjectFile(key)); err != nil || !bytes.Equal(onDisk, data) {
		t.Fatalf("the bucket's object: %v, %d bytes", err, len(onDisk))
	}
	if size, err := r.Stat(t.Context(), dgst); err != nil || size != int64(len(data)) {
		t.Fatalf("stat: %d, %v", size, err)
	}
	rc, err := r.Open(t.Context(), dgst, 7<<20)
	if err != nil {
		t.Fatal(err)
	}
	tail, err := io.ReadAll(rc)
	rc.Close()
	if err != nil || !bytes.Equal(tail, data[7<<20:]) {
		t.Fatalf("read from 7 MiB: %v, %d bytes", err, len(tail))
	}

	for name, src := range map[string]io.Reader{
		"cut off":     &failAfter{r: bytes.NewReader(data), n: 6 << 20},
		"comes short": bytes.NewReader(data[:len(data)-1]),
	} {
		// A driver of its own for each failed upload: distribution's s3
		// writer returns its part buffer to the driver's pool when an
		// upload is abandoned while net/http may still be reading the
		// last part from it (no happens-before the race detector can
		// see), and the next upload writes into it.
		r, err := OpenBucket(t.Context(), "s3", params)
		if err != nil {
			t.Fatal(err)
		}
		other := digest.FromString(name)
		if err := r.Upload(t.Context(), other, int64(len(data)), src); err == nil {
			t.Fatalf("%s: upload succeeded", name)
		}
		if _, err := r.Stat(t.Context(), other); !errors.Is(err, ErrNotFound) {
			t.Fatalf("%s: an object was left: %v", name, err)
		}
		key, _ := remoteKey(other)
		if _, err := os.Stat(s3.ObjectFile(key)); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("%s: a file was left in the bucket: %v", name, err)
		}
	}

	if _, err := r.Stat(t.Context(), digest.FromString("never stored")); !errors.Is(err, ErrNotFound) {
		t.Fatalf("a missing blob: %v, want ErrNotFound", err)
	}
	if err := r.Delete(t.Context(), dgst); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Stat(t.Context(), dgst); !errors.Is(err, ErrNotFound) {
		t.Fatalf("after delete: %v", err)
	}
	if err := r.Healthy(t.Context()); err != nil {
		t.Fatalf("healthy store: %v", err)
	}
	s3.Stop()
	if _, err := r.Stat(t.Context(), dgst); err == nil || errors.Is(err, ErrNotFound) {
		t.Fatalf("an unreachable store answered %v; want an error that is not ErrNotFound", err)
	}
	if err := r.Healthy(t.Context()); err == nil {
		t.Fatal("an unreachable store is healthy")
	}
}

// gc keeps the bucket under a size by deleting the blobs least recently
// used across the fleet (a replica's recorded use counts over the
// upload), sparing what any replica pins and what was used within its
// minimum age, and only says so when dry.
func TestRemoteGC(t *testing.T) {
	s3 := s3test.Start(t)
	r, err := OpenBucket(t.Context(), "s3", s3.Params())
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	ds := uploadBlobs(t, r, 5)
	// A use recorded at a time to come: the marker says it, and the
	// bucket saw it written then (gc orders by the listing's times).
	touch := func(d digest.Digest, at time.Time) {
		t.Helper()
		if err := r.Touch(t.Context(), d, at); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(s3.ObjectFile(accessKey(d)), at, at); err != nil {
			t.Fatal(err)
		}
	}
	// Uses: 0 oldest ... 4 newest, then 0 used again last of all; 1 pinned.
	for i, d := range ds {
		touch(d, now.Add(time.Duration(i)*time.Hour))
	}
	touch(ds[0], now.Add(10*time.Hour))
	if err := r.PutPins(t.Context(), "wharf-0", []digest.Digest{ds[1]}); err != nil {
		t.Fatal(err)
	}
	// The runs below happen later: 11 hours on, every use is past.
	dry, err := r.GC(t.Context(), GCPolicy{Keep: 2500, PinsAge: 24 * time.Hour, Dry: true}, now.Add(11*time.Hour))
	if err != nil || dry.Before != 5000 || dry.After != 2000 || len(dry.Deleted) != 3 || dry.Pinned != 1 {
		t.Fatalf("dry run: %+v, %v", dry, err)
	}
	if got := []digest.Digest{dry.Deleted[0].Digest, dry.Deleted[1].Digest, dry.Deleted[2].Digest}; !slices.Equal(got, []digest.Digest{ds[2], ds[3], ds[4]}) {
		t.Fatalf("dry run would delete %v, want 2, 3 and 4 (1 is pinned, 0 used last)", got)
	}
	for _, d := range ds {
		if _, err := r.Stat(t.Context(), d); err != nil {
			t.Fatalf("the dry run deleted %s: %v", d, err)
		}
	}
	// Blobs used within MinAge stay, however far above Keep the bucket is.
	res, err := r.GC(t.Context(), GCPolicy{Keep: 0, PinsAge: 24 * time.Hour, MinAge: 6*time.Hour + 30*time.Minute}, now.Add(10*time.Hour))
	if err != nil || len(res.Deleted) != 2 || res.Recent != 2 || res.Pinned != 1 || res.After != 3000 {
		t.Fatalf("gc sparing what was used within 6h30m: %+v, %v", res, err)
	}
	if got := []digest.Digest{res.Deleted[0].Digest, res.Deleted[1].Digest}; !slices.Equal(got, []digest.Digest{ds[2], ds[3]}) {
		t.Fatalf("gc deleted %v, want 2 and 3 (1 is pinned; 4 and 0 used within 6h30m)", got)
	}
	res, err = r.GC(t.Context(), GCPolicy{Keep: 2500, PinsAge: 24 * time.Hour}, now.Add(11*time.Hour))
	if err != nil || len(res.Deleted) != 1 || res.After != 2000 {
		t.Fatalf("gc: %+v, %v", res, err)
	}
	for i, d := range ds {
		_, err := r.Stat(t.Context(), d)
		if gone := errors.Is(err, ErrNotFound); gone != (i >= 2) {
			t.Fatalf("blob %d after gc: %v", i, err)
		}
	}
	// A pin list older than the age given no longer spares anything.
	res, err = r.GC(t.Context(), GCPolicy{}, now.Add(11*time.Hour))
	if err != nil || res.After != 0 || len(res.Deleted) != 2 {
		t.Fatalf("gc to nothing with stale pins: %+v, %v", res, err)
	}
}

// A blob used after gc listed the bucket (a replica redirected a client to
// it, and wrote its marker first) is not deleted: gc reads the marker
// again just before each deletion.
func TestGCRereadsTheMarker(t *testing.T) {
	s3 := s3test.Start(t)
	r, err := OpenBucket(t.Context(), "s3", s3.Params())
	if err != nil {
		t.Fatal(err)
	}
	ds := uploadBlobs(t, r, 3)
	later := time.Now().Add(3 * time.Hour) // every upload is old by then
	r.beforeDelete = func(d digest.Digest) {
		if d == ds[1] {
			if err := r.Touch(t.Context(), d, later.Add(-time.Second)); err != nil {
				t.Error(err)
			}
		}
	}
	res, err := r.GC(t.Context(), GCPolicy{MinAge: time.Hour}, later)
	if err != nil || len(res.Deleted) != 2 || res.Recent != 1 || res.After != 1000 {
		t.Fatalf("gc: %+v, %v", res, err)
	}
	for i, d := range ds {
		_, err := r.Stat(t.Context(), d)
		if gone := errors.Is(err, ErrNotFound); gone != (i != 1) {
			t.Fatalf("blob %d after gc: %v", i, err)
		}
	}
}

// uploadBlobs puts n blobs of 1000 bytes each ("aaa...", "bbb...") in r.
func uploadBlobs(t *testing.T, r *Bucket, n int) []digest.Digest {
	t.Helper()
	var ds []digest.Digest
	for i := range n {
		data := bytes.Repeat([]byte{byte('a' + i)}, 1000)
		d := digest.FromBytes(data)
		ds = append(ds, d)
		if err := r.Upload(t.Context(), d, int64(len(data)), bytes.NewReader(data)); err != nil {
			t.Fatal(err)
		}
	}
	return ds
}

// A marker or a pin list gc cannot read (the bucket refuses, not "no such
// key") stops the collection: a blob whose last use or pin is unknown is
// not deleted on a guess.
func TestGCStopsAtWhatItCannotRead(t *testing.T) {
	for _, refused := range []string{accessPrefix, pinsPrefix} {
		t.Run(path.Base(refused), func(t *testing.T) {
			var refuse atomic.Bool
			r, err := OpenBucket(t.Context(), "s3", behind(t, s3test.Start(t), func(w http.ResponseWriter, r *http.Request) bool {
				if refuse.Load() && r.Method == http.MethodGet && strings.Contains(r.URL.Path, refused+"/") {
					http.Error(w, "AccessDenied", http.StatusForbidden)
					return true
				}
				return false
			}))
			if err != nil {
				t.Fatal(err)
			}
			ds := uploadBlobs(t, r, 2)
			later := time.Now().Add(3 * time.Hour)
			// One used within MinAge, the other pinned: gc may delete
			// neither.
			if err := r.Touch(t.Context(), ds[0], later.Add(-30*time.Minute)); err != nil {
				t.Fatal(err)
			}
			if err := r.PutPins(t.Context(), "wharf-0", ds[1:]); err != nil {
				t.Fatal(err)
			}
			refuse.Store(true)
			res, err := r.GC(t.Context(), GCPolicy{MinAge: time.Hour, PinsAge: 24 * time.Hour}, later)
			if err == nil || len(res.Deleted) != 0 {
				t.Fatalf("gc with %s unreadable: %+v, %v; want an error and nothing deleted", refused, res, err)
			}
			for _, d := range ds {
				if _, err := r.Stat(t.Context(), d); err != nil {
					t.Fatalf("%s after gc: %v", d, err)
				}
			}
		})
	}
}

// behind puts the bucket behind a proxy that lets intercept answer a
// request first (true: answered), and returns the driver parameters that
// reach the bucket through it.
func behind(t *testing.T, s3 *s3test.Server, intercept func(http.ResponseWriter, *http.Request) bool) map[string]any {
	t.Helper()
	target, _ := url.Parse(s3.URL)
	rp := &httputil.ReverseProxy{Rewrite: func(r *httputil.ProxyRequest) { r.SetURL(target); r.Out.Host = r.In.Host }}
	front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !intercept(w, r) {
			rp.ServeHTTP(w, r)
		}
	}))
	t.Cleanup(front.Close)
	p := s3.Params()
	p["regionendpoint"] = front.URL
	return p
}

// Clients redirected to the same blob at once wait for one marker write
// between them, not one each; a redirect within markFresh writes none.
func TestMarkUsedWritesOnceForMany(t *testing.T) {
	var puts atomic.Int32
	release := make(chan struct{})
	r, err := OpenBucket(t.Context(), "s3", behind(t, s3test.Start(t), func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method == http.MethodPut && strings.Contains(r.URL.Path, accessPrefix+"/") {
			puts.Add(1)
			<-release // held until every caller is under way
		}
		return false
	}))
	if err != nil {
		t.Fatal(err)
	}
	s, err := Open(t.TempDir(), Options{Bucket: r})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	d := digest.FromString("one blob, many clients")
	errs := make([]error, 8)
	var wg sync.WaitGroup
	for i := range errs {
		wg.Go(func() { errs[i] = s.MarkUsed(t.Context(), d) })
	}
	// Give every caller the time to send a marker of its own (bounded:
	// the point is that they do not).
	for deadline := time.Now().Add(500 * time.Millisecond); time.Now().Before(deadline) && puts.Load() < int32(len(errs)); {
		time.Sleep(5 * time.Millisecond)
	}
	close(release)
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("caller %d: %v", i, err)
		}
	}
	if err := s.MarkUsed(t.Context(), d); err != nil {
		t.Fatal(err)
	}
	if n := puts.Load(); n != 1 {
		t.Fatalf("%d marker writes for %d redirects at once and one more later, want 1", n, len(errs)+1)
	}
	if _, ok, err := r.marker(t.Context(), d); !ok || err != nil {
		t.Fatalf("the marker: %v, %v", ok, err)
	}
}

// gc lists the bucket; it reads the marker of a blob it is about to
// delete and no other: at a million blobs a read of every marker was a
// million requests before the first deletion.
func TestGCReadsOnlyTheMarkersOfWhatItDeletes(t *testing.T) {
	var reads atomic.Int32
	s3 := s3test.Start(t)
	r, err := OpenBucket(t.Context(), "s3", behind(t, s3, func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method == http.MethodGet && strings.Contains(r.URL.Path, accessPrefix+"/") {
			reads.Add(1)
		}
		return false
	}))
	if err != nil {
		t.Fatal(err)
	}
	ds := uploadBlobs(t, r, 20)
	now := time.Now()
	for i, d := range ds {
		if err := r.Touch(t.Context(), d, now); err != nil {
			t.Fatal(err)
		}
		at := now.Add(time.Duration(i) * time.Minute) // 0 used first
		if err := os.Chtimes(s3.ObjectFile(accessKey(d)), at, at); err != nil {
			t.Fatal(err)
		}
	}
	later := now.Add(time.Hour)
	dry, err := r.GC(t.Context(), GCPolicy{Keep: 17000, Dry: true}, later)
	if err != nil || len(dry.Deleted) != 3 || reads.Load() != 0 {
		t.Fatalf("dry run: %d to delete, %d markers read, %v; want 3 and none read", len(dry.Deleted), reads.Load(), err)
	}
	res, err := r.GC(t.Context(), GCPolicy{Keep: 17000}, later)
	if err != nil || len(res.Deleted) != 3 || reads.Load() != 3 {
		t.Fatalf("gc: %d deleted, %d markers read, %v; want 3 of each", len(res.Deleted), reads.Load(), err)
	}
	if got := []digest.Digest{res.Deleted[0].Digest, res.Deleted[1].Digest, res.Deleted[2].Digest}; !slices.Equal(got, ds[:3]) {
		t.Fatalf("gc deleted %v, want the three used first", got)
	}
}
