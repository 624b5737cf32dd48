package storage

import (
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
)

// Access times of many blobs served between two flushes (a busy minute,
// or the last one before a stop) are all written: one transaction for
// them all was too big for the index, and every one was lost.
func TestAccessTimesOfManyBlobsAreFlushed(t *testing.T) {
	s, err := Open(t.TempDir(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	const n = 20_000
	dgsts := make([]digest.Digest, n)
	for i := range dgsts {
		dgsts[i] = digest.FromString(fmt.Sprint(i))
		if err := s.recordBlob(dgsts[i], 100, "", nil); err != nil {
			t.Fatal(err)
		}
	}
	before := time.Now()
	for _, d := range dgsts {
		s.Touch(d)
	}
	if err := s.flushAccess(); err != nil {
		t.Fatalf("flush of %d access times: %v", n, err)
	}
	for _, i := range []int{0, n / 2, n - 1} {
		bi, err := s.Blob(dgsts[i])
		if err != nil || bi.Accessed.Before(before.Add(-time.Second)) {
			t.Fatalf("blob %d: accessed %v (%v), want about %v", i, bi.Accessed, err, before)
		}
	}
}

// The start-up count reads a record's size without decoding it, and
// falls back to decoding for a record written some other way.
func TestRecordSize(t *testing.T) {
	for v, want := range map[string]int64{
		`{"size":1234,"mediaType":"x","accessed":"2026-01-01T00:00:00Z"}`: 1234,
		`{"size":0}`: 0,
		`{"accessed":"2026-01-01T00:00:00Z","size":77}`: 77,
	} {
		if got, err := recordSize([]byte(v)); err != nil || got != want {
			t.Errorf("%s: %d, %v; want %d", v, got, err, want)
		}
	}
}

// Eviction's walk reads a record's size and last access without decoding
// it, and decodes a record written some other way.
func TestRecordUse(t *testing.T) {
	at := time.Date(2026, 12, 7, 23, 50, 1, 123456789, time.UTC)
	marshalled, _ := json.Marshal(BlobInfo{Size: 99, MediaType: `x","accessed":"2001-01-01T00:00:00Z`, Accessed: at, Sources: []string{"docker.io"}})
	for v, want := range map[string]int64{
		string(marshalled): 99,
		`{"size":7,"accessed":"2026-12-07T23:50:01.123456789Z"}`:              7,
		`{"accessed":"2026-12-07T23:50:01.123456789Z","size":8,"sources":[]}`: 8,
		`{"size":9, "accessed": "2026-12-07T23:50:01.123456789Z"}`:            9,
	} {
		n, got, err := recordUse([]byte(v))
		if err != nil || n != want || !got.Equal(at) {
			t.Errorf("%s: %d %v %v; want %d %v", v, n, got, err, want, at)
		}
	}
}
