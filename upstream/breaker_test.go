package upstream

import (
	"errors"
	"net/http"
	"testing"
	"time"
)

func TestBreaker(t *testing.T) {
	now := time.Unix(0, 0)
	b := newBreaker()
	b.now = func() time.Time { return now }
	fail := func() { b.allow(); b.record(nil, errors.New("connection refused")) }
	ok := &http.Response{StatusCode: 200, Header: http.Header{}}

	for range tripAfter - 1 {
		fail()
	}
	if w := b.allow(); w != 0 {
		t.Fatalf("open after %d failures", tripAfter-1)
	}
	b.record(nil, errors.New("refused"))
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
	b.record(nil, errors.New("still down")) // failed probe: open twice as long
	if w := b.allow(); w != 2*openFirst {
		t.Fatalf("after a failed probe: %v", w)
	}
	now = now.Add(2 * openFirst)
	b.allow()
	b.release() // the probe's caller gave up: the next caller probes
	if w := b.allow(); w != 0 {
		t.Fatalf("probe not handed on: %v", w)
	}
	b.record(ok, nil)
	if w := b.allow(); w != 0 || b.failures != 0 {
		t.Fatalf("not closed after a good probe: %v, %d failures", w, b.failures)
	}

	// One 429 opens the circuit for as long as upstream asked.
	b.allow()
	b.record(&http.Response{StatusCode: 429, Header: http.Header{"Retry-After": {"30"},
		"Ratelimit-Limit": {"100;w=21600"}, "Ratelimit-Remaining": {"0;w=21600"}}}, nil)
	if w := b.allow(); w != 30*time.Second {
		t.Fatalf("after 429 Retry-After 30: %v", w)
	}
	if b.limit != 100 || b.remaining != 0 {
		t.Fatalf("rate limit headers: %d/%d", b.remaining, b.limit)
	}
}
