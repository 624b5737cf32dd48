package storage

import (
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
)

// Months of churn in seconds: large tag lists (value-log records)
// rewritten over and over among many small records, and the store's own
// collection (all the time here, every 10 minutes in production) keeps
// the value log bounded: after each collection it holds the live records
// and what the last rounds wrote, never the megabytes written in all.
func TestIndexCollectionBoundsTheIndex(t *testing.T) {
	// Small files and memtables: the churn of months in megabytes.
	prevLog, prevMem, prevEvery, prevWatch := valueLogFileSize, memTableSize, indexGCEvery, watchEvery
	valueLogFileSize, memTableSize, indexGCEvery, watchEvery = 1<<20, 1<<20, time.Millisecond, 20*time.Millisecond
	t.Cleanup(func() {
		valueLogFileSize, memTableSize, indexGCEvery, watchEvery = prevLog, prevMem, prevEvery, prevWatch
	})
	s, err := Open(t.TempDir(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	tags := make([]string, 4000) // about 100 KiB of JSON: a value-log record
	for i := range tags {
		tags[i] = fmt.Sprintf("v1.%d.%d-build%06d", i/100, i%100, i)
	}
	const repos, lists = 8, 24
	var written int64
	const live = repos * 100 << 10
	const bound = live + 3*lists*100<<10 + 2<<20 // live, three rounds not yet compacted, two files
	for round := range 12 {
		for i := range lists {
			if err := s.PutTagList("docker.io", "r/"+strconv.Itoa(i%repos), tags, time.Now()); err != nil {
				t.Fatal(err)
			}
			written += 100 << 10
			// New blobs' memberships: small records, many of them, which
			// flush memtables and so run the compactions that tell the
			// collection what is garbage.
			dgsts := make([]digest.Digest, 1500)
			for j := range dgsts {
				dgsts[j] = digest.FromString(fmt.Sprint(round, i, j))
			}
			if err := s.AddMembers("docker.io", "small/"+strconv.Itoa(i), dgsts...); err != nil {
				t.Fatal(err)
			}
		}
		// The store's own collection: wait for the next one to end.
		runs := s.IndexStats().GCRuns
		deadline := time.Now().Add(20 * time.Second)
		for s.IndexStats().GCRuns < runs+1 { // one that ended after this round
			if time.Now().After(deadline) {
				t.Fatalf("round %d: the store ran no collection of its index", round)
			}
			time.Sleep(20 * time.Millisecond) // polling the store's own loop
		}
		st := s.IndexStats()
		t.Logf("round %d: value log %d KiB, tree %d KiB, %d KiB written so far; %d rewrites, %d KiB reclaimed in all",
			round, st.LogBytes>>10, st.LSMBytes>>10, written>>10, st.GCRewrites, st.GCReclaimedBytes>>10)
		if round >= 1 && st.LogBytes > bound {
			t.Fatalf("round %d: the value log holds %d KiB after collection, more than %d KiB (%d KiB written)", round, st.LogBytes>>10, bound>>10, written>>10)
		}
	}
	// Bounded, not merely slow to grow: far more was written than it holds.
	if st := s.IndexStats(); st.GCRewrites == 0 || st.GCReclaimedBytes == 0 || written < 2*bound {
		t.Fatalf("stats: %+v after %d KiB written", st, written>>10)
	}
	// Everything live is still there.
	for i := range repos {
		got, _, err := s.TagList("docker.io", "r/"+strconv.Itoa(i))
		if err != nil || len(got) != len(tags) {
			t.Fatalf("tag list %d after collection: %d tags, %v", i, len(got), err)
		}
	}
}
