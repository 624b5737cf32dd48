package api

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/distribution/distribution/v3/registry/api/errcode"
	"github.com/gorilla/mux"

	"github.com/wharf-registry/wharf/auth"
	"github.com/wharf-registry/wharf/cluster"
	"github.com/wharf-registry/wharf/httpx"
	"github.com/wharf-registry/wharf/replicate"
)

// One API for the fleet: whichever replica a call lands on answers it the
// same. A job lives on the replica that took it: any other asks every
// live peer for it and relays the answer of the one that has it; lists
// merge every live peer's. A rule runs on its owner (rendezvous on its
// name), which shows its status and takes its runs. The replica a call
// lands on authenticates the caller and forwards the request signed, with
// the caller's identity, over the peer route; the replica that answers
// decides what that identity may do, as it would for its own callers.

// Fleet is what the API needs of the other replicas; *cluster.Cluster is
// one.
type Fleet interface {
	Authorized(*http.Request) bool
	Self() string
	Peers() []string
	Others() []string // live peers but this one
	OwnerOf(key string) (peer string, self bool)
	Do(ctx context.Context, peer, method, uri string, hdr http.Header, body []byte) (*http.Response, error)
}

// RuleKey is the key a rule's owner is chosen by.
func RuleKey(name string) string { return "rule\x00" + name }

type peerCallKey struct{}

// peerCall reports whether r was forwarded by another replica: it is
// answered from this replica's own state, never forwarded again.
func peerCall(r *http.Request) bool { v, _ := r.Context().Value(peerCallKey{}).(bool); return v }

// fromPeer admits a request another replica forwarded (signed with the
// fleet's secret, with the identity it authenticated); ok is false for a
// request that is not a peer's at all.
func (a *api) fromPeer(r *http.Request) (_ *http.Request, ok bool, err error) {
	if a.fleet == nil || !strings.HasPrefix(r.Header.Get("Authorization"), "Wharf-Peer ") {
		return r, false, nil
	}
	if !a.fleet.Authorized(r) {
		return nil, true, httpx.OCIError(http.StatusUnauthorized, errcode.ErrorCodeUnauthorized, "peer requests must be signed with the fleet's secret")
	}
	q, err := url.ParseQuery(r.Header.Get(cluster.IdentityHeader))
	if err != nil {
		return nil, true, httpx.OCIError(http.StatusBadRequest, errInvalid, "a forwarded request's identity is malformed")
	}
	id := auth.Identity{User: q.Get("user"), Token: q.Get("token") == "1", Loopback: q.Get("loopback") == "1"}
	r = httpx.WithIdentity(r, id)
	return r.WithContext(context.WithValue(r.Context(), peerCallKey{}, true)), true, nil
}

// forward sends r to peer, signed, as the caller it was authenticated as.
func (a *api) forward(r *http.Request, peer string, body []byte) (*http.Response, error) {
	id := httpx.Identity(r.Context())
	v := url.Values{}
	if id.User != "" {
		v.Set("user", id.User)
	}
	if id.Token {
		v.Set("token", "1")
	}
	if id.Loopback {
		v.Set("loopback", "1")
	}
	hdr := http.Header{cluster.IdentityHeader: {v.Encode()}}
	for _, h := range []string{"Accept", "Content-Type"} {
		if v := r.Header.Get(h); v != "" {
			hdr.Set(h, v)
		}
	}
	return a.fleet.Do(r.Context(), peer, r.Method, r.URL.RequestURI(), hdr, body)
}

// relay copies a peer's answer to w.
func relay(w http.ResponseWriter, resp *http.Response) error {
	defer resp.Body.Close()
	for _, h := range []string{"Content-Type", "Location", "Link", "Retry-After", "Allow", "Www-Authenticate"} {
		if v := resp.Header.Values(h); len(v) > 0 {
			w.Header()[h] = v
		}
	}
	w.WriteHeader(resp.StatusCode)
	_, err := io.Copy(w, resp.Body)
	return err
}

// retryLater is the 503 of a call whose answer lives on a replica that
// does not answer now.
func retryLater(msg string) error {
	return &httpx.Error{Status: http.StatusServiceUnavailable, Retry: 5 * time.Second,
		Err: errcode.ErrorCodeUnavailable.WithMessage(msg + "; try again shortly")}
}

// down is the peers known but not live.
func (a *api) down() []string {
	live := a.fleet.Others()
	var out []string
	for _, p := range a.fleet.Peers() {
		if p != a.fleet.Self() && !slices.Contains(live, p) {
			out = append(out, p)
		}
	}
	return out
}

