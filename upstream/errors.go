package upstream

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// maxErrorBody caps how much of an error response is read: enough for any
// OCI error document, never a blob someone answered with by mistake.
const maxErrorBody = 64 << 10

// Error is an upstream answer that was not a success, or a request that got
// no answer at all (Status 0). The cache decides what a client sees from the
// status alone, so an outage is never mistaken for "not found".
type Error struct {
	Method string
	URL    string
	Status int      // HTTP status; 0 when the request failed in transport
	Codes  []string // OCI error codes from the body, if any
	Detail string   // first OCI error message, or the transport error
	Retry  time.Duration
	Err    error // transport error, when Status is 0
	// RedirectedTo is the host a request was redirected to when that
	// host's refusal (4xx) is the answer: Wharf sent it no credentials.
	RedirectedTo string
}

// Error names the request and what went wrong, with no credentials or
// query strings in it, so it can be logged and shown to clients.
func (e *Error) Error() string {
	if e.Err != nil {
		return fmt.Sprintf("upstream %s %s: %v", e.Method, e.URL, e.Err)
	}
	msg := fmt.Sprintf("upstream %s %s: %d %s", e.Method, e.URL, e.Status, http.StatusText(e.Status))
	if len(e.Codes) > 0 {
		msg += " " + strings.Join(e.Codes, ",")
	}
	if e.Detail != "" {
		msg += ": " + e.Detail
	}
	return msg
}

// Redacted is Error without the request's URL, or the addresses a
// transport error names: what may be shown to someone who is not to learn
// where Wharf's upstreams are (a job's record, read by its owner).
func (e *Error) Redacted() string {
	if e.Err != nil {
		var ne net.Error
		why := "no answer"
		switch {
		case errors.Is(e.Err, ErrCircuitOpen):
			why = ErrCircuitOpen.Error()
		case errors.Is(e.Err, ErrRefused):
			why = ErrRefused.Error()
		case errors.As(e.Err, &ne) && ne.Timeout():
			why = "no answer in time"
		}
		return fmt.Sprintf("upstream %s: %s", e.Method, why)
	}
	msg := fmt.Sprintf("upstream %s: %d %s", e.Method, e.Status, http.StatusText(e.Status))
	if len(e.Codes) > 0 {
		msg += " " + strings.Join(e.Codes, ",")
	}
	if e.Detail != "" {
		msg += ": " + e.Detail // scrubbed of URLs and hosts when read
	}
	return msg
}

// Unwrap exposes the transport error so callers can test for timeouts.
func (e *Error) Unwrap() error { return e.Err }

// StatusCode is the upstream HTTP status (0 for transport failures); the
// cache reads it through an interface so it need not import this package.
func (e *Error) StatusCode() int { return e.Status }

// OCICodes are the error codes of upstream's OCI error body, such as
// NAME_UNKNOWN (the whole repository does not exist).
func (e *Error) OCICodes() []string { return e.Codes }

// OCIMessage is the first message of upstream's OCI error body (or what
// Wharf found wrong with the answer): what a client may be told, unlike
// Error, which names the request and is for logs.
func (e *Error) OCIMessage() string { return e.Detail }

// CircuitOpen reports a request that was not sent because the upstream's
// circuit is open: it says nothing new about the upstream.
func (e *Error) CircuitOpen() bool { return errors.Is(e.Err, ErrCircuitOpen) }

// Permanent reports an answer that asking again will not change, whatever
// its status says: a host the registry redirected to refused the request,
// which carried no credentials there.
func (e *Error) Permanent() bool { return e.RedirectedTo != "" }

// RetryAfter is the delay upstream asked for with Retry-After, if any.
func (e *Error) RetryAfter() time.Duration { return e.Retry }

// newError consumes and closes resp.Body. Only the registry at host speaks
// for its content: an error from where it redirected a request (a CDN, a
// bucket) is a broken gateway, never "not found" or "denied".
func newError(resp *http.Response, host string) *Error {
	defer resp.Body.Close()
	e := &Error{
		Method: resp.Request.Method,
		URL:    redact(resp.Request.URL.String()),
		Status: resp.StatusCode,
		Retry:  parseRetryAfter(resp.Header.Get("Retry-After")),
	}
	if resp.Request.URL.Host != host && resp.StatusCode < 500 && resp.StatusCode != http.StatusTooManyRequests {
		io.Copy(io.Discard, io.LimitReader(resp.Body, maxErrorBody))
		e.Status, e.Detail = http.StatusBadGateway, fmt.Sprintf("the redirect target answered %d", resp.StatusCode)
		e.RedirectedTo = resp.Request.URL.Hostname()
		return e
	}
	var doc struct {
		Errors []struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"errors"`
	}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
	if json.Unmarshal(body, &doc) == nil {
		for _, oe := range doc.Errors {
			e.Codes = append(e.Codes, oe.Code)
			if e.Detail == "" {
				e.Detail = scrub(oe.Message, host)
			}
		}
	}
	return e
}

func parseRetryAfter(v string) time.Duration {
	if v == "" {
		return 0
	}
	if s, err := strconv.Atoi(v); err == nil && s >= 0 {
		return time.Duration(s) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil {
		return max(time.Until(t), 0)
	}
	return 0
}

// redact drops the query string: presigned blob URLs carry credentials there.
func redact(u string) string {
	u, _, _ = strings.Cut(u, "?")
	return u
}

// scrub drops an upstream's message when it names a URL or the upstream's
// own host: clients are told what their request met, not where Wharf went.
func scrub(msg, host string) string {
	h, _, _ := strings.Cut(host, ":")
	if strings.Contains(msg, "://") || (h != "" && strings.Contains(strings.ToLower(msg), strings.ToLower(h))) {
		return ""
	}
	return msg
}
