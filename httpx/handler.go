package httpx

import (
	"io"
	"log/slog"
	"net/http"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/distribution/distribution/v3/registry/api/errcode"
	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/wharf-registry/wharf/cache"
	"github.com/wharf-registry/wharf/oci"
)

// Metrics are the request metrics of both HTTP surfaces, registered
// once.
type Metrics struct {
	requests *prometheus.CounterVec   // route, method, status
	duration *prometheus.HistogramVec // route
}

// NewMetrics registers the request metrics with reg (nil: none).
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wharf_http_requests_total",
			Help: "Requests answered, by route, method and status.",
		}, []string{"route", "method", "status"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "wharf_http_request_duration_seconds",
			Help:    "Time to answer a request, by route.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 4, 10),
		}, []string{"route"}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.requests, m.duration} {
			if err := reg.Register(c); err != nil {
				return nil, err
			}
		}
	}
	return m, nil
}

// Recorder remembers the status and body size of a response. The
// handlers' wrapper puts one around every response; a handler serving a
// body with http.ServeContent puts another with RangeErrors set.
type Recorder struct {
	http.ResponseWriter
	status int
	bytes  int64
	// RangeErrors: a 416 (http.ServeContent's answer to a Range the body
	// cannot satisfy) goes out as an OCI error document, not as the plain
	// text the standard library writes, which is then dropped.
	RangeErrors bool
	BodySize    int64 // for a 416's Content-Range: bytes */<size>, when >= 0
	dropping    bool
}

// Status is the status written so far, 0 for none.
func (r *Recorder) Status() int { return r.status }

// Bytes is the number of body bytes written.
func (r *Recorder) Bytes() int64 { return r.bytes }

