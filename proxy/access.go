package proxy

import (
	"cmp"
	"context"
	"errors"
	"mime"
	"net/http"
	"net/url"
	"strings"

	"github.com/distribution/distribution/v3/registry/api/errcode"

	"github.com/wharf-registry/wharf/auth"
)

// Who may do what is auth's business; this file turns its answers into
// HTTP. A refusal comes before any cache or upstream call: it costs no
// upstream request and touches no file.

type identityKey struct{}

// identity is who sent r, as authenticate found.
func identity(ctx context.Context) auth.Identity {
	id, _ := ctx.Value(identityKey{}).(auth.Identity)
	return id
}

// authenticate reads r's credentials into its context: 401 for wrong ones,
// 429 for an address that failed too often.
func (p *proxy) authenticate(r *http.Request) (*http.Request, error) {
	id, err := p.auth.Authenticate(r)
	var tm *auth.TooManyError
	switch {
	case errors.As(err, &tm):
		return nil, &httpError{status: http.StatusTooManyRequests, retry: tm.Retry,
			err: errcode.ErrorCodeTooManyRequests.WithMessage("too many failed logins of this user; try again later")}
	case err != nil:
		return nil, p.unauthorized("the credentials were not accepted")
	}
	return r.WithContext(context.WithValue(r.Context(), identityKey{}, id)), nil
}

func (p *proxy) unauthorized(msg string) error {
	return &httpError{status: http.StatusUnauthorized, err: errcode.ErrorCodeUnauthorized.WithMessage(msg),
		header: http.Header{"Www-Authenticate": {p.auth.Challenge()}}}
}

// anonymous: no credentials (being on loopback may still grant rights).
func anonymous(id auth.Identity) bool { return id.User == "" && !id.Token }

// mayPull refuses t to a caller without pull rights on it: 401 (log in)
// to anonymous callers, 403 to authenticated ones.
func (p *proxy) mayPull(ctx context.Context, t target) error {
	id := identity(ctx)
	if p.auth.MayPull(id, t.upstream, t.repo) {
		return nil
	}
	if anonymous(id) {
		return p.unauthorized("authentication required to pull " + t.name)
	}
	return ociError(http.StatusForbidden, errcode.ErrorCodeDenied, id.User+" may not pull "+t.name)
}

// mayPush refuses a job's push to repo of target (none: a job that only
// warms the cache) to a caller without push rights there.
func (p *proxy) mayPush(ctx context.Context, target, repo string) error {
	id := identity(ctx)
	if target == "" || p.auth.MayPush(id, target, repo) {
		return nil
	}
	return ociError(http.StatusForbidden, errcode.ErrorCodeDenied, cmp.Or(id.User, "this caller")+" may not push to "+target+"/"+repo+
		": a user's jobs push only where auth.rules[].push allows")
}

// seesAll reports whether the caller may see details of what others'
// jobs and rules touch: upstream and target addresses in errors, and
// repositories it may not pull.
func (p *proxy) seesAll(r *http.Request) bool {
	return p.auth.MayAPI(identity(r.Context()), auth.RightJobs)
}

// mayAPI refuses a right on /api/v1. Callers on loopback with no
// credentials (Wharf's default without auth or a token) are also refused
// whatever a browser could send on a web page's behalf.
func (p *proxy) mayAPI(r *http.Request, right string) error {
	id := identity(r.Context())
	if id.Loopback {
		if err := notFromBrowser(r); err != nil {
			return err
		}
	}
	if p.auth.MayAPI(id, right) {
		return nil
	}
	if anonymous(id) {
		// Without users or a token there is nothing to ask for: only
		// loopback gets in.
		if !p.auth.Credentials() {
			return ociError(http.StatusForbidden, errcode.ErrorCodeDenied,
				"the API answers loopback clients only; set api.token_file or auth to open it to the network")
		}
		return &httpError{status: http.StatusUnauthorized, err: errcode.ErrorCodeUnauthorized.WithMessage("the API needs credentials: a user with the " + right + " right, or Authorization: Bearer <the token in api.token_file>"),
			header: http.Header{"Www-Authenticate": {p.auth.Challenge(), `Bearer realm="wharf-api"`}}}
	}
	return ociError(http.StatusForbidden, errcode.ErrorCodeDenied, "this needs the "+right+" right on the API")
}

// notFromBrowser refuses a request a web page could have made: a
// cross-site Origin or fetch, a body type a form or a simple fetch can
// send, or a Host that is not a loopback name (DNS rebinding).
func notFromBrowser(r *http.Request) error {
	deny := func(why string) error {
		return ociError(http.StatusForbidden, errcode.ErrorCodeDenied, "refused without credentials: "+why)
	}
	if !auth.LoopbackHost(r.Host) {
		return deny("the Host header names no loopback address")
	}
	if r.Header.Get("Sec-Fetch-Site") == "cross-site" {
		return deny("a cross-site request")
	}
	if o := r.Header.Get("Origin"); o != "" {
		u, err := url.Parse(o)
		if err != nil || !auth.LoopbackHost(u.Host) {
			return deny("a cross-site Origin")
		}
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead && r.Method != http.MethodDelete {
		mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
		if !strings.EqualFold(mt, "application/json") {
			return deny("only application/json bodies are taken from loopback without credentials (text and YAML lists need a token or a user)")
		}
	}
	return nil
}
