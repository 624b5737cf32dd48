package upstream

import (
	"net/http"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
)

// tracer makes the spans of upstream round trips: a no-op unless the
// process installed a tracer provider (OTEL_* environment, see cmd/wharf).
var tracer = otel.Tracer("github.com/wharf-registry/wharf/upstream")

// traced is a RoundTripper that records each round trip to upstream (a
// token fetch, a redirect's next hop) as a span under the caller's. The
// trace is not propagated upstream: a registry of someone else's learns
// nothing of Wharf's traces.
type traced struct {
	next http.RoundTripper
	name string
}

func (t traced) RoundTrip(req *http.Request) (*http.Response, error) {
	ctx, span := tracer.Start(req.Context(), "upstream "+req.Method, trace.WithSpanKind(trace.SpanKindClient),
		trace.WithAttributes(attribute.String("wharf.upstream", t.name), attribute.String("http.request.method", req.Method),
			attribute.String("server.address", req.URL.Host), attribute.String("url.path", req.URL.Path)))
	defer span.End()
	resp, err := t.next.RoundTrip(req.WithContext(ctx))
	if err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
		return nil, err
	}
	span.SetAttributes(attribute.Int("http.response.status_code", resp.StatusCode))
	if resp.StatusCode >= 500 {
		span.SetStatus(codes.Error, resp.Status)
	}
	return resp, nil
}
