package api

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/wharf-registry/wharf/httpx"
	"github.com/wharf-registry/wharf/replicate"
	"github.com/wharf-registry/wharf/route"
)

// lister lets replicate expand one request's lists with the caller's
// rights: a repository it may not pull refuses the whole request, and
// from_cache sees only what it may pull.
type lister struct {
	a   *api
	ctx context.Context // the request's: who the caller is
}

func (l lister) Tags(ctx context.Context, name string) ([]string, error) {
	ref, err := l.a.parseImage(name)
	if err != nil {
		return nil, err
	}
	if err := httpx.MayPull(l.a.auth, l.ctx, ref.Upstream, ref.Repo, name); err != nil {
		return nil, replicate.Refused{Err: err}
	}
	return l.a.cache.Tags(ctx, ref.Upstream, ref.Repo)
}

func (l lister) Registry(key string) (string, bool, error) {
	up, ok := l.a.router.Registry(key)
	if !ok {
		return "", false, fmt.Errorf("%w for %s: a registry key is an upstream's name, alias or url host (%s)", route.ErrUnknown, key, strings.Join(l.a.router.Names(), ", "))
	}
	return up, l.a.router.TLSVerify(up), nil
}

func (l lister) CachedTags(pattern string) ([]string, error) {
	tags, err := l.a.cache.CachedTags(pattern)
	if err != nil {
		return nil, err
	}
	id := httpx.Identity(l.ctx)
	var refs []string
	for _, t := range tags {
		if l.a.auth.MayPull(id, t.Upstream, t.Repo) {
			refs = append(refs, t.Upstream+"/"+t.Repo+":"+t.Tag)
		}
	}
	return refs, nil
}

// listed is what expanding a list gave, as the API answers it: the
// problems as one 400 listing each, a refusal as itself.
func listed(refs []string, ps []replicate.ListProblem, err error) ([]string, error) {
	var refused replicate.Refused
	switch {
	case errors.As(err, &refused):
		return nil, refused.Err
	case errors.Is(err, replicate.ErrSyncYAML):
		return nil, httpx.OCIError(http.StatusBadRequest, errInvalid, err.Error())
	case err != nil:
		return nil, err
	}
	var out problems
	for _, p := range ps {
		out.add(errInvalid, p.Item, p.Input, p.Msg)
	}
	return refs, out.err()
}
