package cache

import (
	"errors"
	"fmt"
	"testing"
	"time"
)

// Entries expire at their time, and the cache never holds more than
// maxNegative, whatever is added.
func TestNegativeCacheExpiresAndIsBounded(t *testing.T) {
	var n negative
	now := time.Unix(1_000_000, 0)
	gone := errors.New("gone")
	n.add("a", gone, now.Add(time.Second), now)
	if err := n.get("a", now.Add(999*time.Millisecond)); err != gone {
		t.Fatalf("before expiry: %v", err)
	}
	if err := n.get("a", now.Add(time.Second)); err != nil {
		t.Fatalf("at expiry: %v", err)
	}
	for i := range 3 * maxNegative {
		n.add(fmt.Sprint(i), gone, now.Add(time.Hour), now)
		if n.len() > maxNegative {
			t.Fatalf("%d entries after %d adds", n.len(), i+1)
		}
	}
	if err := n.get(fmt.Sprint(3*maxNegative-1), now); err != gone {
		t.Fatalf("the newest entry was dropped: %v", err)
	}
	// Expired entries go first.
	var m negative
	for i := range maxNegative {
		m.add(fmt.Sprint(i), gone, now.Add(time.Duration(i%2)*time.Hour), now) // half already expired
	}
	m.add("new", gone, now.Add(time.Hour), now)
	if m.len() != maxNegative/2+1 {
		t.Fatalf("after a sweep of the expired: %d entries", m.len())
	}
}

// What is remembered, and for what: 404s and denials, never outages or bad
// answers; a whole repository when upstream says NAME_UNKNOWN; nothing
// without a negative TTL.
func TestRememberAndRecall(t *testing.T) {
	c, _, _ := newTestCache(t, Config{})
	u := Upstream{Name: "up", NegativeTTL: time.Minute}
	key := manifestKey(u.Name, "org/app", "1")
	for _, err := range []error{classify(&upstreamErr{status: 503}), classify(&upstreamErr{status: 429}),
		fmt.Errorf("%w: x", ErrBadUpstream), classify(&upstreamErr{status: 412})} {
		c.remember(u, "org/app", key, err)
		if got := c.recall(u, "org/app", key); got != nil {
			t.Fatalf("%v remembered", err)
		}
	}
	notFound := classify(&upstreamErr{status: 404, codes: []string{"MANIFEST_UNKNOWN"}})
	c.remember(u, "org/app", key, notFound)
	if got := c.recall(u, "org/app", key); !errors.Is(got, ErrNotFound) {
		t.Fatalf("404 not remembered: %v", got)
	}
	if got := c.recall(u, "org/app", manifestKey(u.Name, "org/app", "2")); got != nil {
		t.Fatalf("another tag recalled: %v", got)
	}
	denied := classify(&upstreamErr{status: 401})
	c.remember(u, "org/private", blobKey(u.Name, "org/private", "sha256:x"), denied)
	if got := c.recall(u, "org/private", blobKey(u.Name, "org/private", "sha256:x")); !errors.Is(got, ErrDenied) {
		t.Fatalf("401 not remembered: %v", got)
	}
	c.remember(u, "org/nothing", manifestKey(u.Name, "org/nothing", "x"), classify(&upstreamErr{status: 404, codes: []string{"NAME_UNKNOWN"}}))
	for _, k := range []string{manifestKey(u.Name, "org/nothing", "any"), blobKey(u.Name, "org/nothing", "sha256:y"), tagsKey(u.Name, "org/nothing")} {
		if got := c.recall(u, "org/nothing", k); !errors.Is(got, ErrNotFound) {
			t.Fatalf("NAME_UNKNOWN does not cover %q: %v", k, got)
		}
	}
	// A tag list's NAME_UNKNOWN (a repository with no tags yet) covers the
	// list only: what is pushed next must not be hidden.
	c.remember(u, "org/new", tagsKey(u.Name, "org/new"), classify(&upstreamErr{status: 404, codes: []string{"NAME_UNKNOWN"}}))
	if got := c.recall(u, "org/new", blobKey(u.Name, "org/new", "sha256:z")); got != nil {
		t.Fatalf("an empty tag list hid the repository: %v", got)
	}
	off := Upstream{Name: "off"}
	c.remember(off, "org/app", manifestKey(off.Name, "org/app", "1"), notFound)
	if got := c.recall(off, "org/app", manifestKey(off.Name, "org/app", "1")); got != nil {
		t.Fatalf("remembered without a negative TTL: %v", got)
	}
}
