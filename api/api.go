package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/distribution/distribution/v3/registry/api/errcode"
	"github.com/gorilla/mux"

	"github.com/wharf-registry/wharf/auth"
	"github.com/wharf-registry/wharf/httpx"
	"github.com/wharf-registry/wharf/replicate"
)

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
	errNothingToRetry = errcode.Register("wharf", errcode.ErrorDescriptor{
		Value: "NOTHING_TO_RETRY", Message: "the job has not ended, or has no failed images", HTTPStatusCode: http.StatusConflict,
	})
	errRuleUnknown = errcode.Register("wharf", errcode.ErrorDescriptor{
		Value: "RULE_UNKNOWN", Message: "no such replication rule", HTTPStatusCode: http.StatusNotFound,
	})
)

// route authenticates an /api/v1 request, requires right (none: the
// handler checks) and admits only the given methods.
func (a *api) route(name, right string, h func(http.ResponseWriter, *http.Request) error, methods ...string) http.Handler {
	return httpx.Wrap(a.log, a.metrics, name, errcode.ErrorCodeNameUnknown, func(w http.ResponseWriter, r *http.Request) error {
		r, peer, err := a.fromPeer(r)
		if err != nil {
			return err
		}
		if !peer {
			if r, err = httpx.Authenticate(a.auth, r); err != nil {
				return err
			}
			// Loopback callers without credentials are refused whatever a
			// browser could send on a web page's behalf; a forwarded
			// request was checked where it came in.
			if httpx.Identity(r.Context()).Loopback {
				if err := notFromBrowser(r); err != nil {
					return err
				}
			}
			if err := notCrossSite(r); err != nil {
				return err
			}
		}
		if right != "" {
			if err := a.mayAPI(r, right); err != nil {
				return err
			}
		}
		for _, m := range methods {
			if r.Method == m || (m == http.MethodGet && r.Method == http.MethodHead) {
				return h(w, r)
			}
		}
		w.Header().Set("Allow", strings.Join(methods, ", "))
		return httpx.OCIError(http.StatusMethodNotAllowed, errcode.ErrorCodeUnsupported, r.Method+" is not supported here")
	})
}

// mayJob lets the jobs right see any job, the admin right cancel or retry
// any, and the prefetch right see, cancel and retry the caller's own.
func (a *api) mayJob(r *http.Request, job replicate.Job) error {
	right := auth.RightJobs
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		right = auth.RightAdmin
	}
	id := httpx.Identity(r.Context())
	if a.auth.MayAPI(id, right) {
		return nil
	}
	if id.User != "" && job.Owner == id.User {
		return a.mayAPI(r, auth.RightPrefetch)
	}
	if err := a.mayAPI(r, auth.RightPrefetch); err != nil {
		return err
	}
	// Somebody else's job: as if it did not exist.
	return httpx.OCIError(http.StatusNotFound, errJobUnknown, "no such job")
}

// checkJob reads job id's record to see whether the caller may see it
// (or, for DELETE, cancel it).
func (a *api) checkJob(r *http.Request, id string) error {
	job, err := a.jobs.Job(id)
	if errors.Is(err, replicate.ErrJobNotFound) {
		if err := a.mayAPI(r, auth.RightPrefetch); err != nil && a.mayAPI(r, auth.RightJobs) != nil {
			return err
		}
		return httpx.OCIError(http.StatusNotFound, errJobUnknown, err.Error())
	}
	if err != nil {
		return err
	}
	return a.mayJob(r, job)
}

