package upstream

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/singleflight"
	"oras.land/oras-go/v2/errdef"
	"oras.land/oras-go/v2/registry/remote/auth"
)

// defaultTokenLifetime is how long a token without a readable expiry is
// trusted: the distribution token spec's default expires_in.
const defaultTokenLifetime = 60 * time.Second

// maxTokens bounds the token cache. Scopes follow the repositories clients
// name, so without a bound random names would grow it forever: past it,
// expired tokens go, then the ones that expire soonest.
const maxTokens = 4096

// tokenCache is an auth.Cache whose tokens expire. oras-go's own cache keeps
// a token until upstream refuses it, which costs a 401 round trip on every
// expiry; this one drops it a little before its JWT "exp" instead.
type tokenCache struct {
	mu     sync.Mutex
	scheme map[string]auth.Scheme
	tokens map[string]cachedToken // at most maxTokens
	group  singleflight.Group
	now    func() time.Time
}

type cachedToken struct {
	token   string
	expires time.Time
}

func newTokenCache() *tokenCache {
	return &tokenCache{scheme: map[string]auth.Scheme{}, tokens: map[string]cachedToken{}, now: time.Now}
}

func (c *tokenCache) GetScheme(_ context.Context, registry string) (auth.Scheme, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	s, ok := c.scheme[registry]
	if !ok {
		return auth.SchemeUnknown, errdef.ErrNotFound
	}
	return s, nil
}

func (c *tokenCache) GetToken(_ context.Context, registry string, scheme auth.Scheme, key string) (string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	t, ok := c.tokens[registry+" "+scheme.String()+" "+key]
	if !ok || !c.now().Before(t.expires) {
		return "", errdef.ErrNotFound
	}
	return t.token, nil
}

func (c *tokenCache) Set(ctx context.Context, registry string, scheme auth.Scheme, key string, fetch func(context.Context) (string, error)) (string, error) {
	k := registry + " " + scheme.String() + " " + key
	v, err, _ := c.group.Do(k, func() (any, error) {
		// A caller that missed the token just before another's fetch
		// stored it takes that one: concurrent first requests share one
		// fetch however their 401s interleave.
		c.mu.Lock()
		t, ok := c.tokens[k]
		c.mu.Unlock()
		if ok && c.now().Before(t.expires) {
			return t.token, nil
		}
		token, err := fetch(ctx)
		if err != nil {
			return "", err
		}
		expires := c.now().Add(defaultTokenLifetime)
		if scheme == auth.SchemeBasic {
			expires = c.now().Add(24 * time.Hour)
		} else if exp, ok := jwtExpiry(token); ok {
			expires = exp.Add(-5 * time.Second)
		}
		c.mu.Lock()
		c.scheme[registry] = scheme
		c.makeRoom()
		c.tokens[k] = cachedToken{token: token, expires: expires}
		if hinted := strings.Join(auth.GetAllScopesForHost(ctx, registry), " "); scheme == auth.SchemeBearer && hinted != "" && hinted != key {
			// The challenge asked for more than the request hinted (Harbor
			// names pull,push for a pull): the next request of the same
			// repository looks the token up by its hint alone.
			c.makeRoom()
			c.tokens[registry+" "+scheme.String()+" "+hinted] = cachedToken{token: token, expires: expires}
		}
		c.mu.Unlock()
		return token, nil
	})
	return v.(string), err
}

// makeRoom keeps the cache under maxTokens: expired tokens go first, then
// the soonest to expire, down to three quarters full; c.mu must be held.
func (c *tokenCache) makeRoom() {
	if len(c.tokens) < maxTokens {
		return
	}
	now := c.now()
	for k, t := range c.tokens {
		if !now.Before(t.expires) {
			delete(c.tokens, k)
		}
	}
	if len(c.tokens) < maxTokens {
		return
	}
	keys := slices.Collect(maps.Keys(c.tokens))
	slices.SortFunc(keys, func(a, b string) int { return c.tokens[a].expires.Compare(c.tokens[b].expires) })
	for _, k := range keys[:len(keys)-maxTokens*3/4] {
		delete(c.tokens, k)
	}
}

func (c *tokenCache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.tokens)
}

// jwtExpiry reads the exp claim of a JWT without verifying it: the token is
// only ever sent back to the service that issued it, so a wrong value costs
// one extra round trip at most.
func jwtExpiry(token string) (time.Time, bool) {
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return time.Time{}, false
	}
	payload, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(parts[1], "="))
	if err != nil {
		return time.Time{}, false
	}
	var claims struct {
		Exp int64 `json:"exp"`
	}
	if json.Unmarshal(payload, &claims) != nil || claims.Exp == 0 {
		return time.Time{}, false
	}
	return time.Unix(claims.Exp, 0), true
}
