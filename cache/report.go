package cache

import (
	"context"
	"sync"
)

// How the cache answered a request, as its log line and the audit log
// say it.
const (
	ResultHit         = "hit"         // from the local store
	ResultMiss        = "miss"        // fetched from upstream for this request
	ResultJoined      = "joined"      // followed a fill another request started
	ResultStale       = "stale"       // a cached manifest served because upstream could not be asked
	ResultBucket      = "bucket"      // filled from the shared bucket
	ResultPeer        = "peer"        // filled through the replica that owns it
	ResultPassthrough = "passthrough" // sent straight from upstream: the store could not take it
)

// Report is where the cache found what one request asked for. The HTTP
// layer puts one in each request's context (WithReport) and logs it when
// the answer is sent: a cache result is worth nothing in a metric alone
// when an operator asks why one pull was slow.
type Report struct {
	mu       sync.Mutex
	result   string
	upstream string
}

type reportKey struct{}

// WithReport returns ctx carrying a fresh Report, and the Report.
func WithReport(ctx context.Context) (context.Context, *Report) {
	r := &Report{}
	return context.WithValue(ctx, reportKey{}, r), r
}

// ReportOf is ctx's Report; a Report of nothing when it has none.
func ReportOf(ctx context.Context) *Report {
	if r, _ := ctx.Value(reportKey{}).(*Report); r != nil {
		return r
	}
	return &Report{}
}

// Result is the request's cache result and upstream, "" for a request
// the cache did not answer.
func (r *Report) Result() (result, upstream string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.result, r.upstream
}

// note records result for ctx's request: the last word wins (a miss that
// then went through a peer is a peer fill).
func note(ctx context.Context, up, result string) {
	r, _ := ctx.Value(reportKey{}).(*Report)
	if r == nil {
		return
	}
	r.mu.Lock()
	r.result, r.upstream = result, up
	r.mu.Unlock()
}

// noteFrom records a fill's source (fromUpstream, …) as a result.
func noteFrom(ctx context.Context, up, from string) {
	switch from {
	case fromBucket:
		note(ctx, up, ResultBucket)
	case fromPeer:
		note(ctx, up, ResultPeer)
	default:
		note(ctx, up, ResultMiss)
	}
}

// result counts a manifest or blob read as a hit or a miss, and notes it
// for ctx's request.
func (c *Cache) result(ctx context.Context, up, kind string, hit bool) {
	c.metrics.result(up, kind, hit)
	c.usage.count(c.now(), hit)
	if hit {
		if r, _ := ctx.Value(reportKey{}).(*Report); r != nil {
			if res, _ := r.Result(); res == ResultStale {
				return // a stale answer is a hit upstream could not confirm
			}
		}
		note(ctx, up, ResultHit)
	} else {
		note(ctx, up, ResultMiss)
	}
}

// stale counts a cached manifest served unconfirmed (upstream could not
// be asked), and notes it for ctx's request.
func (c *Cache) stale(ctx context.Context, up string) {
	c.metrics.stale.WithLabelValues(up).Inc()
	note(ctx, up, ResultStale)
}
