package main

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// With cluster.listen, each port serves its own: peer requests only on
// the peer port, everything else only on the client port, refused with a
// JSON error that says where to go.
func TestPeerPortSeparation(t *testing.T) {
	ok := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusTeapot) })
	peers, clients := onlyPeers(ok), noPeers(ok)
	for _, c := range []struct {
		path, authz string
		peer        bool
	}{
		{"/internal/v1/ping", "", true},
		{"/internal/v1/blobs/sha256:00", "Wharf-Peer t=1,sig=00", true},
		{"/api/v1/jobs/x", "Wharf-Peer t=1,sig=00", true},
		{"/api/v1/jobs/x", "Bearer tok", false},
		{"/v2/library/app/manifests/1", "", false},
		{"/healthz", "", false},
	} {
		for _, h := range []struct {
			name  string
			h     http.Handler
			serve bool
		}{{"peer port", peers, c.peer}, {"client port", clients, !c.peer}} {
			r := httptest.NewRequest(http.MethodGet, c.path, nil)
			if c.authz != "" {
				r.Header.Set("Authorization", c.authz)
			}
			w := httptest.NewRecorder()
			h.h.ServeHTTP(w, r)
			switch {
			case h.serve && w.Code != http.StatusTeapot:
				t.Errorf("%s refused %s (%q): %d %s", h.name, c.path, c.authz, w.Code, w.Body)
			case !h.serve && (w.Code != http.StatusForbidden || !strings.Contains(w.Body.String(), `"code":"DENIED"`)):
				t.Errorf("%s served %s (%q): %d %s", h.name, c.path, c.authz, w.Code, w.Body)
			}
		}
	}
}
