package main

import (
	"net/http"
	"strings"

	"github.com/distribution/distribution/v3/registry/api/errcode"
)

// With cluster.listen, the fleet's own traffic (fills for other replicas,
// tags they ask their owner, forwarded API calls, probes) has a port of
// its own and clients have theirs: a request that belongs to the other
// port is refused, so that a NetworkPolicy keeping the peer port to the
// fleet's pods is the whole story.

// peerRequest reports whether r is one replica's request to another.
func peerRequest(r *http.Request) bool {
	return strings.HasPrefix(r.URL.Path, "/internal/") || strings.HasPrefix(r.Header.Get("Authorization"), "Wharf-Peer ")
}

// onlyPeers serves h to peer requests and refuses the rest.
func onlyPeers(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !peerRequest(r) {
			errcode.ServeJSON(w, errcode.ErrorCodeDenied.WithMessage("this port serves the fleet's replicas only (cluster.listen); clients use the registry's own address"))
			return
		}
		h.ServeHTTP(w, r)
	})
}

// noPeers serves h to everything but peer requests.
func noPeers(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if peerRequest(r) {
			errcode.ServeJSON(w, errcode.ErrorCodeDenied.WithMessage("peer requests are served on cluster.listen only"))
			return
		}
		h.ServeHTTP(w, r)
	})
}
