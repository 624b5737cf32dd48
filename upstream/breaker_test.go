package upstream

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"
)

func TestBreaker(t *testing.T) {
	now := time.Unix(0, 0)
	b := newBreaker()
	b.now = func() time.Time { return now }
	fail := func() { b.allow(); b.record("r", nil, errors.New("connection refused")) }
	ok := &http.Response{StatusCode: 200, Header: http.Header{}}

	for range tripAfter - 1 {
		fail()
	}
	if w := b.allow(); w != 0 {
		t.Fatalf("open after %d failures", tripAfter-1)
	}
	b.record("r", nil, errors.New("refused"))
	if w := b.allow(); w != openFirst {
		t.Fatalf("after %d failures: wait %v, want %v", tripAfter, w, openFirst)
	}
	now = now.Add(openFirst)
	if w := b.allow(); w != 0 {
		t.Fatalf("no probe after the open period: %v", w)
	}
	if w := b.allow(); w != time.Second {
		t.Fatalf("second caller during the probe: %v", w)
	}
	b.record("r", nil, errors.New("still down")) // failed probe: open twice as long
	if w := b.allow(); w != 2*openFirst {
		t.Fatalf("after a failed probe: %v", w)
	}
	now = now.Add(2 * openFirst)
	b.allow()
	b.release() // the probe's caller gave up: the next caller probes
	if w := b.allow(); w != 0 {
		t.Fatalf("probe not handed on: %v", w)
	}
	b.record("r", ok, nil)
	if w := b.allow(); w != 0 || b.failures != 0 {
		t.Fatalf("not closed after a good probe: %v, %d failures", w, b.failures)
	}

	// One 429 opens the circuit for as long as upstream asked.
	b.allow()
	b.record("r", &http.Response{StatusCode: 429, Header: http.Header{"Retry-After": {"30"},
		"Ratelimit-Limit": {"100;w=21600"}, "Ratelimit-Remaining": {"0;w=21600"}}}, nil)
	if w := b.allow(); w != 30*time.Second {
		t.Fatalf("after 429 Retry-After 30: %v", w)
	}
	if b.limit != 100 || b.remaining != 0 {
		t.Fatalf("rate limit headers: %d/%d", b.remaining, b.limit)
	}
}

// Five 500s from one repository leave the circuit closed; 500s from five
// repositories open it, as transport failures do.
func TestBreakerCountsABrokenRepositoryOnce(t *testing.T) {
	now := time.Unix(0, 0)
	b := newBreaker()
	b.now = func() time.Time { return now }
	fail500 := &http.Response{StatusCode: 500, Status: "500 Internal Server Error", Header: http.Header{}}
	for range 3 * tripAfter {
		b.allow()
		b.record("broken/repo", fail500, nil)
	}
	if w := b.allow(); w != 0 {
		t.Fatalf("one broken repository opened the circuit for %v", w)
	}
	for i := range tripAfter - 2 {
		b.allow()
		b.record(fmt.Sprintf("other/repo%d", i), fail500, nil)
	}
	if w := b.allow(); w != 0 {
		t.Fatalf("open after %d repositories failed", tripAfter-1)
	}
	b.record("yet/another", fail500, nil)
	if w := b.allow(); w != openFirst {
		t.Fatalf("after %d repositories failed: wait %v, want %v", tripAfter, w, openFirst)
	}
	// A success anywhere starts the count again.
	now = now.Add(openFirst)
	b.allow()
	b.record("broken/repo", &http.Response{StatusCode: 200, Header: http.Header{}}, nil)
	for range tripAfter {
		b.allow()
		b.record("broken/repo", fail500, nil)
	}
	if w := b.allow(); w != 0 {
		t.Fatalf("a repository failing again after a success opened the circuit: %v", w)
	}
}

// A circuit opening and closing is logged, naming the target.
func TestBreakerLogsItsChanges(t *testing.T) {
	var buf bytes.Buffer
	now := time.Unix(0, 0)
	b := newBreaker()
	b.now, b.log, b.kind, b.name = func() time.Time { return now }, slog.New(slog.NewTextHandler(&buf, nil)), "target", "harbor-b"
	for range tripAfter {
		b.allow()
		b.record("r", nil, errors.New("connection refused"))
	}
	now = now.Add(openFirst)
	b.allow()
	b.record("r", &http.Response{StatusCode: 200, Header: http.Header{}}, nil)
	logs := buf.String()
	if !strings.Contains(logs, `level=WARN msg="circuit open: not calling it for a while" target=harbor-b for=5s failures=5 last_error="connection refused"`) ||
		!strings.Contains(logs, `level=INFO msg="circuit closed: answering again" target=harbor-b`) || strings.Count(logs, "\n") != 2 {
		t.Fatalf("logs:\n%s", logs)
	}
}
