package cache

import (
	"context"
	"fmt"
	"time"
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

// takeSlot takes one of slots, waiting at most wait.
func takeSlot(ctx context.Context, slots chan struct{}, wait time.Duration) error {
	select {
	case slots <- struct{}{}:
		return nil
	default:
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case slots <- struct{}{}:
		return nil
	case <-t.C:
		return busyError{wait}
	case <-ctx.Done():
		return ctx.Err()
	}
}

func releaseSlot(slots chan struct{}) {
	if slots != nil {
		<-slots
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
			if now.Sub(published) >= pinsEvery {
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
