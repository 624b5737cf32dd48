package proxy

import (
	"context"
	"crypto/subtle"
	"errors"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/distribution/distribution/v3/registry/api/errcode"
	"github.com/gorilla/mux"

	"github.com/wharf-registry/wharf/cache"
)

// Wharf's own API under /api/v1: prefetch jobs, pins and upstream health.
// It can make Wharf fetch and push a lot of data, so it needs the bearer
// token from api.token_file, or, without one, a client on loopback.

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
)

// api guards an /api/v1 handler and admits only the given methods.
func (p *proxy) api(route string, h func(http.ResponseWriter, *http.Request) error, methods ...string) http.Handler {
	return p.wrap(route, func(w http.ResponseWriter, r *http.Request) error {
		if err := p.authorizeAPI(r); err != nil {
			return err
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

func (p *proxy) authorizeAPI(r *http.Request) error {
	if p.apiToken == "" {
		host, _, _ := net.SplitHostPort(r.RemoteAddr)
		if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
			return ociError(http.StatusForbidden, errcode.ErrorCodeDenied,
				"the API answers loopback clients only; set api.token_file to open it to the network")
		}
		return nil
	}
	got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if ok && subtle.ConstantTimeCompare([]byte(got), []byte(p.apiToken)) == 1 {
		return nil
	}
	return &httpError{status: http.StatusUnauthorized,
		err:    errcode.ErrorCodeUnauthorized.WithMessage("the API needs Authorization: Bearer <the token in api.token_file>"),
		header: http.Header{"Www-Authenticate": {`Bearer realm="wharf-api"`}}}
}

// listJobs lists every job's report, read from the jobs' own records:
// never their images, however many they have.
func (p *proxy) listJobs(w http.ResponseWriter, r *http.Request) error {
	jobs, err := p.cache.Jobs()
	if err != nil {
		return err
	}
	return writeJSON(w, r, map[string]any{"jobs": jobs})
}

// jobImages pages through a job's images: ?state=failed (repeatable, or
// comma-separated), n (default 100, at most 1000) and last (the index of
// the last image of the previous page), with a Link to the next page.
func (p *proxy) jobImages(w http.ResponseWriter, r *http.Request) error {
	id := mux.Vars(r)["id"]
	q := r.URL.Query()
	var states []string
	for _, v := range q["state"] {
		for s := range strings.SplitSeq(v, ",") {
			switch s {
			case "":
			case cache.StateQueued, cache.StateRunning, cache.StateDone, cache.StateFailed, cache.StateCancelled:
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
	images, more, err := p.cache.JobImages(id, states, last, n)
	if errors.Is(err, cache.ErrJobNotFound) {
		return ociError(http.StatusNotFound, errJobUnknown, err.Error())
	}
	if err != nil {
		return err
	}
	if more && len(images) > 0 {
		next := url.Values{"n": {strconv.Itoa(min(n, cache.MaxImagesPage))}, "last": {strconv.Itoa(images[len(images)-1].Index)}}
		if len(states) > 0 {
			next.Set("state", strings.Join(states, ","))
		}
		w.Header().Set("Link", "</api/v1/jobs/"+url.PathEscape(id)+"/images?"+next.Encode()+`>; rel="next"`)
	}
	if images == nil {
		images = []cache.Image{}
	}
	return writeJSON(w, r, map[string]any{"images": images})
}

func (p *proxy) job(w http.ResponseWriter, r *http.Request) error {
	id := mux.Vars(r)["id"]
	var job cache.Job
	var err error
	switch wait := r.URL.Query().Get("wait"); {
	case r.Method == http.MethodDelete:
		job, err = p.cache.CancelJob(r.Context(), id)
	case wait != "":
		d, perr := time.ParseDuration(wait)
		if perr != nil || d < 0 || d > 10*time.Minute {
			return ociError(http.StatusBadRequest, errInvalid, "wait "+strconv.Quote(wait)+": want a duration up to 10m, like 30s")
		}
		ctx, cancel := context.WithTimeout(r.Context(), d)
		defer cancel()
		job, err = p.cache.WaitJob(ctx, id)
	default:
		job, err = p.cache.Job(id)
	}
	if errors.Is(err, cache.ErrJobNotFound) {
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
		err = p.cache.Unpin(ref.Upstream, ref.Repo, ref.Ref)
		if errors.Is(err, cache.ErrNotPinned) {
			return ociError(http.StatusNotFound, errPinUnknown, ref.Source+" is not pinned")
		}
		if err != nil {
			return err
		}
		w.WriteHeader(http.StatusNoContent)
		return nil
	}
	pins, err := p.cache.Pins()
	if err != nil {
		return err
	}
	return writeJSON(w, r, map[string]any{"pins": pins})
}
