package api

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/distribution/distribution/v3/registry/api/errcode"
	"github.com/distribution/reference"

	"github.com/wharf-registry/wharf/httpx"
	"github.com/wharf-registry/wharf/oci"
	"github.com/wharf-registry/wharf/replicate"
	"github.com/wharf-registry/wharf/route"
)

// problems collects what is wrong with a request, item by item, so one
// answer lists every mistake (the first maxProblems of them, and how many
// more there are).
type problems struct {
	errs errcode.Errors
	more int
}

// maxProblems bounds the errors one answer lists.
const maxProblems = 100

func (ps *problems) add(code errcode.ErrorCode, item, input, msg string) {
	if len(ps.errs) == maxProblems {
		ps.more++
		return
	}
	detail := map[string]string{"item": item}
	if input != "" {
		detail["input"] = input
	}
	ps.errs = append(ps.errs, code.WithMessage(msg).WithDetail(detail))
}

func (ps *problems) err() error {
	if len(ps.errs) == 0 {
		return nil
	}
	first := ps.errs[0].(errcode.Error)
	rest := ps.errs[1:]
	if ps.more > 0 {
		rest = append(rest, errInvalid.WithMessage(fmt.Sprintf("%d more problems not listed", ps.more)))
	}
	return &httpx.Error{Status: http.StatusBadRequest, Err: first, More: rest}
}

// prefetch accepts a job: 202 and its report, or 400 listing every bad item
// with nothing started.
func (a *api) prefetch(w http.ResponseWriter, r *http.Request) error {
	req, err := a.readPrefetch(r)
	if err != nil {
		return err
	}
	spec, err := a.jobSpec(req)
	if err != nil {
		return err
	}
	for _, img := range spec.Images {
		if err := httpx.MayPull(a.auth, r.Context(), img.Upstream, img.Repo, img.Source); err != nil {
			return err
		}
		if err := a.mayPush(r.Context(), spec.PushTo, img.TargetRepo); err != nil {
			return err
		}
	}
	spec.Owner = httpx.Identity(r.Context()).User
	job, err := a.jobs.Submit(spec)
	if errors.Is(err, replicate.ErrJobNotSaved) {
		return httpx.OCIError(http.StatusServiceUnavailable, errcode.ErrorCodeUnavailable, err.Error())
	}
	if err != nil {
		return httpx.OCIError(http.StatusBadRequest, errInvalid, err.Error())
	}
	w.Header().Set("Location", "/api/v1/jobs/"+job.ID)
	return httpx.WriteJSONStatus(w, r, http.StatusAccepted, jobOf(job))
}

// readPrefetch decodes the body by its Content-Type: JSON, text (one
// reference per line) or skopeo sync YAML, with the options as query
// parameters for the last two.
func (a *api) readPrefetch(r *http.Request) (PrefetchRequest, error) {
	var req PrefetchRequest
	body, err := io.ReadAll(io.LimitReader(r.Body, replicate.MaxListSize+1))
	if err != nil {
		return req, httpx.OCIError(http.StatusBadRequest, errInvalid, "reading the body: "+err.Error())
	}
	if len(body) > replicate.MaxListSize {
		return req, httpx.OCIError(http.StatusBadRequest, errInvalid, "the body is larger than 16 MiB")
	}
	l := lister{a: a, ctx: r.Context()}
	ctx, cancel := context.WithTimeout(r.Context(), time.Minute) // tags listed upstream for sync files
	defer cancel()
	mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	switch mt {
	case "application/json", "":
		dec := json.NewDecoder(bytes.NewReader(body))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&req); err != nil {
			return req, httpx.OCIError(http.StatusBadRequest, errInvalid, "JSON body: "+err.Error())
		}
		req.Images = append(req.Images, replicate.TextList([]byte(req.List))...)
		cached, err := listed(replicate.FromCache(req.FromCache, l))
		if err != nil {
			return req, err
		}
		req.Images = append(req.Images, cached...)
		if req.Sync != "" {
			refs, err := listed(replicate.SyncList(ctx, []byte(req.Sync), l))
			if err != nil {
				return req, err
			}
			req.Images = append(req.Images, refs...)
		}
	case "text/plain":
		req.Images = replicate.TextList(body)
	case "application/yaml", "application/x-yaml", "text/yaml":
		if req.Images, err = listed(replicate.SyncList(ctx, body, l)); err != nil {
			return req, err
		}
	default:
		return req, httpx.OCIError(http.StatusBadRequest, errInvalid,
			"Content-Type "+mt+" is not understood: send application/json, text/plain or application/yaml")
	}
	return req, queryOptions(r, &req)
}

// queryOptions adds the options a text or YAML body carries as query
// parameters to req.
func queryOptions(r *http.Request, req *PrefetchRequest) error {
	q := r.URL.Query()
	if v := q.Get("push_to"); v != "" {
		if req.PushTo != "" && req.PushTo != v {
			return httpx.OCIError(http.StatusBadRequest, errInvalid, "push_to is given twice")
		}
		req.PushTo = v
	}
	req.Platforms = append(req.Platforms, q["platform"]...)
	for _, rn := range q["rename"] {
		from, to, ok := strings.Cut(rn, "=")
		if !ok {
			return httpx.OCIError(http.StatusBadRequest, errInvalid, "rename "+strconv.Quote(rn)+": want from=to")
		}
		req.Rename = append(req.Rename, Rename{From: from, To: to})
	}
	if v := q.Get("index"); v != "" {
		req.Index = v
	}
	if v := q.Get("referrers"); v != "" {
		on, err := strconv.ParseBool(v)
		if err != nil {
			return httpx.OCIError(http.StatusBadRequest, errInvalid, "referrers "+strconv.Quote(v)+": want true or false")
		}
		req.Referrers = &on
	}
	if v := q.Get("pin"); v != "" {
		pin, err := strconv.ParseBool(v)
		if err != nil {
			return httpx.OCIError(http.StatusBadRequest, errInvalid, "pin "+strconv.Quote(v)+": want true or false")
		}
		req.Pin = req.Pin || pin
	}
	return nil
}

