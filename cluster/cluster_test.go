package cluster

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"testing"

	"github.com/opencontainers/go-digest"
)

// Every replica computes the same owner for a digest; owners spread over
// the peers; a peer leaving moves only the digests it owned.
func TestOwnersAreSharedAndStable(t *testing.T) {
	peers := []string{"http://a:5000", "http://b:5000", "http://c:5000"}
	views := map[string]*Cluster{}
	for _, p := range peers {
		c, err := New(Config{Peers: peers, Advertise: p, Secret: "0123456789abcdef"})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(c.Close)
		views[p] = c
	}
	less, err := New(Config{Peers: peers[:2], Advertise: peers[0], Secret: "0123456789abcdef"})
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
	c, err := New(Config{DNS: "wharf-headless:5000", Advertise: "http://10.0.0.1:5000", Secret: "0123456789abcdef",
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

// Only the fleet's secret passes, and a cluster needs one.
func TestSecret(t *testing.T) {
	if _, err := New(Config{Peers: []string{"http://a"}, Advertise: "http://a"}); err == nil {
		t.Fatal("a cluster without a secret")
	}
	c, err := New(Config{Peers: []string{"http://a"}, Advertise: "http://a", Secret: "0123456789abcdef"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for authz, want := range map[string]bool{"Bearer 0123456789abcdef": true, "": false, "Bearer 0123456789abcdeF": false, "0123456789abcdef": false} {
		r, _ := http.NewRequest(http.MethodGet, "/", nil)
		r.Header.Set("Authorization", authz)
		if c.Authorized(r) != want {
			t.Errorf("Authorization %q: %v", authz, !want)
		}
	}
}

// On an IPv6 cluster "http://${POD_IP}:5000" comes out with the address
// bare; it is the same replica as DNS's bracketed answer, not another.
func TestIPv6PodAddress(t *testing.T) {
	c, err := New(Config{DNS: "wharf-headless:5000", Advertise: "http://fd00::1:5000", Secret: "0123456789abcdef",
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
