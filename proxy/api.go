package proxy

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/distribution/distribution/v3/registry/api/errcode"
	"github.com/gorilla/mux"

	"github.com/wharf-registry/wharf/auth"
	"github.com/wharf-registry/wharf/replicate"
)

// Wharf's own API under /api/v1: prefetch jobs, pins and upstream health.
// It can make Wharf fetch and push a lot of data, so every route needs a
// right (see access.go): a user's, the token's, or loopback's when Wharf
// has neither.

// Error codes of the API that the distribution spec has no word for.
var (
	errInvalid = errcode.Register("wharf", errcode.ErrorDescriptor{
		Value: "INVALID", Message: "invalid request", HTTPStatusCode: http.StatusBadRequest,
	})
	errJobUnknown = errcode.Register("wharf", errcode.ErrorDescriptor{
		Value: "JOB_UNKNOWN", Message: "no such job", HTTPStatusCode: http.StatusNotFound,
	})
	errPinUnknown = errcode.Register("wharf", errcode.ErrorDescriptor{
		Value: "PIN_UNKNOWN", Message: "no such pin", HTTPStatusCode: http.StatusNotFound,
	})
	errRuleUnknown = errcode.Register("wharf", errcode.ErrorDescriptor{
		Value: "RULE_UNKNOWN", Message: "no such replication rule", HTTPStatusCode: http.StatusNotFound,
	})
)

// api authenticates an /api/v1 request, requires right (none: the handler
// checks) and admits only the given methods.
func (p *proxy) api(route, right string, h func(http.ResponseWriter, *http.Request) error, methods ...string) http.Handler {
	return p.wrap(route, func(w http.ResponseWriter, r *http.Request) error {
		r, err := p.authenticate(r)
		if err != nil {
			return err
		}
		if right != "" {
			if err := p.mayAPI(r, right); err != nil {
				return err
			}
		}
		for _, m := range methods {
			if r.Method == m || (m == http.MethodGet && r.Method == http.MethodHead) {
				return h(w, r)
			}
		}
		w.Header().Set("Allow", strings.Join(methods, ", "))
		return ociError(http.StatusMethodNotAllowed, errUnsupported, r.Method+" is not supported here")
	})
}

// mayJob lets the jobs right see any job, the admin right cancel any, and
// the prefetch right see and cancel the caller's own.
func (p *proxy) mayJob(r *http.Request, job replicate.Job) error {
	right := auth.RightJobs
	if r.Method == http.MethodDelete {
		right = auth.RightAdmin
	}
	id := identity(r.Context())
	if p.auth.MayAPI(id, right) {
		return p.mayAPI(r, right) // the browser checks for loopback callers
	}
	if id.User != "" && job.Owner == id.User {
		return p.mayAPI(r, auth.RightPrefetch)
	}
	if err := p.mayAPI(r, auth.RightPrefetch); err != nil {
		return err
	}
	// Somebody else's job: as if it did not exist.
	return ociError(http.StatusNotFound, errJobUnknown, "no such job")
}

// checkJob reads job id's record to see whether the caller may see it
// (or, for DELETE, cancel it).
func (p *proxy) checkJob(r *http.Request, id string) error {
	job, err := p.jobs.Job(id)
	if errors.Is(err, replicate.ErrJobNotFound) {
		if err := p.mayAPI(r, auth.RightPrefetch); err != nil && p.mayAPI(r, auth.RightJobs) != nil {
			return err
		}
		return ociError(http.StatusNotFound, errJobUnknown, err.Error())
	}
	if err != nil {
		return err
	}
	return p.mayJob(r, job)
}

// listJobs lists every job's report, read from the jobs' own records:
// never their images, however many they have.
func (p *proxy) listJobs(w http.ResponseWriter, r *http.Request) error {
	all := p.mayAPI(r, auth.RightJobs) == nil
	if !all {
		if err := p.mayAPI(r, auth.RightPrefetch); err != nil {
			return err
		}
	}
	jobs, err := p.jobs.List()
	if err != nil {
		return err
	}
	if !all {
		user := identity(r.Context()).User
		jobs = slices.DeleteFunc(jobs, func(j replicate.Job) bool { return j.Owner != user })
	}
	return writeJSON(w, r, map[string]any{"jobs": jobs})
}