func (r *Recorder) WriteHeader(code int) {
	if r.status == 0 {
		r.status = code
	}
	if code == http.StatusRequestedRangeNotSatisfiable && r.RangeErrors && !r.dropping {
		r.dropping = true
		he := &Error{Status: code, Err: errcode.ErrorCodeRangeInvalid.WithMessage("the Range asked for is not valid, or starts past the end")}
		if r.BodySize >= 0 {
			he.Header = http.Header{"Content-Range": {"bytes */" + strconv.FormatInt(r.BodySize, 10)}}
		}
		he.Write(r.ResponseWriter)
		return
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *Recorder) Write(b []byte) (int, error) {
	if r.dropping {
		return len(b), nil
	}
	if r.status == 0 {
		r.status = http.StatusOK
	}
	n, err := r.ResponseWriter.Write(b)
	r.bytes += int64(n)
	return n, err
}

func (r *Recorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

// copyBuffers serve blob bodies that are not plain files (fills in
// progress): one 256 KiB read and write at a time instead of io.Copy's 32 KiB.
var copyBuffers = sync.Pool{New: func() any { b := make([]byte, 256<<10); return &b }}

// ReadFrom keeps the standard library's sendfile path for stored blobs
// (*os.File, possibly behind an io.LimitedReader), takes a fill's own
// sendfile path (see Sender), and copies anything else, or what a fill
// could not send, through a large buffer.
func (r *Recorder) ReadFrom(src io.Reader) (int64, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	var n, m int64
	var err error
	rf, _ := r.ResponseWriter.(io.ReaderFrom)
	if lr, ok := src.(*io.LimitedReader); ok && rf != nil {
		if s, ok := lr.R.(Sender); ok {
			sent, done, serr := s.SendTo(flushReaderFrom{rf, r.ResponseWriter}, lr.N)
			lr.N -= sent
			if done || serr != nil {
				r.bytes += sent
				return sent, serr
			}
			n = sent
		}
	}
	if rf != nil && isFile(src) {
		m, err = rf.ReadFrom(src)
	} else {
		buf := copyBuffers.Get().(*[]byte)
		m, err = io.CopyBuffer(flushWriter{r.ResponseWriter}, src, *buf)
		copyBuffers.Put(buf)
	}
	n += m
	r.bytes += n
	return n, err
}

// flushReaderFrom is flushWriter for a fill's sendfile path: net/http
// keeps a first stretch shorter than its sniffing length in its buffer,
// and a fill failing then would close a connection that never answered.
type flushReaderFrom struct {
	rf io.ReaderFrom
	w  http.ResponseWriter
}

func (f flushReaderFrom) ReadFrom(src io.Reader) (int64, error) {
	n, err := f.rf.ReadFrom(src)
	if err == nil {
		err = http.NewResponseController(f.w).Flush()
	}
	return n, err
}

// flushWriter sends each chunk of a fill as it is written: a client sees
// bytes as they arrive upstream, and if the fill then fails it sees a broken
// body rather than a connection closed before any answer, which Go's and
// other clients would replay as a new request (and a new fill).
type flushWriter struct{ w http.ResponseWriter }

func (f flushWriter) Write(p []byte) (int, error) {
	n, err := f.w.Write(p)
	if err == nil {
		err = http.NewResponseController(f.w).Flush()
	}
	return n, err
}

func isFile(r io.Reader) bool {
	if lr, ok := r.(*io.LimitedReader); ok {
		r = lr.R
	}
	_, ok := r.(*os.File)
	return ok
}

// Sender is a fill reader's sendfile path: see cache's fillReader.SendTo.
type Sender interface {
	SendTo(dst io.ReaderFrom, n int64) (sent int64, ok bool, err error)
}

// tracer makes each request's server span: a no-op unless the process
// installed a tracer provider (OTEL_* environment, see cmd/wharf).
var tracer = otel.Tracer("github.com/wharf-registry/wharf/httpx")

// Wrap is the one place a handler's error becomes an OCI error response
// (notFound: the code of "does not exist upstream" on this route), and
// where every request is logged once and counted, by route.
func Wrap(log *slog.Logger, m *Metrics, route string, notFound errcode.ErrorCode, h func(http.ResponseWriter, *http.Request) error) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		ctx := otel.GetTextMapPropagator().Extract(r.Context(), propagation.HeaderCarrier(r.Header))
		ctx, span := tracer.Start(ctx, r.Method+" "+route, trace.WithSpanKind(trace.SpanKindServer),
			trace.WithAttributes(attribute.String("http.request.method", r.Method), attribute.String("url.path", r.URL.Path), attribute.String("http.route", route)))
		ctx, report := cache.WithReport(ctx)
		r = r.WithContext(ctx)
		rec := &Recorder{ResponseWriter: w}
		rec.Header().Set("Docker-Distribution-API-Version", "registry/2.0")
		var err error
		aborted := true
		defer func() {
			status := rec.status
			if aborted {
				status = 0 // connection cut on purpose: see proxy's blob
			}
			m.requests.WithLabelValues(route, oci.MethodLabel(r.Method), strconv.Itoa(status)).Inc()
			m.duration.WithLabelValues(route).Observe(time.Since(start).Seconds())
			level := slog.LevelInfo
			attrs := []any{"method", r.Method, "path", r.URL.Path, "ns", r.URL.Query().Get("ns"), "route", route,
				"status", status, "bytes", rec.bytes, "duration", time.Since(start), "remote", r.RemoteAddr}
			if result, up := report.Result(); result != "" {
				attrs = append(attrs, "cache", result, "upstream", up)
				span.SetAttributes(attribute.String("wharf.cache", result), attribute.String("wharf.upstream", up))
			}
			span.SetAttributes(attribute.Int("http.response.status_code", status), attribute.Int64("wharf.bytes", rec.bytes))
			if status >= 500 || aborted {
				span.SetStatus(codes.Error, http.StatusText(status))
			}
			span.End()
			if err != nil {
				attrs = append(attrs, "error", err.Error())
				if status >= 500 || aborted {
					level = slog.LevelWarn
				}
			}
			log.Log(r.Context(), level, "request", attrs...)
		}()
		err = h(rec, r)
		if err != nil {
			if rec.status != 0 {
				// Headers are gone: the only honest signal left is a broken connection.
				panic(http.ErrAbortHandler)
			}
			ToHTTP(err, notFound).Write(rec)
		}
		aborted = false
	})
}
