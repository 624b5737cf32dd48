package cache

import (
	"context"
	"fmt"
	"time"

	"golang.org/x/sync/semaphore"
)

// Bounds on fills: a cap per upstream, so that fills never take every
// request slot, and one sweeper that cancels the fills nobody reads.

// busyError is a miss that found every fill slot of its upstream taken for
// the whole wait: the client is told to come back (503, Retry-After).
type busyError struct{ wait time.Duration }

func (e busyError) Error() string {
	return fmt.Sprintf("every blob fill slot of the upstream stayed taken for %v", e.wait)
}
func (e busyError) Unwrap() error             { return ErrUnavailable }
func (e busyError) RetryAfter() time.Duration { return time.Second }

// takeSlot takes one of a fill cap's slots, waiting at most wait: past
// it, busyError. golang.org/x/sync's semaphore keeps waiters in order.
func takeSlot(ctx context.Context, slots *semaphore.Weighted, wait time.Duration) error {
	if slots.TryAcquire(1) {
		return nil
	}
	wctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	if err := slots.Acquire(wctx, 1); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return busyError{wait}
	}
	return nil
}

func releaseSlot(slots *semaphore.Weighted) {
	if slots != nil {
		slots.Release(1)
	}
}

// sweep cancels, once a second, the fills nobody has read for their
// upstream's FillGrace: a client that went away, and no job, must not hold
// an upstream slot for up to FillTimeout. One goroutine for all fills.
func (c *Cache) sweep() {
	defer c.running.Done()
	tick := time.NewTicker(sweepEvery)
	defer tick.Stop()
	var published time.Time
	for {
		select {
		case <-c.stop:
			return
		case now := <-tick.C:
			if now.Sub(published) >= pinsEvery || c.pinsDirty.Swap(false) {
				published = now
				c.publishPins()
			}
			c.maybeEvict() // the filesystem may have filled up behind our back
			c.mu.Lock()
			for _, f := range c.fills {
				if f.abandoned(now, c.upstreams[f.up].FillGrace) {
					f.dropped.Store(true)
					f.cancel()
				}
			}
			c.mu.Unlock()
		}
	}
}

// sweepEvery is how often sweep looks at the fills.
var sweepEvery = time.Second

// abandoned reports whether nobody has read f for longer than grace.
func (f *fill) abandoned(now time.Time, grace time.Duration) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return !f.eager && !f.done && f.refs == 1 && !f.idle.IsZero() && now.Sub(f.idle) > grace
}
