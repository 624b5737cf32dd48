package cache

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"
)

// upstreamErr is an upstream answer as the cache sees one: a status, OCI
// codes, maybe a Retry-After.
type upstreamErr struct {
	status int
	codes  []string
	retry  time.Duration
}

func (e *upstreamErr) Error() string             { return fmt.Sprintf("upstream answered %d", e.status) }
func (e *upstreamErr) StatusCode() int           { return e.status }
func (e *upstreamErr) OCICodes() []string        { return e.codes }
func (e *upstreamErr) RetryAfter() time.Duration { return e.retry }

// Only the registry's own 404 is "not found"; only no answer, a timeout, a
// 5xx or a 429 is "unavailable" (the one case a stale answer may be
// served); any other 4xx is passed on.
func TestClassify(t *testing.T) {
	for _, c := range []struct {
		err  error
		want error
	}{
		{&upstreamErr{status: 404}, ErrNotFound},
		{&upstreamErr{status: 401}, ErrDenied},
		{&upstreamErr{status: 403}, ErrDenied},
		{&upstreamErr{status: 400}, ErrRejected},
		{&upstreamErr{status: 412}, ErrRejected},
		{&upstreamErr{status: 451}, ErrRejected},
		{&upstreamErr{status: 408}, ErrUnavailable},
		{&upstreamErr{status: 429}, ErrUnavailable},
		{&upstreamErr{status: 500}, ErrUnavailable},
		{&upstreamErr{status: 502}, ErrUnavailable}, // a token service's or CDN's 404 arrives as this
		{&upstreamErr{status: 0}, ErrUnavailable},   // no answer
		{context.DeadlineExceeded, ErrUnavailable},
		{fmt.Errorf("%w: wrong digest", ErrBadUpstream), ErrBadUpstream},
	} {
		got := classify(c.err)
		if !errors.Is(got, c.want) {
			t.Errorf("classify(%v) = %v, want %v", c.err, got, c.want)
		}
		var sc interface{ StatusCode() int }
		if ue, ok := c.err.(*upstreamErr); ok && (!errors.As(got, &sc) || sc.StatusCode() != ue.status) {
			t.Errorf("classify(%v) lost the upstream status", c.err)
		}
	}
	if classify(nil) != nil {
		t.Fatal("classify(nil) is an error")
	}
}
