package upstream

import "github.com/prometheus/client_golang/prometheus"

// Metrics are shared by every Client so each upstream is one label value,
// registered once on the registerer the caller owns.
type Metrics struct {
	duration *prometheus.HistogramVec
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
	if reg != nil {
		reg.MustRegister(m.duration)
	}
	return m
}