// jobImages pages through a job's images: ?state=failed (repeatable, or
// comma-separated), n (default 100, at most 1000) and last (the index of
// the last image of the previous page), with a Link to the next page.
func (p *proxy) jobImages(w http.ResponseWriter, r *http.Request) error {
	id := mux.Vars(r)["id"]
	if err := p.checkJob(r, id); err != nil {
		return err
	}
	q := r.URL.Query()
	var states []string
	for _, v := range q["state"] {
		for s := range strings.SplitSeq(v, ",") {
			switch s {
			case "":
			case replicate.StateQueued, replicate.StateRunning, replicate.StateDone, replicate.StateFailed, replicate.StateCancelled:
				states = append(states, s)
			default:
				return ociError(http.StatusBadRequest, errInvalid, "state "+strconv.Quote(s)+": want queued, running, done, failed or cancelled")
			}
		}
	}
	n, err := pageParams(r)
	if err != nil {
		return err
	}
	if n < 0 {
		n = 100
	}
	last := -1
	if v := q.Get("last"); v != "" {
		if last, err = strconv.Atoi(v); err != nil || last < 0 {
			return ociError(http.StatusBadRequest, errInvalid, "last "+strconv.Quote(v)+": want the index of an image")
		}
	}
	images, more, err := p.jobs.Images(id, states, last, n)
	if errors.Is(err, replicate.ErrJobNotFound) {
		return ociError(http.StatusNotFound, errJobUnknown, err.Error())
	}
	if err != nil {
		return err
	}
	if more && len(images) > 0 {
		next := url.Values{"n": {strconv.Itoa(min(n, replicate.MaxImagesPage))}, "last": {strconv.Itoa(images[len(images)-1].Index)}}
		if len(states) > 0 {
			next.Set("state", strings.Join(states, ","))
		}
		w.Header().Set("Link", "</api/v1/jobs/"+url.PathEscape(id)+"/images?"+next.Encode()+`>; rel="next"`)
	}
	if images == nil {
		images = []replicate.Image{}
	}
	return writeJSON(w, r, map[string]any{"images": images})
}

func (p *proxy) job(w http.ResponseWriter, r *http.Request) error {
	id := mux.Vars(r)["id"]
	if err := p.checkJob(r, id); err != nil {
		return err
	}
	var job replicate.Job
	var err error
	switch wait := r.URL.Query().Get("wait"); {
	case r.Method == http.MethodDelete:
		job, err = p.jobs.Cancel(r.Context(), id)
	case wait != "":
		d, perr := time.ParseDuration(wait)
		if perr != nil || d < 0 || d > 10*time.Minute {
			return ociError(http.StatusBadRequest, errInvalid, "wait "+strconv.Quote(wait)+": want a duration up to 10m, like 30s")
		}
		ctx, cancel := context.WithTimeout(r.Context(), d)
		defer cancel()
		job, err = p.jobs.Wait(ctx, id)
	default:
		job, err = p.jobs.Job(id)
	}
	if errors.Is(err, replicate.ErrJobNotFound) {
		return ociError(http.StatusNotFound, errJobUnknown, err.Error())
	}
	if err != nil {
		return err
	}
	return writeJSON(w, r, job)
}

// pins lists what prefetch jobs pinned; DELETE ?image=REF unpins one.
func (p *proxy) pins(w http.ResponseWriter, r *http.Request) error {
	if r.Method == http.MethodDelete {
		ref, err := p.parseImage(r.URL.Query().Get("image"))
		if err != nil {
			return ociError(http.StatusBadRequest, errInvalid, err.Error())
		}
		err = p.jobs.Unpin(ref.Upstream, ref.Repo, ref.Ref)
		if errors.Is(err, replicate.ErrNotPinned) {
			return ociError(http.StatusNotFound, errPinUnknown, ref.Source+" is not pinned")
		}
		if err != nil {
			return err
		}
		w.WriteHeader(http.StatusNoContent)
		return nil
	}
	pins, err := p.jobs.Pins()
	if err != nil {
		return err
	}
	return writeJSON(w, r, map[string]any{"pins": pins})
}

// replication shows each replication rule: its last run, what is pending
// and since when, and its failures.
func (p *proxy) replication(w http.ResponseWriter, r *http.Request) error {
	rules := []replicate.RuleStatus{}
	if p.rules != nil {
		rules = p.rules.Status()
	}
	return writeJSON(w, r, map[string]any{"rules": rules})
}

// replicate runs a rule now: 202 with its job, or 200 with "nothing new".
func (p *proxy) replicate(w http.ResponseWriter, r *http.Request) error {
	name := mux.Vars(r)["rule"]
	if p.rules == nil {
		return ociError(http.StatusNotFound, errRuleUnknown, "no replication rule "+strconv.Quote(name))
	}
	for _, s := range p.rules.Status() {
		if s.Name == name && !p.auth.MayPushTo(identity(r.Context()), s.Target) {
			return ociError(http.StatusForbidden, errcode.ErrorCodeDenied, "running rule "+strconv.Quote(name)+" pushes to "+s.Target+
				", where this caller may not push (auth.rules[].push)")
		}
	}
	ctx, cancel := context.WithTimeout(r.Context(), 5*time.Minute)
	defer cancel()
	job, err := p.rules.Run(ctx, name)
	switch {
	case errors.Is(err, replicate.ErrNoRule):
		return ociError(http.StatusNotFound, errRuleUnknown, "no replication rule "+strconv.Quote(name))
	case job == nil && err != nil:
		he := toHTTP(err, errcode.ErrorCodeNameUnknown)
		if !p.seesAll(r) {
			he.err = he.err.Code.WithMessage("rule " + strconv.Quote(name) + " could not list or resolve some of its repositories; Wharf's log says which")
		}
		return he
	case job == nil:
		return writeJSON(w, r, map[string]any{"rule": name, "state": "nothing new"})
	}
	w.Header().Set("Location", "/api/v1/jobs/"+job.ID)
	body := map[string]any{"rule": name, "job": job}
	if err != nil && p.seesAll(r) {
		// Some repositories could not be listed (the rest run): their
		// names and upstreams are for those who see every job.
		body["problems"] = err.Error()
	}
	b, err := json.Marshal(body)
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusAccepted)
	_, err = w.Write(b)
	return err
}
