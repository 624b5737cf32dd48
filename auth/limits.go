package auth

import (
	"sync"
	"time"
)

// Bounds of the two memories authentication keeps: neither grows with
// what anonymous clients send.
const (
	credTTL      = time.Minute // a verified credential is trusted this long
	maxCreds     = 4096        // verified credentials remembered
	maxAddrs     = 4096        // remote addresses with recent failures remembered
	failWindow   = time.Minute
	maxFailures  = 10              // failed logins per address and window before 429, by default
	blockFor     = 2 * time.Minute // how long an address then waits
	maxNameInLog = 64
)

// credCache remembers which Authorization values were verified, keyed by
// their SHA-256, so bcrypt runs once per client and minute, not per request.
type credCache struct {
	mu sync.Mutex
	m  map[[32]byte]verified
}

type verified struct {
	user  string
	until time.Time
}

func (c *credCache) get(key [32]byte, now time.Time) (string, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	v, ok := c.m[key]
	if !ok || now.After(v.until) {
		return "", false
	}
	return v.user, true
}

func (c *credCache) put(key [32]byte, user string, now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = map[[32]byte]verified{}
	}
	if len(c.m) >= maxCreds {
		for k, v := range c.m {
			if now.After(v.until) || len(c.m) >= maxCreds*3/4 {
				delete(c.m, k) // expired first in spirit; map order makes the rest random
			}
		}
	}
	c.m[key] = verified{user: user, until: now.Add(credTTL)}
}

func (c *credCache) clear() {
	c.mu.Lock()
	c.m = nil
	c.mu.Unlock()
}

func (c *credCache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.m)
}

// limiter counts failed logins per remote address: past maxFailures in a
// window the address is refused for blockFor, without a bcrypt run.
type limiter struct {
	max int // failures in a window
	mu  sync.Mutex
	m   map[string]*failures
}

type failures struct {
	start time.Time // of the window
	n     int
	until time.Time // blocked until
}

// blocked is how long addr must still wait, 0 if it may try.
func (l *limiter) blocked(addr string, now time.Time) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	if f := l.m[addr]; f != nil && now.Before(f.until) {
		return f.until.Sub(now)
	}
	return 0
}

// fail counts a failure of addr and reports whether it is now blocked.
func (l *limiter) fail(addr string, now time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.m == nil {
		l.m = map[string]*failures{}
	}
	f := l.m[addr]
	if f == nil || now.Sub(f.start) > failWindow {
		if f == nil && len(l.m) >= maxAddrs {
			l.prune(now)
		}
		f = &failures{start: now}
		l.m[addr] = f
	}
	f.n++
	if f.n >= l.max {
		f.until = now.Add(blockFor)
		return true
	}
	return false
}

// prune drops addresses neither blocked nor in a current window, then,
// if that was not enough, any; l.mu is held.
func (l *limiter) prune(now time.Time) {
	for k, f := range l.m {
		if now.After(f.until) && now.Sub(f.start) > failWindow {
			delete(l.m, k)
		}
	}
	for k := range l.m {
		if len(l.m) < maxAddrs*3/4 {
			break
		}
		delete(l.m, k)
	}
}

func (l *limiter) len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.m)
}
