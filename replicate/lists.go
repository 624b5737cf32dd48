package replicate

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"

	"regexp"

	"gopkg.in/yaml.v3"

	"github.com/wharf-registry/wharf/route"
)

// Image lists: what a job may be asked for besides plain references. A
// text list, a skopeo sync YAML file, and patterns over what the cache
// holds, each expanded here into references; the tag filters a sync file
// names (a regexp, a semver range) are route's, as replication rules'.

// MaxListSize bounds a list: room for a hundred thousand references.
const MaxListSize = 16 << 20

// ListProblem is one item of a list that could not be expanded; the
// others are.
type ListProblem struct {
	Item  string // where in the list: a repository, from_cache[i]
	Input string // what it said, if anything
	Msg   string
}

// Lister is what expanding a list asks of its caller: the tags a
// repository named as in a reference has now (the API's checks the
// caller's pull rights, and an error it means as the whole answer, a
// refusal, it wraps in Refused), and the cached tags a pattern matches
// that the caller may pull.
type Lister interface {
	Tags(ctx context.Context, name string) ([]string, error)
	CachedTags(pattern string) ([]string, error)
	// Registry names the upstream a sync file's registry key (a host, a
	// name or an alias) means, and whether Wharf verifies its TLS.
	Registry(key string) (upstream string, tlsVerify bool, err error)
}

// Refused wraps a Lister's error that answers the whole request (the
// caller may not read a repository the list names), not one problem.
type Refused struct{ Err error }

func (r Refused) Error() string { return r.Err.Error() }
func (r Refused) Unwrap() error { return r.Err }

// TextList reads one reference per line; # starts a comment.
func TextList(body []byte) []string {
	var refs []string
	sc := bufio.NewScanner(bytes.NewReader(body))
	sc.Buffer(make([]byte, 0, 64<<10), MaxListSize)
	for sc.Scan() {
		line, _, _ := strings.Cut(sc.Text(), "#")
		if line = strings.TrimSpace(line); line != "" {
			refs = append(refs, line)
		}
	}
	return refs
}

// syncRegistry is one registry of a skopeo sync YAML file, keyed by the
// registry's host (as skopeo writes it), or by an upstream's name or
// alias. Wharf reaches it as the upstream is configured: tls-verify is
// taken when it says the same, and refused otherwise; credentials and
// cert-dir are refused, with where their like is configured.
type syncRegistry struct {
	Images           map[string][]string `yaml:"images"`
	ImagesByTagRegex map[string]string   `yaml:"images-by-tag-regex"`
	ImagesBySemver   map[string]string   `yaml:"images-by-semver"`
	Credentials      any                 `yaml:"credentials"`
	TLSVerify        any                 `yaml:"tls-verify"`
	CertDir          any                 `yaml:"cert-dir"`
}

// ErrSyncYAML says a sync file does not decode.
var ErrSyncYAML = errors.New("YAML body")

// SyncList expands a skopeo sync YAML file into references: listed tags
// and digests as they are, an empty list as every tag, a regexp
// (images-by-tag-regex) or a semver range (images-by-semver) as the tags
// it matches now upstream. A repository it cannot list is a problem; a
// Refused error ends it.
func SyncList(ctx context.Context, body []byte, l Lister) ([]string, []ListProblem, error) {
	var doc map[string]syncRegistry
	dec := yaml.NewDecoder(bytes.NewReader(body))
	dec.KnownFields(true)
	if err := dec.Decode(&doc); err != nil && !errors.Is(err, io.EOF) {
		return nil, nil, fmt.Errorf("%w: %s", ErrSyncYAML, syncYAMLError(err, body))
	}
	var refs []string
	var ps []ListProblem
	for _, host := range slices.Sorted(maps.Keys(doc)) {
		r, p, err := syncRegistryRefs(ctx, host, doc[host], l)
		if err != nil {
			return nil, nil, err
		}
		refs, ps = append(refs, r...), append(ps, p...)
	}
	return refs, ps, nil
}

// syncYAMLError says what is wrong with a sync file in its own terms, not
// Go's, and on the line where it is.
func syncYAMLError(err error, body []byte) string {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	if m := syntaxRE.FindStringSubmatch(msg); m != nil {
		// The parser names the line where the enclosing block began (a
		// bad indent on line 4 is "line 1"); the line is the first one
		// the file does not parse up to.
		if n := firstBadLine(body); n > 0 {
			msg = fmt.Sprintf("line %d: %s", n, m[2])
		}
	}
	msg = strings.TrimPrefix(msg, "unmarshal errors:\n  ")
	msg = unknownKeyRE.ReplaceAllString(msg, `unknown key "$1" (a registry takes images, images-by-tag-regex, images-by-semver, tls-verify, credentials, cert-dir)`)
	msg = intoTypeRE.ReplaceAllStringFunc(msg, func(m string) string {
		switch {
		case strings.Contains(m, "map[string]replicate.syncRegistry"):
			return "want registries, each a map of images, images-by-tag-regex or images-by-semver"
		case strings.Contains(m, "[]string"):
			return "want a list of tags or digests"
		case strings.Contains(m, "map[string][]string"):
			return "want repositories, each with a list of tags (empty: every tag)"
		case strings.Contains(m, "map[string]string"):
			return "want repositories, each with an expression"
		}
		return "a value of the wrong kind"
	})
	return strings.ReplaceAll(msg, "\n  ", "; ")
}

