package proxy

import (
	"net/http"

	"github.com/distribution/distribution/v3/registry/api/errcode"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/wharf-registry/wharf/httpx"
)

type metrics struct {
	served *prometheus.CounterVec // upstream, kind
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		served: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wharf_served_bytes_total",
			Help: "Body bytes sent to clients, by upstream and kind (manifest, blob).",
		}, []string{"upstream", "kind"}),
	}
	if reg != nil {
		if err := reg.Register(m.served); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// notFoundCodes name "does not exist upstream" per route; the others say
// NAME_UNKNOWN.
var notFoundCodes = map[string]errcode.ErrorCode{
	"manifest":  errcode.ErrorCodeManifestUnknown,
	"referrers": errcode.ErrorCodeManifestUnknown,
	"blob":      errcode.ErrorCodeBlobUnknown,
}

// wrap is httpx.Wrap with the route's "not found" code.
func (p *proxy) wrap(route string, h func(http.ResponseWriter, *http.Request) error) http.Handler {
	notFound, ok := notFoundCodes[route]
	if !ok {
		notFound = errcode.ErrorCodeNameUnknown
	}
	return httpx.Wrap(p.log, p.http, route, notFound, h)
}