// onJob answers a call about job id here when the job is this replica's
// (or this is a peer's call, or there is no fleet), else relays the
// answer of the live peer that has it: every other live peer is asked at
// once, and the first answer other than 404 wins. A job no live peer has
// while some peer does not answer is 503, never 404: it may be there.
func (a *api) onJob(w http.ResponseWriter, r *http.Request, id string, here func() error) error {
	if a.fleet == nil || peerCall(r) {
		return here()
	}
	if _, err := a.jobs.Job(id); err == nil {
		return here()
	}
	others := a.fleet.Others()
	type answer struct {
		resp *http.Response
		err  error
		peer string
	}
	answers := make(chan answer, len(others))
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	for _, p := range others {
		go func() {
			resp, err := a.forward(r.WithContext(ctx), p, nil)
			answers <- answer{resp, err, p}
		}()
	}
	down := a.down()
	var won *http.Response
	for range others {
		ans := <-answers
		switch {
		case ans.err != nil:
			down = append(down, ans.peer)
		case won == nil && ans.resp.StatusCode != http.StatusNotFound:
			won = ans.resp
			continue
		default:
			ans.resp.Body.Close()
		}
	}
	if won != nil {
		return relay(w, won)
	}
	if len(down) > 0 {
		if err := a.checkJob(r, id); !isNotFound(err) {
			return err // no right to ask at all
		}
		slices.Sort(down)
		return retryLater(fmt.Sprintf("job %q may be on a replica that does not answer now (%s)", id, strings.Join(down, ", ")))
	}
	return here()
}

func isNotFound(err error) bool {
	var he *httpx.Error
	return errors.As(err, &he) && he.Status == http.StatusNotFound
}

// gather asks every other live peer for the same call and decodes each
// answer into a new T: the parts of a list the fleet shares. Peers that
// do not answer are named, so that a list never looks whole when it is
// not.
func gather[T any](a *api, r *http.Request) (parts []T, missing []string) {
	if a.fleet == nil || peerCall(r) {
		return nil, nil
	}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, p := range a.fleet.Others() {
		wg.Go(func() {
			var part T
			resp, err := a.forward(r, p, nil)
			if err == nil {
				if resp.StatusCode == http.StatusOK {
					err = json.NewDecoder(io.LimitReader(resp.Body, 64<<20)).Decode(&part)
				} else {
					err = fmt.Errorf("answered %d", resp.StatusCode)
				}
				resp.Body.Close()
			}
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				a.log.Warn("a peer's part of a list is missing", "peer", p, "error", err)
				missing = append(missing, p)
				return
			}
			parts = append(parts, part)
		})
	}
	wg.Wait()
	missing = append(missing, a.down()...)
	slices.Sort(missing)
	return parts, missing
}

// mergeJobs is every replica's jobs once each, oldest first. A job two
// replicas report (one took it over from the other) is the one further on.
func mergeJobs(lists ...[]Job) []Job {
	byID := map[string]Job{}
	rank := func(j Job) int {
		if j.Finished != nil {
			return 2
		}
		if j.Started != nil {
			return 1
		}
		return 0
	}
	for _, l := range lists {
		for _, j := range l {
			if old, ok := byID[j.ID]; !ok || rank(j) > rank(old) || (rank(j) == rank(old) && j.Done > old.Done) {
				byID[j.ID] = j
			}
		}
	}
	out := make([]Job, 0, len(byID))
	for _, j := range byID {
		out = append(out, j)
	}
	slices.SortFunc(out, func(a, b Job) int { return cmp.Or(a.Created.Compare(b.Created), strings.Compare(a.ID, b.ID)) })
	return out
}

// ruleOwners lets the fleet choose each rule's replica, and hands on_pull
// tags to it over the signed peer route.
type ruleOwners struct{ a *api }

func (o ruleOwners) RuleOwner(name string) (string, bool) { return o.a.fleet.OwnerOf(RuleKey(name)) }

func (o ruleOwners) HandPending(ctx context.Context, peer, rule string, tags []replicate.Pending) error {
	body, err := json.Marshal(tags)
	if err != nil {
		return err
	}
	resp, err := o.a.fleet.Do(ctx, peer, http.MethodPost, "/api/v1/replication/"+url.PathEscape(rule)+"/pending", http.Header{"Content-Type": {"application/json"}}, body)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return fmt.Errorf("%s answered %d: %s", peer, resp.StatusCode, bytes.TrimSpace(msg))
	}
	return nil
}

// maxPendingBody bounds the on_pull tags one peer request hands over.
const maxPendingBody = 16 << 20

// pending takes on_pull tags another replica saw for a rule this one owns.
// Only peers may call it.
func (a *api) pending(w http.ResponseWriter, r *http.Request) error {
	if !peerCall(r) || a.rules == nil {
		return httpx.OCIError(http.StatusNotFound, errcode.ErrorCodeUnsupported, "no such endpoint")
	}
	body, err := cluster.ReadBody(r, maxPendingBody)
	if err != nil {
		return httpx.OCIError(http.StatusBadRequest, errInvalid, err.Error())
	}
	var tags []replicate.Pending
	if err := json.Unmarshal(body, &tags); err != nil {
		return httpx.OCIError(http.StatusBadRequest, errInvalid, "pending tags: "+err.Error())
	}
	switch err := a.rules.AddPending(mux.Vars(r)["rule"], tags); {
	case errors.Is(err, replicate.ErrNoRule):
		return httpx.OCIError(http.StatusNotFound, errRuleUnknown, err.Error())
	case err != nil:
		return httpx.OCIError(http.StatusBadRequest, errInvalid, err.Error())
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}