// listJobs lists every job's report, read from the jobs' own records:
// never their images, however many they have.
func (a *api) listJobs(w http.ResponseWriter, r *http.Request) error {
	all := a.mayAPI(r, auth.RightJobs) == nil
	if !all {
		if err := a.mayAPI(r, auth.RightPrefetch); err != nil {
			return err
		}
	}
	jobs, err := a.jobs.List()
	if err != nil {
		return err
	}
	if !all {
		user := httpx.Identity(r.Context()).User
		jobs = slices.DeleteFunc(jobs, func(j replicate.Job) bool { return j.Owner != user })
	}
	n, err := httpx.PageParams(r)
	if err != nil {
		return err
	}
	if peerCall(r) {
		n = -1 // the caller pages the fleet's list
	}
	parts, missing := gather[JobList](a, r)
	lists := [][]Job{each(jobs, jobOf)}
	for _, p := range parts {
		lists = append(lists, p.Jobs)
	}
	merged := mergeJobs(lists...)
	if n >= 0 {
		var more bool
		if merged, more = newestFirst(merged, n, r.URL.Query().Get("last")); more {
			next := url.Values{"n": {strconv.Itoa(n)}, "last": {merged[len(merged)-1].ID}}
			w.Header().Set("Link", "</api/v1/jobs?"+next.Encode()+`>; rel="next"`)
		}
	}
	return httpx.WriteJSON(w, r, JobList{Jobs: merged, Unreachable: missing})
}

// newestFirst is a page of jobs (oldest first), newest first: at most n,
// after the job last; more says whether older ones follow. A status page
// shows the latest jobs of thousands without sending them all.
func newestFirst(jobs []Job, n int, last string) (page []Job, more bool) {
	jobs = slices.Clone(jobs)
	slices.Reverse(jobs)
	if last != "" {
		if i := slices.IndexFunc(jobs, func(j Job) bool { return j.ID == last }); i >= 0 {
			jobs = jobs[i+1:]
		}
	}
	if len(jobs) > n {
		return jobs[:n], true
	}
	return jobs, false
}

// jobImages pages through a job's images: ?state=failed (repeatable, or
// comma-separated), n (default 100, at most 1000) and last (the index of
// the last image of the previous page), with a Link to the next page.
func (a *api) jobImages(w http.ResponseWriter, r *http.Request) error {
	id := mux.Vars(r)["id"]
	return a.onJob(w, r, id, func() error { return a.jobImagesHere(w, r, id) })
}

func (a *api) jobImagesHere(w http.ResponseWriter, r *http.Request, id string) error {
	if err := a.checkJob(r, id); err != nil {
		return err
	}
	q := r.URL.Query()
	var states []replicate.State
	for _, v := range q["state"] {
		for s := range strings.SplitSeq(v, ",") {
			switch st := replicate.State(s); st {
			case "":
			case replicate.StateQueued, replicate.StateRunning, replicate.StateDone, replicate.StateFailed, replicate.StateCancelled:
				states = append(states, st)
			default:
				return httpx.OCIError(http.StatusBadRequest, errInvalid, "state "+strconv.Quote(s)+": want queued, running, done, failed or cancelled")
			}
		}
	}
	n, err := httpx.PageParams(r)
	if err != nil {
		return err
	}
	if n < 0 {
		n = 100
	}
	last := -1
	if v := q.Get("last"); v != "" {
		if last, err = strconv.Atoi(v); err != nil || last < 0 {
			return httpx.OCIError(http.StatusBadRequest, errInvalid, "last "+strconv.Quote(v)+": want the index of an image")
		}
	}
	images, more, err := a.jobs.Images(id, states, last, n)
	if errors.Is(err, replicate.ErrJobNotFound) {
		return httpx.OCIError(http.StatusNotFound, errJobUnknown, err.Error())
	}
	if err != nil {
		return err
	}
	if more && len(images) > 0 {
		next := url.Values{"n": {strconv.Itoa(min(n, replicate.MaxImagesPage))}, "last": {strconv.Itoa(images[len(images)-1].Index)}}
		if len(states) > 0 {
			next.Set("state", strings.Join(each(states, func(s replicate.State) string { return string(s) }), ","))
		}
		w.Header().Set("Link", "</api/v1/jobs/"+url.PathEscape(id)+"/images?"+next.Encode()+`>; rel="next"`)
	}
	return httpx.WriteJSON(w, r, ImagePage{Images: each(images, imageOf)})
}

func (a *api) job(w http.ResponseWriter, r *http.Request) error {
	id := mux.Vars(r)["id"]
	return a.onJob(w, r, id, func() error { return a.jobHere(w, r, id) })
}

