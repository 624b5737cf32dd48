package httpx

import (
	"context"
	"encoding/json"
	"errors"
	"math"
	"net/http"
	"strconv"
	"time"

	"github.com/distribution/distribution/v3/registry/api/errcode"

	"github.com/wharf-registry/wharf/cache"
)

// Error is an OCI error with the status to send it with; handlers return
// it for problems they detect themselves.
type Error struct {
	Status int
	Err    errcode.Error
	More   errcode.Errors // further errors of the same request (a bad list)
	Retry  time.Duration
	Header http.Header // e.g. WWW-Authenticate
}

func (e *Error) Error() string { return e.Err.Error() }

// OCIError is an Error of status with code and msg.
func OCIError(status int, code errcode.ErrorCode, msg string) error {
	return &Error{Status: status, Err: code.WithMessage(msg)}
}

// ToHTTP decides what a client is told about err. notFound is the code for
// "does not exist upstream" on the route that failed. What a client reads
// is about what it asked for: an upstream's status and OCI message, never
// the URLs, hosts or addresses Wharf used (those go to the log).
func ToHTTP(err error, notFound errcode.ErrorCode) *Error {
	var he *Error
	if errors.As(err, &he) {
		return he
	}
	var ra cache.RetryAfterer
	switch {
	case errors.Is(err, cache.ErrUnknown):
		return &Error{Status: http.StatusNotFound, Err: errcode.ErrorCodeNameUnknown.WithMessage(err.Error())}
	case errors.Is(err, cache.ErrNotFound):
		return &Error{Status: http.StatusNotFound, Err: notFound.WithMessage(message(err, cache.ErrNotFound))}
	case errors.Is(err, cache.ErrDenied), errors.Is(err, cache.ErrRejected):
		// Passed on as upstream said it, with its code when it is one.
		status := http.StatusForbidden
		if s := cache.Status(err); s >= 400 && s < 500 {
			status = s
		}
		sentinel := cache.ErrRejected
		if errors.Is(err, cache.ErrDenied) {
			sentinel = cache.ErrDenied
		}
		return &Error{Status: status, Err: upstreamCode(err, status).WithMessage(message(err, sentinel))}
	case errors.Is(err, cache.ErrBadUpstream):
		return &Error{Status: http.StatusBadGateway, Err: errcode.ErrorCodeUnknown.WithMessage(message(err, cache.ErrBadUpstream))}
	case errors.Is(err, cache.ErrUnavailable):
		he := &Error{Status: http.StatusServiceUnavailable, Err: errcode.ErrorCodeUnavailable.WithMessage(message(err, cache.ErrUnavailable))}
		if errors.As(err, &ra) {
			he.Retry = ra.RetryAfter()
		}
		if he.Retry <= 0 && cache.Status(err) == http.StatusTooManyRequests {
			he.Retry = 30 * time.Second
		}
		return he
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return &Error{Status: http.StatusServiceUnavailable, Err: errcode.ErrorCodeUnavailable.WithMessage("request cancelled")}
	}
	return &Error{Status: http.StatusInternalServerError, Err: errcode.ErrorCodeUnknown.WithMessage("internal error")}
}

// message is what a client is told of err: Wharf's own words when no
// upstream answer is inside it, else the sentinel, the upstream's status
// and its OCI message, without the request's URL.
func message(err, sentinel error) string {
	var sc cache.StatusCoder
	if !errors.As(err, &sc) {
		return err.Error()
	}
	msg := sentinel.Error()
	if s := sc.StatusCode(); s > 0 {
		msg += " (" + strconv.Itoa(s) + " " + http.StatusText(s) + ")"
	}
	var om cache.OCIMessager
	if errors.As(err, &om) && om.OCIMessage() != "" {
		msg += ": " + om.OCIMessage()
	}
	return msg
}

// upstreamCode is the OCI code a refusal is passed on with: the upstream's
// own when it is a registered one, else the usual code for its status.
func upstreamCode(err error, status int) errcode.ErrorCode {
	var oc cache.OCICoder
	if errors.As(err, &oc) {
		for _, c := range oc.OCICodes() {
			if code := errcode.ParseErrorCode(c); code != errcode.ErrorCodeUnknown || c == "UNKNOWN" {
				return code
			}
		}
	}
	switch status {
	case http.StatusUnauthorized:
		return errcode.ErrorCodeUnauthorized
	case http.StatusForbidden:
		return errcode.ErrorCodeDenied
	}
	return errcode.ErrorCodeUnknown
}

// Write sends he as an OCI error document.
func (he *Error) Write(w http.ResponseWriter) {
	h := w.Header()
	for _, k := range []string{"Content-Length", "Content-Range", "Docker-Content-Digest", "Etag", "Accept-Ranges"} {
		h.Del(k)
	}
	h.Set("Content-Type", "application/json")
	if he.Retry > 0 {
		h.Set("Retry-After", strconv.Itoa(int(math.Ceil(he.Retry.Seconds()))))
	}
	for k, v := range he.Header {
		h[k] = v
	}
	w.WriteHeader(he.Status)
	json.NewEncoder(w).Encode(append(errcode.Errors{he.Err}, he.More...))
}
