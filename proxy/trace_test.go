package proxy_test

import (
	"testing"

	"go.opentelemetry.io/otel"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/wharf-registry/wharf/upstream/upstreamtest"
)

// With a tracer provider installed (wharf serve does from OTEL_*), a cold
// pull is one trace per request: the blob GET's server span, the fill it
// started as its child, and the upstream round trips as the fill's
// children. Not parallel: the provider is the process's.
func TestPullTraces(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	prev := otel.GetTracerProvider()
	otel.SetTracerProvider(tp)
	t.Cleanup(func() { otel.SetTracerProvider(prev); tp.Shutdown(t.Context()) })

	up := upstreamtest.New(t)
	img := up.PushImage(t, "library/app", "1.0", 93, 1, 32<<10, amd64)
	e := newEnv(t, t.TempDir(), spec{name: "docker.io", reg: up, def: true})
	layer := img.Layers[0]
	e.get(t, "/v2/library/app/blobs/"+layer.Digest.String(), layer.Data, layer.Digest.String())
	if n := settle(func() int { return int(metric(t, e, "wharf_fills_in_flight")) }, 0); n != 0 {
		t.Fatalf("%d fills in flight", n)
	}

	byID := map[trace.SpanID]sdktrace.ReadOnlySpan{}
	var server, fill sdktrace.ReadOnlySpan
	var upstreamGets []sdktrace.ReadOnlySpan
	for _, s := range rec.Ended() {
		byID[s.SpanContext().SpanID()] = s
		switch s.Name() {
		case "GET blob":
			server = s
		case "fill":
			fill = s
		case "upstream GET":
			upstreamGets = append(upstreamGets, s)
		}
	}
	if server == nil || fill == nil || len(upstreamGets) == 0 {
		t.Fatalf("spans: server %v, fill %v, %d upstream GETs", server != nil, fill != nil, len(upstreamGets))
	}
	if fill.Parent().SpanID() != server.SpanContext().SpanID() || fill.SpanContext().TraceID() != server.SpanContext().TraceID() {
		t.Fatalf("the fill is not the request's child")
	}
	attrs := map[string]string{}
	for _, a := range server.Attributes() {
		attrs[string(a.Key)] = a.Value.String()
	}
	if attrs["wharf.cache"] != "miss" || attrs["wharf.upstream"] != "docker.io" || attrs["http.response.status_code"] != "200" {
		t.Fatalf("server span attributes: %v", attrs)
	}
	for _, s := range upstreamGets {
		// Each round trip hangs off the fill, directly or under another
		// round trip's span (a token fetch), never off nothing.
		p := s
		for p != nil && p.Name() != "fill" {
			p = byID[p.Parent().SpanID()]
		}
		if p == nil {
			t.Fatalf("upstream span %s is not under the fill", s.Name())
		}
	}
}