func (a *api) jobHere(w http.ResponseWriter, r *http.Request, id string) error {
	if err := a.checkJob(r, id); err != nil {
		return err
	}
	var job replicate.Job
	var err error
	switch wait := r.URL.Query().Get("wait"); {
	case r.Method == http.MethodDelete:
		job, err = a.jobs.Cancel(r.Context(), id)
	case wait != "":
		d, perr := time.ParseDuration(wait)
		if perr != nil || d < 0 || d > 10*time.Minute {
			return httpx.OCIError(http.StatusBadRequest, errInvalid, "wait "+strconv.Quote(wait)+": want a duration up to 10m, like 30s")
		}
		ctx, cancel := context.WithTimeout(r.Context(), d)
		defer cancel()
		job, err = a.jobs.Wait(ctx, id)
	default:
		job, err = a.jobs.Job(id)
	}
	if errors.Is(err, replicate.ErrJobNotFound) {
		return httpx.OCIError(http.StatusNotFound, errJobUnknown, err.Error())
	}
	if err != nil {
		return err
	}
	return httpx.WriteJSON(w, r, jobOf(job))
}

// retryJob starts a job of a finished job's failed images: 202 with it.
func (a *api) retryJob(w http.ResponseWriter, r *http.Request) error {
	id := mux.Vars(r)["id"]
	return a.onJob(w, r, id, func() error {
		if err := a.checkJob(r, id); err != nil {
			return err
		}
		old, err := a.jobs.Job(id)
		if err != nil {
			return err
		}
		caller := httpx.Identity(r.Context())
		if old.PushTo != "" && !a.auth.MayPushTo(caller, old.PushTo) {
			return httpx.OCIError(http.StatusForbidden, errcode.ErrorCodeDenied, "job "+id+" pushes to "+old.PushTo+", where this caller may not push")
		}
		job, err := a.jobs.Retry(id, caller.User)
		switch {
		case errors.Is(err, replicate.ErrNothingToRetry):
			return httpx.OCIError(http.StatusConflict, errNothingToRetry, err.Error())
		case err != nil:
			return httpx.ToHTTP(err, errJobUnknown)
		}
		w.Header().Set("Location", "/api/v1/jobs/"+job.ID)
		return httpx.WriteJSONStatus(w, r, http.StatusAccepted, jobOf(job))
	})
}

// pins lists what prefetch jobs pinned; DELETE ?image=REF unpins one.
func (a *api) pins(w http.ResponseWriter, r *http.Request) error {
	if r.Method == http.MethodDelete {
		ref, err := a.parseImage(r.URL.Query().Get("image"))
		if err != nil {
			return httpx.OCIError(http.StatusBadRequest, errInvalid, err.Error())
		}
		err = a.jobs.Unpin(ref.Upstream, ref.Repo, ref.Ref)
		if errors.Is(err, replicate.ErrNotPinned) {
			return httpx.OCIError(http.StatusNotFound, errPinUnknown, ref.Source+" is not pinned")
		}
		if err != nil {
			return err
		}
		w.WriteHeader(http.StatusNoContent)
		return nil
	}
	pins, err := a.jobs.Pins()
	if err != nil {
		return err
	}
	return httpx.WriteJSON(w, r, PinList{Pins: each(pins, pinOf)})
}

// replication shows each replication rule: its last run, what is pending
// and since when, and its failures.
func (a *api) replication(w http.ResponseWriter, r *http.Request) error {
	rules := []replicate.RuleStatus{}
	if a.rules != nil {
		rules = a.rules.Status()
	}
	list := RuleList{Rules: each(rules, ruleOf)}
	if a.fleet != nil && !peerCall(r) {
		list.Unreachable = a.ownersStatus(r, list.Rules)
	}
	return httpx.WriteJSON(w, r, list)
}

