package cluster

import (
	"context"
	"errors"
	"net"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"
)

// eventually polls cond, bounded: the probes run on their own clock.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("never: %s", what)
		}
		time.Sleep(10 * time.Millisecond) // polling a condition, bounded
	}
}

// replica is one cluster behind a real listener that serves its pings;
// hang makes every request to it wait until the test ends, as a
// SIGSTOPped process's would.
type replica struct {
	*Cluster
	url  string
	hang chan bool
}

// fleetOf starts a cluster per secret, on loopback, probing each other
// every 20ms; clocks, if given, are theirs.
func fleetOf(t *testing.T, secrets []string, clocks ...func() time.Time) []*replica {
	t.Helper()
	var lns []net.Listener
	var urls []string
	for range secrets {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		lns = append(lns, ln)
		urls = append(urls, "http://"+ln.Addr().String())
	}
	done := make(chan struct{})
	var rs []*replica
	for i, secret := range secrets {
		r := &replica{url: urls[i], hang: make(chan bool, 1)}
		r.hang <- false
		cfg := Config{Peers: urls, Advertise: urls[i], Secret: secret, ProbeEvery: 20 * time.Millisecond, ProbeTimeout: 300 * time.Millisecond}
		if i < len(clocks) {
			cfg.now = clocks[i]
		}
		c, err := New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		r.Cluster = c
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
			h := <-r.hang
			r.hang <- h
			if h {
				select {
				case <-done:
				case <-req.Context().Done():
				}
				return
			}
			if req.URL.Path == PingPath {
				c.ServePing(w, req)
				return
			}
			w.Write([]byte("answer"))
		})}
		go srv.Serve(lns[i])
		t.Cleanup(func() { srv.Close() })
		t.Cleanup(c.Close)
		rs = append(rs, r)
	}
	t.Cleanup(func() { close(done) })
	return rs
}

func (r *replica) setHang(h bool) { <-r.hang; r.hang <- h }

// Live peers own things; a peer that stops answering is down within a
// few probes, its requests in flight are cancelled then, and it owns
// nothing until it answers again; a peer not ready (starting, stopping)
// owns nothing either.
func TestProbesFindPeersGoneAndBack(t *testing.T) {
	fleet := fleetOf(t, []string{"0123456789abcdef", "0123456789abcdef", "0123456789abcdef"})
	a, b, c := fleet[0], fleet[1], fleet[2]
	eventually(t, "every peer live", func() bool { return len(a.Live()) == 3 })
	if got := a.Others(); slices.Contains(got, a.url) || len(got) != 2 {
		t.Fatalf("others %v", got)
	}

	// b hangs: a request to it in flight ends when the probes give up
	// on b, not at a timeout of its own.
	b.setHang(true)
	resp, err := a.Do(t.Context(), b.url, http.MethodGet, "/anything", nil, nil)
	if err == nil {
		resp.Body.Close()
		t.Fatal("a request to a hung peer was answered")
	}
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("a request to a hung peer: %v, want it cancelled", err)
	}
	if live := a.Live(); slices.Contains(live, b.url) {
		t.Fatalf("live %v with b hung", live)
	}
	for i := range 100 {
		if p, _ := a.OwnerOf(string(rune('a' + i))); p == b.url {
			t.Fatal("a hung peer still owns keys")
		}
	}
	if p := strings.Join(a.Problems(), "\n"); !strings.Contains(p, "peer "+b.url+" does not answer") {
		t.Fatalf("problems: %s", p)
	}
	b.setHang(false)
	eventually(t, "b live again", func() bool { return slices.Contains(a.Live(), b.url) })

	// c stops: it says it is not ready, and owns nothing from then on.
	c.SetReady(false)
	eventually(t, "c not an owner", func() bool { return !slices.Contains(a.Live(), c.url) && !slices.Contains(c.Live(), c.url) })
	if p := a.Problems(); len(p) != 0 {
		t.Fatalf("a stopping peer is no problem: %q", p)
	}
}

// Replicas with different secrets, or clocks minutes apart, refuse each
// other: each owns everything itself, and both say why.
func TestProbesFindRefusalsAndSkew(t *testing.T) {
	fleet := fleetOf(t, []string{"0123456789abcdef", "another-secret-0123"})
	a, b := fleet[0], fleet[1]
	eventually(t, "a refused", func() bool { return len(a.Live()) == 1 && len(b.Live()) == 1 })
	p := strings.Join(a.Problems(), "\n")
	if !strings.Contains(p, "peer "+b.url+" refuses this replica's signed requests") ||
		!strings.Contains(p, "peer requests from 127.0.0.1 refused in the last minute (signature)") {
		t.Fatalf("problems: %s", p)
	}

	skewed := fleetOf(t, []string{"0123456789abcdef", "0123456789abcdef"}, time.Now, func() time.Time { return time.Now().Add(2 * time.Minute) })
	a, b = skewed[0], skewed[1]
	eventually(t, "the skew seen", func() bool { return strings.Contains(strings.Join(a.Problems(), "\n"), "clock is 2m0s off") })
	if len(a.Live()) != 2 {
		t.Fatal("2 minutes apart is still one fleet")
	}
}