// firstBadLine is the first line of body that the lines before it and it
// do not parse as YAML, 0 if none does (or body is too long to look).
func firstBadLine(body []byte) int {
	lines := bytes.SplitAfter(body, []byte("\n"))
	if len(lines) > 2000 {
		return 0
	}
	for k := 1; k <= len(lines); k++ {
		var v any
		if yaml.Unmarshal(bytes.Join(lines[:k], nil), &v) != nil {
			return k
		}
	}
	return 0
}

var (
	syntaxRE     = regexp.MustCompile(`^line (\d+): (.*)$`)
	unknownKeyRE = regexp.MustCompile(`field (\S+) not found in type replicate\.syncRegistry`)
	intoTypeRE   = regexp.MustCompile("cannot unmarshal !!\\w+ `[^`]*` into \\S+")
)

func syncRegistryRefs(ctx context.Context, host string, reg syncRegistry, l Lister) (refs []string, ps []ListProblem, err error) {
	up, verify, err := l.Registry(host)
	if err != nil {
		return nil, []ListProblem{{Item: host, Msg: err.Error()}}, nil
	}
	for _, c := range []struct {
		key, instead string
		set          bool
	}{{"credentials", "upstreams[].username and password", reg.Credentials != nil}, {"cert-dir", "upstreams[].ca_file, cert_file and key_file", reg.CertDir != nil}} {
		if c.set {
			ps = append(ps, ListProblem{Item: host, Msg: fmt.Sprintf("%s: Wharf reaches %s as upstream %s is configured (%s); remove %s from the sync file", c.key, host, up, c.instead, c.key)})
		}
	}
	if reg.TLSVerify != nil {
		v, ok := reg.TLSVerify.(bool)
		switch {
		case !ok:
			ps = append(ps, ListProblem{Item: host, Input: fmt.Sprint(reg.TLSVerify), Msg: "tls-verify: want true or false"})
		case v != verify:
			ps = append(ps, ListProblem{Item: host, Msg: fmt.Sprintf("tls-verify: %t, but Wharf reaches %s as upstream %s with TLS verification %s (upstreams[].url and insecure); make them agree, or remove tls-verify", v, host, up, map[bool]string{true: "on", false: "off"}[verify])})
		}
	}
	if len(ps) > 0 {
		return nil, ps, nil
	}
	join := func(repo, ref string) string { // named by the upstream's name: a pull routes by names only
		if strings.HasPrefix(ref, "sha256:") || strings.HasPrefix(ref, "sha512:") {
			return up + "/" + repo + "@" + ref
		}
		return up + "/" + repo + ":" + ref
	}
	// tags lists repo's tags, or notes the problem (nil, nil).
	tags := func(repo string) ([]string, error) {
		all, err := l.Tags(ctx, up+"/"+repo)
		var refused Refused
		if errors.As(err, &refused) {
			return nil, err
		}
		if err != nil {
			ps = append(ps, ListProblem{Item: host + "/" + repo, Msg: "listing its tags: " + err.Error()})
		}
		return all, nil
	}
	for _, repo := range slices.Sorted(maps.Keys(reg.Images)) {
		listed := reg.Images[repo]
		if len(listed) == 0 {
			if listed, err = tags(repo); err != nil {
				return nil, nil, err
			}
		}
		for _, t := range listed {
			refs = append(refs, join(repo, t))
		}
	}
	// A regexp or a semver range, matched against the tags upstream has now.
	for _, f := range []struct {
		key     string
		exprs   map[string]string
		compile func(string) (func(string) bool, error)
	}{{"images-by-tag-regex", reg.ImagesByTagRegex, route.Regexp}, {"images-by-semver", reg.ImagesBySemver, route.Semver}} {
		for _, repo := range slices.Sorted(maps.Keys(f.exprs)) {
			match, err := f.compile(f.exprs[repo])
			if err != nil {
				ps = append(ps, ListProblem{Item: host + "/" + repo, Input: f.exprs[repo], Msg: f.key + ": " + err.Error()})
				continue
			}
			all, err := tags(repo)
			if err != nil {
				return nil, nil, err
			}
			for _, t := range all {
				if match(t) {
					refs = append(refs, join(repo, t))
				}
			}
		}
	}
	return refs, ps, nil
}

// FromCache expands patterns (as pins use) into the cached tags they
// match that the caller may pull: "replicate what we use". A pattern that
// matches none is a problem.
func FromCache(patterns []string, l Lister) ([]string, []ListProblem, error) {
	var refs []string
	var ps []ListProblem
	for i, pat := range patterns {
		item := fmt.Sprintf("from_cache[%d]", i)
		if err := route.Check(pat); err != nil {
			ps = append(ps, ListProblem{Item: item, Input: pat, Msg: err.Error()})
			continue
		}
		tags, err := l.CachedTags(pat)
		if err != nil {
			return nil, nil, err
		}
		if len(tags) == 0 {
			ps = append(ps, ListProblem{Item: item, Input: pat, Msg: "no cached tag matches"})
		}
		refs = append(refs, tags...)
	}
	return refs, ps, nil
}
