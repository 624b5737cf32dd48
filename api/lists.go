package api

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/wharf-registry/wharf/httpx"
	"github.com/wharf-registry/wharf/route"
)

// The lists a prefetch request may carry besides plain references: a text
// list, a skopeo sync YAML file, and patterns over what the cache holds.

// textList reads one reference per line; # starts a comment.
func textList(body []byte) []string {
	var refs []string
	sc := bufio.NewScanner(bytes.NewReader(body))
	sc.Buffer(make([]byte, 0, 64<<10), maxPrefetchBody)
	for sc.Scan() {
		line, _, _ := strings.Cut(sc.Text(), "#")
		if line = strings.TrimSpace(line); line != "" {
			refs = append(refs, line)
		}
	}
	return refs
}

// syncRegistry is one registry of a skopeo sync YAML file. Credentials and
// TLS settings are skopeo's business; Wharf uses its own upstream config.
type syncRegistry struct {
	Images           map[string][]string `yaml:"images"`
	ImagesByTagRegex map[string]string   `yaml:"images-by-tag-regex"`
	ImagesBySemver   map[string]string   `yaml:"images-by-semver"`
	Credentials      any                 `yaml:"credentials"`
	TLSVerify        any                 `yaml:"tls-verify"`
	CertDir          any                 `yaml:"cert-dir"`
}

// syncList expands a skopeo sync YAML file into references: listed tags
// and digests as they are, an empty list as every tag, a regexp
// (images-by-tag-regex) or a semver range (images-by-semver) as the tags
// it matches now upstream.
func (a *api) syncList(ctx context.Context, body []byte) ([]string, error) {
	var doc map[string]syncRegistry
	dec := yaml.NewDecoder(bytes.NewReader(body))
	dec.KnownFields(true)
	if err := dec.Decode(&doc); err != nil && !errors.Is(err, io.EOF) {
		return nil, httpx.OCIError(http.StatusBadRequest, errInvalid, "YAML body: "+err.Error())
	}
	var ps problems
	var refs []string
	for _, host := range sortedKeys(doc) {
		reg := doc[host]
		join := func(repo, ref string) string {
			if strings.HasPrefix(ref, "sha256:") || strings.HasPrefix(ref, "sha512:") {
				return host + "/" + repo + "@" + ref
			}
			return host + "/" + repo + ":" + ref
		}
		for _, repo := range sortedKeys(reg.Images) {
			tags := reg.Images[repo]
			if len(tags) == 0 {
				all, err := a.tagsOf(ctx, host+"/"+repo)
				if err != nil {
					if refused(err) {
						return nil, err
					}
					ps.add(errInvalid, host+"/"+repo, "", "listing its tags: "+err.Error())
					continue
				}
				tags = all
			}
			for _, t := range tags {
				refs = append(refs, join(repo, t))
			}
		}
		// A regexp or a semver range, matched against the tags upstream has now.
		for _, f := range []struct {
			key     string
			exprs   map[string]string
			compile func(string) (func(string) bool, error)
		}{{"images-by-tag-regex", reg.ImagesByTagRegex, route.Regexp}, {"images-by-semver", reg.ImagesBySemver, route.Semver}} {
			for _, repo := range sortedKeys(f.exprs) {
				match, err := f.compile(f.exprs[repo])
				if err != nil {
					ps.add(errInvalid, host+"/"+repo, f.exprs[repo], f.key+": "+err.Error())
					continue
				}
				all, err := a.tagsOf(ctx, host+"/"+repo)
				if err != nil {
					if refused(err) {
						return nil, err
					}
					ps.add(errInvalid, host+"/"+repo, "", "listing its tags: "+err.Error())
					continue
				}
				for _, t := range all {
					if match(t) {
						refs = append(refs, join(repo, t))
					}
				}
			}
		}
	}
	return refs, ps.err()
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// tagsOf lists the tags of a repository named as in a reference.
func (a *api) tagsOf(ctx context.Context, name string) ([]string, error) {
	ref, err := a.parseImage(name)
	if err != nil {
		return nil, err
	}
	if err := httpx.MayPull(a.auth, ctx, ref.Upstream, ref.Repo, name); err != nil {
		return nil, err
	}
	return a.cache.Tags(ctx, ref.Upstream, ref.Repo)
}

// fromCache expands patterns into the cached tags they match that the
// caller may pull; a pattern that matches none is a problem of the request.
func (a *api) fromCache(ctx context.Context, patterns []string) ([]string, error) {
	var ps problems
	var refs []string
	id := httpx.Identity(ctx)
	for i, pat := range patterns {
		item := fmt.Sprintf("from_cache[%d]", i)
		if err := route.Check(pat); err != nil {
			ps.add(errInvalid, item, pat, err.Error())
			continue
		}
		tags, err := a.cache.CachedTags(pat)
		if err != nil {
			return nil, err
		}
		n := 0
		for _, t := range tags {
			if a.auth.MayPull(id, t.Upstream, t.Repo) {
				refs = append(refs, t.Upstream+"/"+t.Repo+":"+t.Tag)
				n++
			}
		}
		if n == 0 {
			ps.add(errInvalid, item, pat, "no cached tag matches")
		}
	}
	return refs, ps.err()
}

// refused reports whether err is an access refusal, which is the answer to
// the whole request, not one problem in a list.
func refused(err error) bool {
	var he *httpx.Error
	return errors.As(err, &he) && (he.Status == http.StatusUnauthorized || he.Status == http.StatusForbidden)
}
