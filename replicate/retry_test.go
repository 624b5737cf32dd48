package replicate

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/wharf-registry/wharf/cache"
)

// statusErr is a registry's answer, as upstream.Error presents it.
type statusErr struct {
	status int
	retry  time.Duration
}

func (e *statusErr) Error() string             { return fmt.Sprintf("registry answered %d", e.status) }
func (e *statusErr) StatusCode() int           { return e.status }
func (e *statusErr) RetryAfter() time.Duration { return e.retry }

// Transient failures are retried (honouring Retry-After, capped), final
// ones are not, and a job never waits past its context.
func TestRetry(t *testing.T) {
	c := &Jobs{retryBackoff: time.Millisecond}
	for _, tc := range []struct {
		err      error
		attempts int
	}{
		{fmt.Errorf("%w: %w", cache.ErrUnavailable, &statusErr{status: 503}), retryAttempts},
		{fmt.Errorf("%w: %w", cache.ErrUnavailable, &statusErr{status: 429, retry: 2 * time.Millisecond}), retryAttempts},
		{&statusErr{status: 500}, retryAttempts}, // a target's answer, unclassified
		{fmt.Errorf("%w: %w", cache.ErrNotFound, &statusErr{status: 404}), 1},
		{fmt.Errorf("%w: %w", cache.ErrDenied, &statusErr{status: 401}), 1},
		{fmt.Errorf("%w: %w", cache.ErrRejected, &statusErr{status: 412}), 1},
		{fmt.Errorf("%w: bad", cache.ErrBadUpstream), 1},
		{errors.New("local failure"), 1},
		{context.Canceled, 1},
	} {
		n := 0
		err := c.retry(t.Context(), func() error { n++; return tc.err })
		if n != tc.attempts || !errors.Is(err, tc.err) {
			t.Errorf("%v: %d attempts (%v), want %d", tc.err, n, err, tc.attempts)
		}
	}
	n := 0
	if err := c.retry(t.Context(), func() error {
		if n++; n < 3 {
			return &statusErr{status: 502}
		}
		return nil
	}); err != nil || n != 3 {
		t.Fatalf("a failure that clears: %v after %d attempts", err, n)
	}
	ctx, cancel := context.WithCancel(t.Context())
	slow := &Jobs{retryBackoff: time.Hour}
	start := time.Now()
	err := slow.retry(ctx, func() error { cancel(); return fmt.Errorf("%w: %w", cache.ErrUnavailable, &statusErr{status: 503}) })
	if err == nil || time.Since(start) > 10*time.Second {
		t.Fatalf("a cancelled job waited its back-off: %v", err)
	}
}
