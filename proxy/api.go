package proxy

import (
	"context"
	"crypto/subtle"
	"errors"
	"net"
	"net/http"
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

// jobSummary is a job without its image list, for listings.
type jobSummary struct {
	ID         string     `json:"id"`
	State      string     `json:"state"`
	PushTo     string     `json:"push_to,omitempty"`
	Created    time.Time  `json:"created"`
	Finished   *time.Time `json:"finished,omitempty"`
	Images     int        `json:"images"`
	Done       int        `json:"images_done"`
	Failed     int        `json:"images_failed"`
	BytesTotal int64      `json:"bytes_total"`
	BytesDone  int64      `json:"bytes_done"`
}

func (p *proxy) listJobs(w http.ResponseWriter, r *http.Request) error {
	jobs, err := p.cache.Jobs()
	if err != nil {
		return err
	}
	out := make([]jobSummary, 0, len(jobs))
	for _, j := range jobs {
		s := jobSummary{ID: j.ID, State: j.State, PushTo: j.PushTo, Created: j.Created, Finished: j.Finished, Images: len(j.Images)}
		for _, img := range j.Images {
			switch img.State {
			case cache.StateDone:
				s.Done++
			case cache.StateFailed:
				s.Failed++
			}
			s.BytesTotal += img.BytesTotal
			s.BytesDone += img.BytesDone
		}
		out = append(out, s)
	}
	return writeJSON(w, r, map[string]any{"jobs": out})
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
