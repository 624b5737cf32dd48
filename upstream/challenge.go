package upstream

import (
	"cmp"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"time"

	"oras.land/oras-go/v2/registry/remote/auth"
)

// challengeAge is how long a token challenge is taken as the upstream's
// answer to any request without a token: a registry that changes its
// scheme is asked again after it.
const challengeAge = 10 * time.Minute

// challenges remembers the upstream's Bearer challenge, as docker does
// after its first ping: a pull of a repository no token is held for yet is
// answered with it here, so the token client goes straight to the realm
// for that repository's scope instead of paying a round trip to be told
// 401. The guard below still decides where the token request may go.
type challenges struct {
	next *guard
	base string // origin of the upstream
	now  func() time.Time

	mu      sync.Mutex
	bearer  string // realm and service of the last Bearer challenge, without its scope
	actions string // the actions its repository scope named ("pull,push" for Harbor), or ""
	seen    time.Time
}

func newChallenges(next *guard) *challenges {
	return &challenges{next: next, base: origin(next.base), now: time.Now}
}

var challengeParamRE = regexp.MustCompile(`(\w+)="([^"]*)"`)

// answered marks a request the remembered challenge may answer, and
// records whether it did: a token fetched for the request's own scope may
// fall short of what the upstream demands (a registry asking pull,push
// for a HEAD), and then the request is sent again the long way, so that
// the upstream's own challenge names the scope.
type answered struct {
	off, used bool
}

type answeredKey struct{}

func (c *challenges) RoundTrip(req *http.Request) (*http.Response, error) {
	if ch := c.known(req); ch != "" {
		if a, _ := req.Context().Value(answeredKey{}).(*answered); a != nil {
			a.used = true
		}
		return &http.Response{
			Status: "401 Unauthorized", StatusCode: http.StatusUnauthorized,
			Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
			Header:  http.Header{"Www-Authenticate": {ch}},
			Body:    http.NoBody,
			Request: req,
		}, nil
	}
	resp, err := c.next.RoundTrip(req)
	if err == nil && resp.StatusCode == http.StatusUnauthorized && origin(req.URL) == c.base {
		c.learn(resp.Header.Get("WWW-Authenticate"))
	}
	return resp, err
}

// known is the challenge to answer req with: a pull from the upstream,
// under a repository scope, with no token, while a Bearer challenge is
// fresh; else "".
func (c *challenges) known(req *http.Request) string {
	if a, _ := req.Context().Value(answeredKey{}).(*answered); a != nil && a.off {
		return ""
	}
	if (req.Method != http.MethodGet && req.Method != http.MethodHead) || req.Header.Get("Authorization") != "" ||
		origin(req.URL) != c.base || !strings.HasPrefix(req.URL.Path, "/v2/") || req.URL.Path == "/v2/" ||
		len(auth.GetAllScopesForHost(req.Context(), cmp.Or(req.Host, req.URL.Host))) == 0 {
		return ""
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.bearer == "" || c.now().Sub(c.seen) > challengeAge {
		return ""
	}
	if c.actions == "" {
		return c.bearer
	}
	// The scope the upstream itself would name: the same token, under
	// the same cache key, as a request it challenged would get.
	var scopes []string
	for _, sc := range auth.GetAllScopesForHost(req.Context(), cmp.Or(req.Host, req.URL.Host)) {
		if name, ok := repositoryOf(sc); ok {
			scopes = append(scopes, "repository:"+name+":"+c.actions)
		}
	}
	return c.bearer + `,scope="` + strings.Join(scopes, " ") + `"`
}

// repositoryOf is the repository a "repository:NAME:ACTIONS" scope names.
func repositoryOf(scope string) (string, bool) {
	rest, ok := strings.CutPrefix(scope, "repository:")
	i := strings.LastIndexByte(rest, ':')
	if !ok || i <= 0 {
		return "", false
	}
	return rest[:i], true
}

// learn keeps a Bearer challenge's realm and service, and forgets what it
// kept when the upstream challenges with another scheme or a realm the
// guard would not send credentials to.
func (c *challenges) learn(challenge string) {
	scheme, params, _ := strings.Cut(strings.TrimSpace(challenge), " ")
	keep, actions := "", ""
	if strings.EqualFold(scheme, "bearer") {
		var realm, service string
		for _, m := range challengeParamRE.FindAllStringSubmatch(params, -1) {
			switch strings.ToLower(m[1]) {
			case "realm":
				realm = m[2]
			case "service":
				service = m[2]
			case "scope":
				if first, _, _ := strings.Cut(m[2], " "); strings.HasPrefix(first, "repository:") {
					if i := strings.LastIndexByte(first, ':'); i > len("repository:") {
						actions = first[i+1:]
					}
				}
			}
		}
		if u, err := url.Parse(realm); err == nil && realm != "" && c.next.mayAuthorize(u) {
			keep = `Bearer realm="` + realm + `"`
			if service != "" {
				keep += `,service="` + service + `"`
			}
		}
	}
	if keep == "" {
		actions = ""
	}
	c.mu.Lock()
	c.bearer, c.actions, c.seen = keep, actions, c.now()
	c.mu.Unlock()
}
