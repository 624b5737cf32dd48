package replicate

import (
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/wharf-registry/wharf/cache"
)

// explain turns a target's refusal of a push into what a Harbor user has
// to do about it: the project does not exist, the account may not push
// there, the tag is immutable, the quota is spent. Other errors pass as
// they are. The original error stays wrapped, status and all.
func explain(err error, target, repo, ref string) error {
	if err == nil || fromSource(err) {
		return err
	}
	s := cache.Status(err)
	var oc cache.OCICoder
	var om cache.OCIMessager
	var text string
	if errors.As(err, &om) {
		text = strings.ToLower(om.OCIMessage())
	}
	if errors.As(err, &oc) {
		text += " " + strings.ToLower(strings.Join(oc.OCICodes(), " "))
	}
	project, _, _ := strings.Cut(repo, "/")
	var redirected interface{ Permanent() bool }
	var why string
	switch {
	case errors.As(err, &redirected) && redirected.Permanent():
		why = fmt.Sprintf("target %s redirected the request to another host, which refused it: Wharf sends the target's credentials to its own host only; set targets[].url to the host that serves pushes", target)
	case s == http.StatusPreconditionFailed || strings.Contains(text, "immutable"):
		why = fmt.Sprintf("tag %s is immutable on %s (a tag immutability rule): it cannot be overwritten; push under a new tag or change the rule", ref, target)
	case strings.Contains(text, "quota") || strings.Contains(text, "upper limit"):
		why = fmt.Sprintf("the storage quota of project %s on %s is spent: raise it or free space there", project, target)
	case s == http.StatusUnauthorized && (strings.Contains(text, "insufficient_scope") || strings.Contains(text, "action: push") || strings.Contains(text, "denied")):
		// A token without the push scope, as distribution and Harbor
		// answer an account that may pull but not push.
		why = fmt.Sprintf("the account Wharf pushes to %s with may not push to %s: give it push rights on project %s (for a Harbor robot account, the push permission on that project's repositories)", target, repo, project)
	case s == http.StatusUnauthorized:
		why = fmt.Sprintf("Wharf's credentials for target %s are refused: check targets[].username and its password (or password_file) for %s", target, target)
	case s == http.StatusForbidden:
		why = fmt.Sprintf("the account Wharf pushes to %s with may not push to %s: give it push rights on project %s (for a Harbor robot account, the push permission on that project's repositories)", target, repo, project)
	case s == http.StatusNotFound && (strings.Contains(text, "project") || strings.Contains(text, "name_unknown") || strings.Contains(text, "not found")):
		why = fmt.Sprintf("project %s does not exist on %s: create it first (Harbor does not create projects on push)", project, target)
	default:
		return err
	}
	return fmt.Errorf("%s: %w", why, err)
}

// fromSource: the error is the cache's, reading the image, not the target's.
func fromSource(err error) bool {
	for _, e := range []error{cache.ErrNotFound, cache.ErrDenied, cache.ErrRejected, cache.ErrUnavailable, cache.ErrBadUpstream, cache.ErrUnknown} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// public is err's message with each upstream error in it redacted (see
// upstream.Error's Redacted): a job's record is read by its owner, who is
// not to learn where Wharf's upstreams and targets are. The log keeps the
// whole message.
func public(err error) string {
	s := err.Error()
	var walk func(error)
	walk = func(e error) {
		if r, ok := e.(cache.Redacter); ok {
			s = strings.ReplaceAll(s, e.Error(), r.Redacted())
		}
		switch u := e.(type) {
		case interface{ Unwrap() error }:
			if inner := u.Unwrap(); inner != nil {
				walk(inner)
			}
		case interface{ Unwrap() []error }:
			for _, inner := range u.Unwrap() {
				walk(inner)
			}
		}
	}
	walk(err)
	return s
}
