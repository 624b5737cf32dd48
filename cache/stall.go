package cache

import (
	"fmt"
	"io"
	"sync/atomic"
	"time"
)

// stallGuard closes rc when a read of it waits longer than d for a byte: a
// bucket or a peer that stops sending mid-body (frozen, or cut off without
// a reset) must not hold the fill and its clients until FillTimeout. The
// blocked read then fails, and the fill goes on from the next source. Only
// reads are timed: the fill's own time between them (a slow disk) is not
// the source's silence.
func stallGuard(rc io.ReadCloser, d time.Duration) io.ReadCloser {
	g := &guarded{ReadCloser: rc, d: d}
	g.t = time.AfterFunc(d, func() {
		g.stalled.Store(true)
		rc.Close()
	})
	g.t.Stop() // started by each read
	return g
}

type guarded struct {
	io.ReadCloser
	d       time.Duration
	t       *time.Timer
	stalled atomic.Bool
}

func (g *guarded) Read(p []byte) (int, error) {
	g.t.Reset(g.d)
	n, err := g.ReadCloser.Read(p)
	g.t.Stop()
	if err != nil && g.stalled.Load() {
		err = fmt.Errorf("no byte for %v: %w", g.d, err)
	}
	return n, err
}

func (g *guarded) Close() error {
	g.t.Stop()
	return g.ReadCloser.Close()
}
