package auth

import (
	"sync"
	"time"
)

// Bounds of the two memories authentication keeps, neither growing with
// what anonymous clients send, and the pace of failing logins.
const (
	credTTL      = time.Minute // a verified credential is trusted this long
	maxCreds     = 4096        // verified credentials remembered
	maxPaces     = 8192        // failing (client, user) pairs and user names remembered
	failWindow   = 15 * time.Minute
	clientFree   = 5  // failures of one user name from one client before its attempts are paced, by default
	userFree     = 20 // failures of one user name from anywhere before its attempts are paced
	firstDelay   = time.Second
	maxDelay     = time.Minute
	maxWait      = 3 * time.Second // the longest an attempt waits for its turn; further off, 429
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

// throttle paces the login attempts of a user name that keeps failing,
// instead of locking anyone out. Failures are counted per user name from
// one client (an address; an IPv6 /64, which one host may hold whole) and
// per user name from anywhere. Past clientFree of the first or userFree of
// the second within failWindow, attempts for that name take turns:
// firstDelay apart, doubling with each further failure up to maxDelay. An
// attempt waits for its turn up to maxWait, else it is told to come back
// (429 with Retry-After). Only the name under attack is slowed: another
// user behind the same address (a NAT, a load balancer, Kubernetes SNAT)
// is not, and a credential verified before is never.
type throttle struct {
	clientFree int

	mu sync.Mutex
	m  map[string]*pace // "c" client user, "u" user: at most maxPaces
}

type pace struct {
	start time.Time // of the counting window
	fails int
	next  time.Time // the next attempt's turn
}

func clientKey(client, user string) string { return "c\x00" + client + "\x00" + user }
func userKey(user string) string           { return "u\x00" + user }

// delay is the pace of p's attempts, 0 while it has failures to spare.
func (p *pace) delay(free int) time.Duration {
	over := p.fails - free
	if over <= 0 {
		return 0
	}
	return min(firstDelay<<min(over-1, 16), maxDelay)
}

// turn books the next attempt of user from client and says how long it
// must wait for it; ok is false when that is past maxWait (nothing is
// booked, and wait is how long to stay away).
func (t *throttle) turn(client, user string, now time.Time) (wait time.Duration, ok bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	type paced struct {
		p     *pace
		delay time.Duration
	}
	var ps []paced
	at := now
	for key, free := range map[string]int{clientKey(client, user): t.clientFree, userKey(user): userFree} {
		p := t.current(key, now)
		if p == nil {
			continue
		}
		if d := p.delay(free); d > 0 {
			ps = append(ps, paced{p, d})
			if p.next.After(at) {
				at = p.next
			}
		}
	}
	if wait = at.Sub(now); wait > maxWait {
		return wait, false
	}
	for _, x := range ps {
		x.p.next = at.Add(x.delay)
	}
	return wait, true
}

// current is key's pace within the window, nil if it has none; t.mu is held.
func (t *throttle) current(key string, now time.Time) *pace {
	p := t.m[key]
	if p != nil && now.Sub(p.start) > failWindow {
		delete(t.m, key)
		return nil
	}
	return p
}

// fail counts a failed login of user from client.
func (t *throttle) fail(client, user string, now time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.m == nil {
		t.m = map[string]*pace{}
	}
	for _, key := range []string{clientKey(client, user), userKey(user)} {
		p := t.current(key, now)
		if p == nil {
			if len(t.m) >= maxPaces {
				t.prune(now)
			}
			p = &pace{start: now}
			t.m[key] = p
		}
		p.fails++
	}
}

// succeed forgets client's failures for user: the one who knows the
// password is back.
func (t *throttle) succeed(client, user string) {
	t.mu.Lock()
	delete(t.m, clientKey(client, user))
	t.mu.Unlock()
}

// prune drops paces past their window, then, if that was not enough,
// any; t.mu is held.
func (t *throttle) prune(now time.Time) {
	for k, p := range t.m {
		if now.Sub(p.start) > failWindow {
			delete(t.m, k)
		}
	}
	for k := range t.m {
		if len(t.m) < maxPaces*3/4 {
			break
		}
		delete(t.m, k)
	}
}

func (t *throttle) len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.m)
}