// jobSpec validates a request into a job, or lists everything wrong with it.
func (a *api) jobSpec(req PrefetchRequest) (replicate.JobSpec, error) {
	var ps problems
	spec := replicate.JobSpec{PushTo: req.PushTo, Pin: req.Pin, SkipReferrers: req.Referrers != nil && !*req.Referrers, FilterIndex: req.Index == "filter"}
	if req.Index != "" && req.Index != "filter" && req.Index != "verbatim" {
		ps.add(errInvalid, "index", req.Index, `want "verbatim" (copy indexes as they are) or "filter" (list only the copied platforms)`)
	}
	if len(req.Images) == 0 {
		ps.add(errInvalid, "images", "", "the list of images is empty")
	}
	if req.PushTo != "" && !a.jobs.HasTarget(req.PushTo) {
		ps.add(errInvalid, "push_to", req.PushTo, "no push target "+strconv.Quote(req.PushTo)+" is configured")
	}
	if req.PushTo == "" && len(req.Rename) > 0 {
		ps.add(errInvalid, "rename", "", "rename needs push_to")
	}
	for i, s := range req.Platforms {
		pl, err := replicate.ParsePlatform(s)
		if err != nil {
			ps.add(errInvalid, fmt.Sprintf("platforms[%d]", i), s, err.Error())
			continue
		}
		spec.Platforms = append(spec.Platforms, pl)
	}
	for i, rn := range req.Rename {
		if rn.From == "" {
			ps.add(errInvalid, fmt.Sprintf("rename[%d]", i), rn.From, "rename needs a from prefix")
		}
	}
	spec.Images = a.imageRefs(req, &ps)
	return spec, ps.err()
}

// imageRefs routes each image of req and names its target repository,
// noting each bad, duplicate or colliding one in ps.
func (a *api) imageRefs(req PrefetchRequest, ps *problems) []replicate.ImageRef {
	var refs []replicate.ImageRef
	seen, targets := map[string]int{}, map[string]int{}
	for i, s := range req.Images {
		item := fmt.Sprintf("images[%d]", i)
		ref, err := a.parseImage(s)
		if err != nil {
			code := errcode.ErrorCodeNameInvalid
			if errors.Is(err, route.ErrUnknown) {
				code = errcode.ErrorCodeNameUnknown
			}
			ps.add(code, item, s, err.Error())
			continue
		}
		key := ref.Upstream + "/" + ref.Repo + "@" + ref.Ref + ":" + ref.Tag
		if j, dup := seen[key]; dup {
			ps.add(errInvalid, item, s, fmt.Sprintf("duplicate of images[%d]", j))
			continue
		}
		seen[key] = i
		if req.PushTo != "" {
			ref.TargetRepo = replicate.TargetRepo(renamesOf(req.Rename), ref.Upstream, ref.Repo, trimRef(s))
			if !oci.ValidName(ref.TargetRepo) {
				ps.add(errcode.ErrorCodeNameInvalid, item, s, "target repository "+strconv.Quote(ref.TargetRepo)+" is not a valid name")
				continue
			}
			t := ref.TargetRepo + " " + cmp.Or(ref.Tag, ref.Ref) // what the push names
			if j, dup := targets[t]; dup {
				ps.add(errInvalid, item, s, fmt.Sprintf("pushes to the same target as images[%d]", j))
				continue
			}
			targets[t] = i
		}
		refs = append(refs, ref)
	}
	return refs
}

// trimRef cuts the :tag or @digest off a reference's remainder.
func trimRef(s string) string {
	if i := strings.IndexByte(s, '@'); i >= 0 {
		s = s[:i]
	}
	if i := strings.LastIndexByte(s, ':'); i >= 0 && !strings.Contains(s[i:], "/") {
		s = s[:i]
	}
	return s
}

// parseImage routes a reference like ghcr.io/org/app:1.0 the way a pull
// through Wharf would be: a first part naming an upstream (by name or
// alias) picks it, otherwise the default upstream serves the whole path.
// No tag means latest; tag@digest fetches the digest and pushes the tag.
func (a *api) parseImage(s string) (replicate.ImageRef, error) {
	named, err := reference.Parse(s)
	if err != nil {
		return replicate.ImageRef{}, fmt.Errorf("%q is not a valid image reference: %w", s, err)
	}
	n, ok := named.(reference.Named)
	if !ok {
		return replicate.ImageRef{}, fmt.Errorf("%q names no repository", s)
	}
	ref := replicate.ImageRef{Source: s, Ref: "latest"}
	if ref.Upstream, ref.Repo, err = a.router.Resolve(n.Name(), ""); err != nil {
		return replicate.ImageRef{}, err
	}
	t, tagged := named.(reference.Tagged)
	if tagged {
		ref.Ref = t.Tag()
	}
	if d, ok := named.(reference.Digested); ok {
		if _, ok := oci.ParseDigest(d.Digest().String()); !ok {
			return replicate.ImageRef{}, fmt.Errorf("%q: only sha256 and sha512 digests are supported", s)
		}
		ref.Ref = d.Digest().String()
		if tagged {
			ref.Tag = t.Tag()
		}
	}
	return ref, nil
}
