package httpx

import (
	"context"
	"errors"
	"net/http"

	"github.com/distribution/distribution/v3/registry/api/errcode"

	"github.com/wharf-registry/wharf/auth"
)

// Who may do what is auth's business; this turns its answers into HTTP for
// both surfaces. A refusal comes before any cache or upstream call: it
// costs no upstream request and touches no file.

type identityKey struct{}

// Identity is who sent the request whose context ctx is, as Authenticate
// found.
func Identity(ctx context.Context) auth.Identity {
	id, _ := ctx.Value(identityKey{}).(auth.Identity)
	return id
}

// Authenticate reads r's credentials into its context: 401 for wrong ones,
// 429 for a user name that failed too often.
func Authenticate(a *auth.Auth, r *http.Request) (*http.Request, error) {
	id, err := a.Authenticate(r)
	var tm *auth.TooManyError
	switch {
	case errors.As(err, &tm):
		return nil, &Error{Status: http.StatusTooManyRequests, Retry: tm.Retry,
			Err: errcode.ErrorCodeTooManyRequests.WithMessage("too many failed logins of this user; try again later")}
	case err != nil:
		return nil, Unauthorized(a, "the credentials were not accepted")
	}
	return r.WithContext(context.WithValue(r.Context(), identityKey{}, id)), nil
}

// WithIdentity is r as sent by id: a request another replica
// authenticated and forwarded.
func WithIdentity(r *http.Request, id auth.Identity) *http.Request {
	return r.WithContext(context.WithValue(r.Context(), identityKey{}, id))
}

// Unauthorized is a 401 with the challenge every registry client answers.
func Unauthorized(a *auth.Auth, msg string) error {
	return &Error{Status: http.StatusUnauthorized, Err: errcode.ErrorCodeUnauthorized.WithMessage(msg),
		Header: http.Header{"Www-Authenticate": {a.Challenge()}}}
}

// Anonymous reports whether id presented no credentials (being on loopback
// may still grant rights).
func Anonymous(id auth.Identity) bool { return id.User == "" && !id.Token }

// MayPull refuses repo of upstream (name: as the caller wrote it) to a
// caller without pull rights on it: 401 (log in) to anonymous callers, 403
// to authenticated ones.
func MayPull(a *auth.Auth, ctx context.Context, upstream, repo, name string) error {
	id := Identity(ctx)
	if a.MayPull(id, upstream, repo) {
		return nil
	}
	if Anonymous(id) {
		return Unauthorized(a, "authentication required to pull "+name)
	}
	return OCIError(http.StatusForbidden, errcode.ErrorCodeDenied, id.User+" may not pull "+name)
}
