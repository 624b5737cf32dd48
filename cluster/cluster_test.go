package cluster

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
)

// Every replica computes the same owner for a digest; owners spread over
// the peers; a peer leaving moves only the digests it owned.
func TestOwnersAreSharedAndStable(t *testing.T) {
	peers := []string{"http://a:5000", "http://b:5000", "http://c:5000"}
	views := map[string]*Cluster{}
	for _, p := range peers {
		c, err := New(Config{Peers: peers, Advertise: p, Secret: "0123456789abcdef", ProbeEvery: -1})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(c.Close)
		views[p] = c
	}
	less, err := New(Config{Peers: peers[:2], Advertise: peers[0], Secret: "0123456789abcdef", ProbeEvery: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(less.Close)
	owned := map[string]int{}
	for i := range 3000 {
		d := digest.FromString(fmt.Sprint(i))
		owner, _ := views[peers[0]].Owner(d)
		for p, v := range views {
			o, self := v.Owner(d)
			if o != owner || self != (o == p) {
				t.Fatalf("%s: replica %s says %s (self %v), replica a says %s", d, p, o, self, owner)
			}
		}
		owned[owner]++
		if o, _ := less.Owner(d); owner != peers[2] && o != owner {
			t.Fatalf("%s moved from %s to %s though its owner stayed", d, owner, o)
		}
	}
	for _, p := range peers {
		if owned[p] < 800 {
			t.Fatalf("ownership is lopsided: %v", owned)
		}
	}
}

// The peers behind a headless Service are its addresses plus this
// replica; a failed lookup keeps the last good list.
func TestPeersFromDNS(t *testing.T) {
	answers := [][]string{{"10.0.0.2", "10.0.0.1"}, nil}
	c, err := New(Config{DNS: "wharf-headless:5000", Advertise: "http://10.0.0.1:5000", Secret: "0123456789abcdef", ProbeEvery: -1,
		resolve: func(context.Context, string) ([]string, error) {
			a := answers[0]
			if len(answers) > 1 {
				answers = answers[1:]
			}
			if a == nil {
				return nil, errors.New("no such host")
			}
			return a, nil
		}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	want := "[http://10.0.0.1:5000 http://10.0.0.2:5000]"
	if got := fmt.Sprint(c.Peers()); got != want {
		t.Fatalf("peers %s, want %s", got, want)
	}
	c.refresh() // the lookup fails now
	if got := fmt.Sprint(c.Peers()); got != want {
		t.Fatalf("after a failed lookup: %s, want %s", got, want)
	}
}

// A cluster needs a secret, and a peer request proves it knows it without
// carrying it: the peers talk plain HTTP, and what someone on the pod
// network reads off one request asks for that blob, at that offset, for
// a few minutes at most, and for nothing else.
func TestPeerRequestsAreSigned(t *testing.T) {
	if _, err := New(Config{Peers: []string{"http://a"}, Advertise: "http://a"}); err == nil {
		t.Fatal("a cluster without a secret")
	}
	const secret = "0123456789abcdef"
	c, err := New(Config{Peers: []string{"http://a"}, Advertise: "http://a", Secret: secret, ProbeEvery: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	other, err := New(Config{Peers: []string{"http://a"}, Advertise: "http://a", Secret: "another-fleet-secret", ProbeEvery: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()

	// What crosses the wire.
	var seen *http.Request
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen = r.Clone(r.Context())
		w.Write([]byte("blob"))
	}))
	defer srv.Close()
	dgst := digest.FromString("blob")
	rc, _, err := c.Blob(t.Context(), srv.URL, "docker.io", "library/app", dgst, 0)
	if err != nil {
		t.Fatal(err)
	}
	rc.Close()
	dump, _ := httputil.DumpRequest(seen, false)
	if strings.Contains(string(dump), secret) {
		t.Fatalf("the secret crossed the wire:\n%s", dump)
	}
	// The replica it was for, which knows itself by its advertise URL.
	c, err = New(Config{Peers: []string{srv.URL}, Advertise: srv.URL, Secret: secret, ProbeEvery: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if !c.Authorized(seen) {
		t.Fatalf("the fleet refused its own request:\n%s", dump)
	}
	if other.Authorized(seen) {
		t.Fatal("another fleet's replica admitted the request")
	}

	// The captured Authorization replayed on anything else, or later.
	replay := func(method, target, rng string) *http.Request {
		r := httptest.NewRequest(method, target, nil)
		r.Host = seen.Host
		r.Header.Set("Authorization", seen.Header.Get("Authorization"))
		if rng != "" {
			r.Header.Set("Range", rng)
		}
		return r
	}
	uri := seen.URL.RequestURI()
	otherDigest := strings.Replace(uri, dgst.Encoded(), digest.FromString("other").Encoded(), 1)
	otherRepo := strings.Replace(uri, "library%2Fapp", "private%2Fsecrets", 1)
	for name, r := range map[string]*http.Request{
		"another blob":       replay(http.MethodGet, otherDigest, ""),
		"another repository": replay(http.MethodGet, otherRepo, ""),
		"another method":     replay(http.MethodDelete, uri, ""),
		"another offset":     replay(http.MethodGet, uri, "bytes=100-"),
	} {
		if c.Authorized(r) {
			t.Errorf("%s with the captured header was admitted", name)
		}
	}
	if !c.Authorized(replay(http.MethodGet, uri, "")) {
		t.Fatal("the same request again, at once, was refused")
	}
	// Sent to another replica with the Host of the one it was signed for:
	// a replica checks the signature against its own name, never the
	// request's.
	b, err := New(Config{Peers: []string{srv.URL, "http://10.0.0.9:5000"}, Advertise: "http://10.0.0.9:5000", Secret: secret, ProbeEvery: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if b.Authorized(replay(http.MethodGet, uri, "")) {
		t.Fatal("a request signed for one replica was admitted by another under its Host")
	}
	// Relative to the time the signature names (whole seconds), not to
	// the test's clock: a slow machine may take seconds to get here.
	v := strings.TrimPrefix(seen.Header.Get("Authorization"), "Wharf-Peer t=")
	unix, err := strconv.ParseInt(v[:strings.Index(v, ",")], 10, 64)
	if err != nil {
		t.Fatalf("Authorization %q", seen.Header.Get("Authorization"))
	}
	signed := time.Unix(unix, 0)
	c.now = func() time.Time { return signed.Add(peerSignatureLife + 2*time.Second) }
	if c.Authorized(replay(http.MethodGet, uri, "")) {
		t.Fatal("the captured request was admitted after its signature's life")
	}
	c.now = func() time.Time { return signed.Add(-peerSignatureLife - 2*time.Second) }
	if c.Authorized(replay(http.MethodGet, uri, "")) {
		t.Fatal("a request signed in the future beyond the clock skew allowed was admitted")
	}

	// Neither the secret itself nor anything malformed passes.
	for _, authz := range []string{"Bearer " + secret, "", secret, "Wharf-Peer", "Wharf-Peer t=1,sig=00", "Wharf-Peer t=x,sig=zz"} {
		r := httptest.NewRequest(http.MethodGet, uri, nil)
		r.Host = seen.Host
		r.Header.Set("Authorization", authz)
		if c.Authorized(r) {
			t.Errorf("Authorization %q was admitted", authz)
		}
	}
}

// On an IPv6 cluster "http://${POD_IP}:5000" comes out with the address
// bare; it is the same replica as DNS's bracketed answer, not another.
func TestIPv6PodAddress(t *testing.T) {
	c, err := New(Config{DNS: "wharf-headless:5000", Advertise: "http://fd00::1:5000", Secret: "0123456789abcdef", ProbeEvery: -1,
		resolve: func(context.Context, string) ([]string, error) { return []string{"fd00::2", "fd00::1"}, nil }})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got, want := fmt.Sprint(c.Peers()), "[http://[fd00::1]:5000 http://[fd00::2]:5000]"; got != want {
		t.Fatalf("peers %s, want %s", got, want)
	}
	selfOwned := 0
	for i := range 64 {
		peer, self := c.Owner(digest.FromString(fmt.Sprint(i)))
		if self != (peer == "http://[fd00::1]:5000") {
			t.Fatalf("owner %s, self %v", peer, self)
		}
		if self {
			selfOwned++
		}
	}
	if selfOwned == 0 || selfOwned == 64 {
		t.Fatalf("this replica owns %d of 64 digests", selfOwned)
	}
	for _, keep := range []string{"http://[fd00::1]:5000", "http://10.0.0.1:5000", "http://wharf-0.wharf:5000", "http://fd00::1"} {
		if got := Canonical(keep); got != keep {
			t.Errorf("Canonical(%q) = %q", keep, got)
		}
	}
}
