package api

import (
	"cmp"
	"context"
	"mime"
	"net/http"
	"net/url"
	"strings"

	"github.com/distribution/distribution/v3/registry/api/errcode"

	"github.com/wharf-registry/wharf/auth"
	"github.com/wharf-registry/wharf/httpx"
)

// mayPush refuses a job's push to repo of target (none: a job that only
// warms the cache) to a caller without push rights there.
func (a *api) mayPush(ctx context.Context, target, repo string) error {
	id := httpx.Identity(ctx)
	if target == "" || a.auth.MayPush(id, target, repo) {
		return nil
	}
	return httpx.OCIError(http.StatusForbidden, errcode.ErrorCodeDenied, cmp.Or(id.User, "this caller")+" may not push to "+target+"/"+repo+
		": a user's jobs push only where auth.rules[].push allows")
}

// seesAll reports whether the caller may see details of what others'
// jobs and rules touch: upstream and target addresses in errors, and
// repositories it may not pull.
func (a *api) seesAll(r *http.Request) bool {
	return a.auth.MayAPI(httpx.Identity(r.Context()), auth.RightJobs)
}

// mayAPI refuses a right on /api/v1. (Callers on loopback with no
// credentials, Wharf's default without auth or a token, were checked
// against what a browser could send when they came in: see route.)
func (a *api) mayAPI(r *http.Request, right string) error {
	id := httpx.Identity(r.Context())
	if a.auth.MayAPI(id, right) {
		return nil
	}
	if httpx.Anonymous(id) {
		// Without users or a token there is nothing to ask for: only
		// loopback gets in.
		if !a.auth.Credentials() {
			return httpx.OCIError(http.StatusForbidden, errcode.ErrorCodeDenied,
				"the API answers loopback clients only; set api.token_file or auth to open it to the network")
		}
		return &httpx.Error{Status: http.StatusUnauthorized, Err: errcode.ErrorCodeUnauthorized.WithMessage("the API needs credentials: a user with the " + right + " right, or Authorization: Bearer <the token in api.token_file>"),
			Header: http.Header{"Www-Authenticate": {a.auth.Challenge(), `Bearer realm="wharf-api"`}}}
	}
	return httpx.OCIError(http.StatusForbidden, errcode.ErrorCodeDenied, "this needs the "+right+" right on the API")
}

// notFromBrowser refuses a request a web page could have made: a
// cross-site Origin or fetch, a body type a form or a simple fetch can
// send, or a Host that is not a loopback name (DNS rebinding).
func notFromBrowser(r *http.Request) error {
	deny := func(why string) error {
		return httpx.OCIError(http.StatusForbidden, errcode.ErrorCodeDenied, "refused without credentials: "+why)
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

// notCrossSite refuses a change (anything but GET and HEAD) another site's
// page asked a browser to make: a browser that logged in to the status
// page sends its Basic credentials with any request to this origin, and
// a form's POST needs no preflight.
func notCrossSite(r *http.Request) error {
	if r.Method == http.MethodGet || r.Method == http.MethodHead {
		return nil
	}
	deny := func(why string) error {
		return httpx.OCIError(http.StatusForbidden, errcode.ErrorCodeDenied, "refused: "+why+"; the API takes changes from its own status page and from clients that are not browsers")
	}
	if s := r.Header.Get("Sec-Fetch-Site"); s == "cross-site" || s == "same-site" {
		return deny("a request from another site")
	}
	if o := r.Header.Get("Origin"); o != "" {
		u, err := url.Parse(o)
		sameHost := err == nil && (strings.EqualFold(u.Host, r.Host) || auth.LoopbackHost(u.Host) && auth.LoopbackHost(r.Host))
		if !sameHost {
			return deny("a request from another origin")
		}
	}
	return nil
}
