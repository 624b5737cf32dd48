package upstream

import (
	"errors"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
)

// ErrCircuitOpen is the transport error of a request that was not sent
// because the upstream kept failing or asked to be left alone (429).
var ErrCircuitOpen = errors.New("upstream circuit open: not calling it until it recovers")

// Breaker settings: consecutive failures that open the circuit, and how
// long it stays open (doubling on each trip that ends in a failed probe).
// A 5xx counts once per repository in a streak: one broken repository
// must not shut every other one of the upstream out.
const (
	tripAfter = 5
	openFirst = 5 * time.Second
	openMax   = 2 * time.Minute
)

// breaker stops calling an upstream that keeps failing: while open,
// requests fail at once (answered 503 with Retry-After) instead of each
// waiting for a timeout; after the open period one request probes, and its
// outcome closes or reopens the circuit. Transport failures (no answer)
// and 5xx from several repositories open it; a 429 opens it at once.
type breaker struct {
	mu        sync.Mutex
	now       func() time.Time
	failures  int                 // consecutive
	failing   map[string]struct{} // repositories whose 5xx counted in this streak; at most tripAfter
	open      time.Duration       // length of the last open period
	openUntil time.Time
	probing   bool
	lastError string
	limit     int // RateLimit-Limit, -1 unknown
	remaining int // RateLimit-Remaining, -1 unknown

	// log hears the circuit open and close, as what, of whom.
	log        *slog.Logger
	kind, name string
}

func newBreaker() *breaker {
	return &breaker{now: time.Now, limit: -1, remaining: -1, log: slog.New(slog.DiscardHandler)}
}

// allow reports how long the caller must wait (0: go ahead). After the
// open period exactly one caller goes ahead as the probe.
func (b *breaker) allow() time.Duration {
	b.mu.Lock()
	defer b.mu.Unlock()
	now := b.now()
	switch {
	case b.openUntil.IsZero():
		return 0
	case now.Before(b.openUntil):
		return b.openUntil.Sub(now)
	case !b.probing:
		b.probing = true
		return 0
	}
	return time.Second // a probe is in flight
}

// release ends a request that says nothing about upstream's health (the
// caller gave up), so a probe that never ran does not block the next one.
func (b *breaker) release() {
	b.mu.Lock()
	b.probing = false
	b.mu.Unlock()
}

// record notes the outcome of a request for repo: resp nil with err for
// transport failures.
func (b *breaker) record(repo string, resp *http.Response, err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.probing = false
	if resp != nil {
		b.rateLimit(resp.Header)
	}
	switch {
	case err == nil && resp.StatusCode == http.StatusTooManyRequests:
		// Honour the upstream's own wish before anything else.
		retry := parseRetryAfter(resp.Header.Get("Retry-After"))
		if retry <= 0 {
			retry = openFirst
		}
		b.failures++
		b.lastError = "429 Too Many Requests"
		b.trip(min(retry, openMax))
	case err != nil || resp.StatusCode >= 500:
		if err != nil {
			b.lastError = err.Error()
		} else {
			b.lastError = resp.Status
		}
		probe := !b.openUntil.IsZero()
		if err == nil && !probe {
			if _, seen := b.failing[repo]; seen {
				return // that repository is broken; others may be fine
			}
			if b.failing == nil {
				b.failing = map[string]struct{}{}
			}
			b.failing[repo] = struct{}{}
		}
		b.failures++
		if b.failures >= tripAfter || probe { // threshold, or a failed probe
			b.trip(min(max(2*b.open, openFirst), openMax))
		}
	default:
		if !b.openUntil.IsZero() {
			b.log.Info("circuit closed: answering again", b.kind, b.name)
		}
		b.failures, b.open, b.openUntil = 0, 0, time.Time{}
		clear(b.failing)
	}
}

func (b *breaker) trip(d time.Duration) {
	b.log.Warn("circuit open: not calling it for a while", b.kind, b.name, "for", d, "failures", b.failures, "last_error", b.lastError)
	b.open = d
	b.openUntil = b.now().Add(d)
	clear(b.failing)
}

// rateLimit reads Docker Hub style headers: "100;w=21600" → 100.
func (b *breaker) rateLimit(h http.Header) {
	parse := func(k string) (int, bool) {
		v, _, _ := strings.Cut(h.Get(k), ";")
		n, err := strconv.Atoi(strings.TrimSpace(v))
		return n, err == nil
	}
	if n, ok := parse("RateLimit-Limit"); ok {
		b.limit = n
	}
	if n, ok := parse("RateLimit-Remaining"); ok {
		b.remaining = n
	}
}

// Health is an upstream's state as the status endpoint and metrics show it.
type Health struct {
	Name                string    `json:"name"`
	URL                 string    `json:"url"`
	State               string    `json:"state"` // closed (healthy), open, half-open
	ConsecutiveFailures int       `json:"consecutiveFailures"`
	OpenUntil           time.Time `json:"openUntil,omitzero"`
	LastError           string    `json:"lastError,omitempty"`
	RateLimitLimit      int       `json:"rateLimitLimit"`     // -1: upstream sent none
	RateLimitRemaining  int       `json:"rateLimitRemaining"` // -1: upstream sent none
	// A push target's pushes since start: blobs uploaded or mounted,
	// manifests put.
	BlobsPushed     int64 `json:"blobsPushed,omitempty"`
	ManifestsPushed int64 `json:"manifestsPushed,omitempty"`
}

// Health reports the upstream's circuit and rate-limit state.
func (c *Client) Health() Health {
	b := c.breaker
	b.mu.Lock()
	defer b.mu.Unlock()
	h := Health{Name: c.name, URL: c.base.String(), State: "closed", ConsecutiveFailures: b.failures,
		LastError: b.lastError, RateLimitLimit: b.limit, RateLimitRemaining: b.remaining,
		BlobsPushed: c.blobsPushed.Load(), ManifestsPushed: c.manifestsPushed.Load()}
	if !b.openUntil.IsZero() {
		h.State, h.OpenUntil = "open", b.openUntil
		if !b.now().Before(b.openUntil) {
			h.State = "half-open"
		}
	}
	return h
}
