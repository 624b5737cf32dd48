package upstream

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"time"

	"golang.org/x/sync/semaphore"
	"oras.land/oras-go/v2/registry"
	"oras.land/oras-go/v2/registry/remote/auth"
	orascode "oras.land/oras-go/v2/registry/remote/errcode"

	"github.com/wharf-registry/wharf/oci"
)

// Sending one request: a slot of MaxConcurrent, the breaker's leave, the
// token dance, and every failure as *Error.

// do sends one request for repo and turns any non-2xx answer into *Error.
func (c *Client) do(ctx context.Context, method, repo, rawURL string, hdr http.Header) (*http.Response, error) {
	actions := []string{auth.ActionPull}
	if c.push {
		actions = append(actions, auth.ActionPush)
	}
	ctx = auth.AppendRepositoryScope(ctx, registry.Reference{Registry: c.base.Host, Repository: repo}, actions...)
	req, err := http.NewRequestWithContext(ctx, method, rawURL, nil)
	if err != nil {
		return nil, err
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	return c.send(req, repo)
}

// ErrBusy is the transport error of a request that waited WaitTimeout for
// one of the upstream's MaxConcurrent slots without getting one.
var ErrBusy = errors.New("every upstream request slot stayed taken")

// send takes a slot and the breaker's leave, sends req (for repository
// repo) and turns any answer of 300 or more into *Error. The response body
// gives the slot back when it is closed.
func (c *Client) send(req *http.Request, repo string) (*http.Response, error) {
	ctx, method, rawURL := req.Context(), req.Method, req.URL.String()
	if wait := c.breaker.allow(); wait > 0 {
		return nil, &Error{Method: method, URL: redact(rawURL), Status: http.StatusServiceUnavailable, Retry: wait, Err: ErrCircuitOpen}
	}
	if err := c.takeSlot(ctx); err != nil {
		c.breaker.release()
		return nil, &Error{Method: method, URL: redact(rawURL), Status: statusOf(err), Retry: time.Second, Err: err}
	}
	start := time.Now()
	a := &answered{}
	req = req.WithContext(context.WithValue(ctx, answeredKey{}, a))
	resp, err := c.hc.Do(req)
	if err == nil && resp.StatusCode == http.StatusUnauthorized && a.used {
		drain(resp.Body)
		a.off = true
		resp, err = c.hc.Do(req)
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		ue.URL = redact(ue.URL) // a redirect target may be a presigned URL: not for logs or the health report
	}
	status := "error"
	if err == nil {
		status = strconv.Itoa(resp.StatusCode)
	}
	c.metrics.duration.WithLabelValues(c.name, oci.MethodLabel(method), status).Observe(time.Since(start).Seconds())
	if ctx.Err() == nil {
		c.breaker.record(repo, resp, err)
		c.metrics.observe(c.Health(), c.push)
	} else {
		c.breaker.release() // a caller giving up says nothing about upstream
	}
	if err != nil {
		c.slots.Release(1)
		return nil, authError(method, rawURL, c.base.Host, err)
	}
	resp.Body = &slotBody{ReadCloser: resp.Body, slots: c.slots}
	if resp.StatusCode >= 300 {
		return nil, newError(resp, c.base.Host)
	}
	return resp, nil
}

// takeSlot waits for one of the MaxConcurrent slots, at most WaitTimeout;
// golang.org/x/sync's semaphore keeps the waiters in order.
func (c *Client) takeSlot(ctx context.Context) error {
	if c.slots.TryAcquire(1) {
		return nil
	}
	wctx, cancel := context.WithTimeout(ctx, c.wait)
	defer cancel()
	if err := c.slots.Acquire(wctx, 1); err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("waiting for a free upstream slot: %w", ctx.Err())
		}
		return fmt.Errorf("%w for %v", ErrBusy, c.wait)
	}
	return nil
}

// statusOf is the status a request that got no slot answers with: 503 when
// the upstream is busy, none (a transport error) when the caller gave up.
func statusOf(err error) int {
	if errors.Is(err, ErrBusy) {
		return http.StatusServiceUnavailable
	}
	return 0
}

// slotBody gives the request's slot back when its body is closed.
type slotBody struct {
	io.ReadCloser
	slots *semaphore.Weighted
	once  sync.Once
}

func (b *slotBody) Close() error {
	err := b.ReadCloser.Close()
	b.once.Do(func() { b.slots.Release(1) })
	return err
}

// authError keeps the status of a failed token dance: no credentials for a
// Basic challenge, or the token service refusing them, is a denial; the
// token service failing or rate limiting is an outage like any other. Any
// other answer of the token service (a 404, say) is a broken gateway, never
// the registry saying the content does not exist.
func authError(method, rawURL, host string, err error) *Error {
	var ue *url.Error
	if errors.As(err, &ue) {
		ue.URL = redact(ue.URL) // a redirect target may be a presigned URL
	}
	e := &Error{Method: method, URL: redact(rawURL), Err: err}
	var er *orascode.ErrorResponse
	switch {
	case errors.Is(err, auth.ErrBasicCredentialNotFound):
		e.Status = http.StatusUnauthorized
	case errors.As(err, &er):
		switch s := er.StatusCode; {
		case s == http.StatusUnauthorized, s == http.StatusForbidden, s == http.StatusTooManyRequests, s >= 500:
			e.Status = s
		default:
			e.Status = http.StatusBadGateway
		}
		if er.URL != nil && er.URL.Host != host {
			e.Detail = fmt.Sprintf("the token service answered %d", er.StatusCode)
		}
	}
	return e
}
