package upstreamtest

import (
	"crypto/subtle"
	"encoding/json"
	"net/http"
	"strings"
)

// WithTokenAuth puts the registry behind Harbor's token flow: a request
// without a token is answered 401 with a Bearer challenge whose realm is
// /service/token on the same host, which hands out a token for the user's
// Basic credentials. Basic credentials on /v2 are taken too, as Harbor
// takes them, so the test helpers need no token dance.
func WithTokenAuth(user, pass string) Option {
	return func(o *options) { o.user, o.pass, o.token = user, pass, true }
}

// tokenAuth is the token service and the gate in front of distribution.
type tokenAuth struct {
	next       http.Handler
	user, pass string
}

const issuedToken = "upstreamtest-token"

func (a *tokenAuth) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	u, p, basic := r.BasicAuth()
	okBasic := basic && subtle.ConstantTimeCompare([]byte(u+":"+p), []byte(a.user+":"+a.pass)) == 1
	if r.URL.Path == "/service/token" {
		if !okBasic {
			w.Header().Set("WWW-Authenticate", `Basic realm="harbor"`)
			http.Error(w, `{"errors":[{"code":"UNAUTHORIZED","message":"bad credentials"}]}`, http.StatusUnauthorized)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]any{"token": issuedToken, "expires_in": 1800})
		return
	}
	if okBasic || r.Header.Get("Authorization") == "Bearer "+issuedToken || strings.HasPrefix(r.URL.Path, "/cdn/") {
		a.next.ServeHTTP(w, r)
		return
	}
	scope := ""
	if rest, ok := strings.CutPrefix(r.URL.Path, "/v2/"); ok {
		for _, sep := range []string{"/manifests/", "/blobs/", "/tags/", "/referrers/"} {
			if i := strings.LastIndex(rest, sep); i > 0 {
				scope = `,scope="repository:` + rest[:i] + `:pull,push"`
				break
			}
		}
	}
	w.Header().Set("WWW-Authenticate", `Bearer realm="http://`+r.Host+`/service/token",service="harbor-registry"`+scope)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusUnauthorized)
	w.Write([]byte(`{"errors":[{"code":"UNAUTHORIZED","message":"unauthorized to access repository"}]}`))
}