// ownersStatus puts each rule's status as its owner has it in rules, and
// names the owners that did not answer.
func (a *api) ownersStatus(r *http.Request, rules []Rule) (unreachable []string) {
	byPeer := map[string][]int{}
	for i := range rules {
		peer, self := a.fleet.OwnerOf(RuleKey(rules[i].Name))
		rules[i].Replica = peer
		if !self {
			byPeer[peer] = append(byPeer[peer], i)
		}
	}
	for peer, idx := range byPeer {
		var theirs RuleList
		resp, err := a.forward(r, peer, nil)
		if err == nil {
			if resp.StatusCode == http.StatusOK {
				err = json.NewDecoder(io.LimitReader(resp.Body, 16<<20)).Decode(&theirs)
			} else {
				err = fmt.Errorf("answered %d", resp.StatusCode)
			}
			resp.Body.Close()
		}
		if err != nil {
			a.log.Warn("a rule's owner did not give its status", "peer", peer, "error", err)
			unreachable = append(unreachable, peer)
			continue
		}
		for _, i := range idx {
			for _, t := range theirs.Rules {
				if t.Name == rules[i].Name {
					t.Replica = peer
					rules[i] = t
				}
			}
		}
	}
	slices.Sort(unreachable)
	return unreachable
}

// replicate runs a rule now: 202 with its job, or 200 with "nothing new".
func (a *api) replicate(w http.ResponseWriter, r *http.Request) error {
	name := mux.Vars(r)["rule"]
	if a.rules == nil {
		return httpx.OCIError(http.StatusNotFound, errRuleUnknown, "no replication rule "+strconv.Quote(name))
	}
	for _, s := range a.rules.Status() {
		if s.Name == name && !a.auth.MayPushTo(httpx.Identity(r.Context()), s.Target) {
			return httpx.OCIError(http.StatusForbidden, errcode.ErrorCodeDenied, "running rule "+strconv.Quote(name)+" pushes to "+s.Target+
				", where this caller may not push (auth.rules[].push)")
		}
	}
	if a.fleet != nil && !peerCall(r) {
		if peer, self := a.fleet.OwnerOf(RuleKey(name)); !self {
			resp, err := a.forward(r, peer, nil)
			if err != nil {
				return retryLater(fmt.Sprintf("rule %q runs on %s, which does not answer now", name, peer))
			}
			return relay(w, resp)
		}
	}
	ctx, cancel := context.WithTimeout(r.Context(), 5*time.Minute)
	defer cancel()
	if r.URL.Query().Get("dry_run") == "true" {
		plan, problems, err := a.rules.DryRun(ctx, name)
		if errors.Is(err, replicate.ErrNoRule) {
			return httpx.OCIError(http.StatusNotFound, errRuleUnknown, "no replication rule "+strconv.Quote(name))
		}
		if err != nil {
			return err
		}
		body := RuleRun{Rule: name, State: "dry run", WouldPush: []Planned{}}
		for _, p := range plan {
			body.WouldPush = append(body.WouldPush, Planned(p))
		}
		if problems != nil && a.seesAll(r) {
			body.Problems = problems.Error()
		}
		return httpx.WriteJSON(w, r, body)
	}
	job, err := a.rules.Run(ctx, name)
	switch {
	case errors.Is(err, replicate.ErrNoRule):
		return httpx.OCIError(http.StatusNotFound, errRuleUnknown, "no replication rule "+strconv.Quote(name))
	case job == nil && err != nil:
		he := httpx.ToHTTP(err, errcode.ErrorCodeNameUnknown)
		if !a.seesAll(r) {
			he.Err = he.Err.Code.WithMessage("rule " + strconv.Quote(name) + " could not list or resolve some of its repositories; Wharf's log says which")
		}
		return he
	case job == nil:
		return httpx.WriteJSON(w, r, RuleRun{Rule: name, State: "nothing new"})
	}
	w.Header().Set("Location", "/api/v1/jobs/"+job.ID)
	j := jobOf(*job)
	body := RuleRun{Rule: name, Job: &j}
	if err != nil && a.seesAll(r) {
		// Some repositories could not be listed (the rest run): their
		// names and upstreams are for those who see every job.
		body.Problems = err.Error()
	}
	return httpx.WriteJSONStatus(w, r, http.StatusAccepted, body)
}
