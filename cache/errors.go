package cache

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"
)

// The error contract: what a Source's errors may say of themselves, read
// by the classification below, the HTTP surfaces and replicate alike.
// upstream.Error has every one of these.
type (
	// StatusCoder is an upstream answer's HTTP status (0: no answer).
	StatusCoder interface{ StatusCode() int }
	// RetryAfterer is how long upstream asked to be left alone.
	RetryAfterer interface{ RetryAfter() time.Duration }
	// OCICoder are the codes of upstream's OCI error document.
	OCICoder interface{ OCICodes() []string }
	// OCIMessager is upstream's own message, scrubbed of its addresses:
	// what a client may be told.
	OCIMessager interface{ OCIMessage() string }
	// Redacter is the error's text without the URLs and addresses it
	// names: what may be recorded where others read it.
	Redacter interface{ Redacted() string }
)

// Errors the proxy maps to OCI error codes. Upstream errors are wrapped, so
// errors.As still finds the upstream's status, codes and RetryAfter.
var (
	ErrNotFound    = errors.New("not found upstream")            // the registry itself said 404
	ErrDenied      = errors.New("upstream denied access")        // 401, 403
	ErrRejected    = errors.New("upstream refused the request")  // any other 4xx, passed on as it is
	ErrBadUpstream = errors.New("upstream sent invalid content") // wrong digest, oversized, unreadable
	ErrUnavailable = errors.New("upstream unavailable")          // no answer, timeout, 5xx, 429
	ErrUnknown     = errors.New("unknown upstream")              // no such upstream configured
)

// Status is the upstream HTTP status inside err, 0 when it has none (no
// answer, or not an upstream error at all).
func Status(err error) int {
	var sc StatusCoder
	if errors.As(err, &sc) {
		return sc.StatusCode()
	}
	return 0
}

// classify wraps an upstream error in the sentinel that says what a client
// should be told. Only an explicit 404 of the registry means "not found";
// only no answer, a timeout, a 5xx or a 429 means "unavailable" (and
// allows serving a stale answer); any other 4xx is passed on.
func classify(err error) error {
	if err == nil {
		return nil
	}
	status := Status(err)
	switch {
	case errors.Is(err, ErrNotFound), errors.Is(err, ErrDenied), errors.Is(err, ErrRejected),
		errors.Is(err, ErrUnavailable), errors.Is(err, ErrBadUpstream):
		return err
	case status == http.StatusNotFound:
		return fmt.Errorf("%w: %w", ErrNotFound, err)
	case status == http.StatusUnauthorized || status == http.StatusForbidden:
		return fmt.Errorf("%w: %w", ErrDenied, err)
	case status >= 400 && status < 500 && status != http.StatusTooManyRequests && status != http.StatusRequestTimeout:
		return fmt.Errorf("%w: %w", ErrRejected, err)
	default:
		return fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
}

// Transient reports whether err is worth trying again: a registry (or the
// cache on its behalf) that did not answer, timed out, limited the rate or
// failed on its side. "Not found", "denied", a refusal, bad content, a
// cancelled caller, a local failure (no registry's answer) and an answer
// that says it is permanent (a redirect target's refusal) are final.
func Transient(err error) bool {
	var sc StatusCoder
	var p interface{ Permanent() bool }
	switch {
	case errors.Is(err, context.Canceled):
		return false
	case errors.As(err, &p) && p.Permanent():
		return false
	case errors.Is(err, ErrUnavailable):
		return true
	case !errors.As(err, &sc):
		return false
	}
	return errors.Is(classify(err), ErrUnavailable)
}
