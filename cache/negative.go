package cache

import (
	"sync"
	"time"
)

// maxNegative bounds the negative cache; past it, expired entries are
// swept, and if that is not enough the cache starts over.
const maxNegative = 10_000

// negative remembers, for a short while, references upstream said do not
// exist, so a crash-looping pod asking for a missing tag cannot become an
// upstream request storm. Entries expire lazily: no timers.
type negative struct {
	mu    sync.Mutex
	until map[string]time.Time
}

func (n *negative) has(key string, now time.Time) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	t, ok := n.until[key]
	if ok && !now.Before(t) {
		delete(n.until, key)
		return false
	}
	return ok
}

func (n *negative) add(key string, until time.Time, now time.Time) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.until == nil {
		n.until = map[string]time.Time{}
	}
	if len(n.until) >= maxNegative {
		for k, t := range n.until {
			if !now.Before(t) {
				delete(n.until, k)
			}
		}
		if len(n.until) >= maxNegative {
			clear(n.until)
		}
	}
	n.until[key] = until
}
