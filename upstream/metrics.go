package upstream

import "github.com/prometheus/client_golang/prometheus"

// Metrics are shared by every Client so each upstream is one label value,
// registered once on the registerer the caller owns.
type Metrics struct {
	duration  *prometheus.HistogramVec
	up        *prometheus.GaugeVec // upstream
	targetUp  *prometheus.GaugeVec // target
	limit     *prometheus.GaugeVec // upstream
	remaining *prometheus.GaugeVec // upstream
}

// NewMetrics registers the upstream metrics on reg (nil: not registered).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "wharf_upstream_request_duration_seconds",
			Help:    "Time to the response headers of requests to upstream registries.",
			Buckets: prometheus.ExponentialBuckets(0.005, 2.5, 10),
		}, []string{"upstream", "method", "status"}),
	}
	m.up = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "wharf_upstream_up",
		Help: "1 while Wharf calls the upstream, 0 while its circuit is open after failures or a 429.",
	}, []string{"upstream"})
	m.targetUp = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "wharf_target_up",
		Help: "1 while jobs push to the target, 0 while its circuit is open after failures or a 429 (pushes wait for it, up to its retry_for).",
	}, []string{"target"})
	m.limit = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "wharf_upstream_ratelimit_limit",
		Help: "The upstream's last RateLimit-Limit header (Docker Hub pulls per window).",
	}, []string{"upstream"})
	m.remaining = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "wharf_upstream_ratelimit_remaining",
		Help: "The upstream's last RateLimit-Remaining header.",
	}, []string{"upstream"})
	if reg != nil {
		reg.MustRegister(m.duration, m.up, m.targetUp, m.limit, m.remaining)
	}
	return m
}

// observe reports h, a push target's when target is set.
func (m *Metrics) observe(h Health, target bool) {
	up := 1.0
	if h.State == "open" {
		up = 0
	}
	if target {
		m.targetUp.WithLabelValues(h.Name).Set(up)
		return
	}
	m.up.WithLabelValues(h.Name).Set(up)
	if h.RateLimitLimit >= 0 {
		m.limit.WithLabelValues(h.Name).Set(float64(h.RateLimitLimit))
	}
	if h.RateLimitRemaining >= 0 {
		m.remaining.WithLabelValues(h.Name).Set(float64(h.RateLimitRemaining))
	}
}
