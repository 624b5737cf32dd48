package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Which peers are live: each is pinged every ProbeEvery with a signed
// request. A peer that fails downAfter probes in a row (or a request) is
// down: it owns nothing and every request to it is cancelled at once, so
// a hung replica costs the others seconds, not a timeout per blob. A peer
// that answers again is live again. The pong carries the peer's clock
// and readiness: a starting or stopping replica owns nothing, and one
// that refuses this replica's signature (another secret, a clock more
// than 5 minutes off) owns nothing for it either; both are shown by
// Problems, for /healthz.

// Pong is a replica's answer to a probe.
type Pong struct {
	Time  time.Time `json:"time"` // its clock when it answered
	Ready bool      `json:"ready"`
}

const (
	downAfter = 2 // failed probes in a row that make a peer down
	// maxSkew is the clock difference Problems reports: well before
	// peerSignatureLife, where peer requests start to fail.
	maxSkew = 30 * time.Second
)

// peerState is what the probes know of one peer; Cluster.mu guards it.
type peerState struct {
	live     bool // answering probes (until downAfter fail)
	fails    int
	lastErr  string
	refused  bool // answered 401: it refuses this replica's signature
	notReady bool // answered 503: starting or stopping
	skew     time.Duration
	ctx      context.Context // cancelled when the peer goes down
	cancel   context.CancelFunc
}

func newPeerState() *peerState {
	ctx, cancel := context.WithCancel(context.Background())
	return &peerState{live: true, ctx: ctx, cancel: cancel}
}

func (st *peerState) markDown() { st.live = false; st.cancel() }

// serves reports whether the peer owns anything for this replica.
func (st *peerState) serves() bool { return st.live && !st.refused && !st.notReady }

// peerDown is a context that ends when peer goes down; nil for this
// replica and peers it does not know.
func (c *Cluster) peerDown(peer string) context.Context {
	c.mu.Lock()
	defer c.mu.Unlock()
	if st, ok := c.state[peer]; ok {
		return st.ctx
	}
	return nil
}

// Live is the peers that own things now: this replica while it is ready,
// and every other that answers, is ready and admits this one's requests.
func (c *Cluster) Live() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	live := make([]string, 0, len(c.peers))
	for _, p := range c.peers {
		if st, ok := c.state[p]; (ok && st.serves()) || (p == c.cfg.Advertise && c.ready) {
			live = append(live, p)
		}
	}
	return live
}

// Others is the live peers but this replica.
func (c *Cluster) Others() []string {
	return slices.DeleteFunc(c.Live(), func(p string) bool { return p == c.cfg.Advertise })
}

// SetReady says whether this replica takes work: a replica owns nothing
// before it has started and once it has begun to stop, and its pong says
// so to the others.
func (c *Cluster) SetReady(ready bool) {
	c.mu.Lock()
	c.ready = ready
	c.mu.Unlock()
}

// ServePing answers a peer's probe: 401 unless it is signed (the pong's
// time still tells the peer how far off its clock is), 503 while this
// replica is not ready.
func (c *Cluster) ServePing(w http.ResponseWriter, r *http.Request) {
	c.mu.Lock()
	pong := Pong{Time: c.now().UTC(), Ready: c.ready}
	c.mu.Unlock()
	status := http.StatusOK
	switch {
	case !c.Authorized(r):
		status = http.StatusUnauthorized
	case !pong.Ready:
		status = http.StatusServiceUnavailable
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(pong)
}

// probeAll pings every peer at once and waits for the answers.
func (c *Cluster) probeAll() {
	c.mu.Lock()
	peers := make([]string, 0, len(c.state))
	for p := range c.state {
		peers = append(peers, p)
	}
	c.mu.Unlock()
	var wg sync.WaitGroup
	for _, p := range peers {
		wg.Go(func() { c.probe(p) })
	}
	wg.Wait()
}

func (c *Cluster) probe(peer string) {
	ctx, cancel := context.WithTimeout(context.Background(), c.cfg.ProbeTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, peer+PingPath, nil)
	if err != nil {
		c.failed(peer, err)
		return
	}
	c.sign(req)
	sent := time.Now()
	resp, err := c.client.Do(req)
	if err != nil {
		c.failed(peer, err)
		return
	}
	defer resp.Body.Close()
	var pong Pong
	derr := json.NewDecoder(io.LimitReader(resp.Body, 4096)).Decode(&pong)
	rtt := time.Since(sent)
	switch {
	case derr != nil || pong.Time.IsZero():
		c.failed(peer, fmt.Errorf("its ping answered %d without a pong: not a Wharf, or one before probes", resp.StatusCode))
	case resp.StatusCode == http.StatusOK, resp.StatusCode == http.StatusUnauthorized, resp.StatusCode == http.StatusServiceUnavailable:
		c.answered(peer, resp.StatusCode, pong.Time.Sub(sent.Add(rtt/2)))
	default:
		c.failed(peer, fmt.Errorf("its ping answered %d", resp.StatusCode))
	}
}

// failed counts a failed probe or request against peer.
func (c *Cluster) failed(peer string, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	st, ok := c.state[peer]
	if !ok {
		return
	}
	st.fails++
	st.lastErr = err.Error()
	c.metrics.probeFailed(peer)
	if st.live && st.fails >= downAfter {
		st.markDown()
		c.metrics.up(peer, false)
		c.log.Warn("peer down: it owns nothing until it answers again", "peer", peer, "error", err)
	}
}

// answered records a probe's answer.
func (c *Cluster) answered(peer string, status int, skew time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	st, ok := c.state[peer]
	if !ok {
		return
	}
	was := st.serves()
	st.fails, st.lastErr, st.skew = 0, "", skew
	if !st.live {
		st.live = true
		st.ctx, st.cancel = context.WithCancel(context.Background())
	}
	refused := status == http.StatusUnauthorized
	if refused && !st.refused {
		c.log.Warn("peer refuses this replica's signed requests: the replicas' cluster.secret_file differ, or their clocks are more than 5 minutes apart; "+
			"it owns nothing for this replica, whose misses go upstream", "peer", peer, "clock_skew", skew.Round(time.Millisecond))
	}
	st.refused, st.notReady = refused, status == http.StatusServiceUnavailable
	if now := st.serves(); now != was {
		c.log.Info("peer state", "peer", peer, "live", now, "ready", !st.notReady)
	}
	c.metrics.up(peer, st.serves())
	c.metrics.skew(peer, skew)
}

// Problems says, one line each, what keeps the fleet from working as one:
// peers down, peers refusing this replica, clocks apart, and requests this
// replica refused lately.
func (c *Cluster) Problems() []string {
	c.mu.Lock()
	var out []string
	for _, p := range c.peers {
		st, ok := c.state[p]
		switch {
		case !ok:
		case !st.live:
			out = append(out, fmt.Sprintf("peer %s does not answer (%s): it owns nothing until it does", p, st.lastErr))
		case st.refused:
			out = append(out, fmt.Sprintf("peer %s refuses this replica's signed requests: cluster.secret_file differs, or the clocks are more than 5m apart (%v)", p, st.skew.Round(time.Second)))
		case st.skew > maxSkew || st.skew < -maxSkew:
			out = append(out, fmt.Sprintf("peer %s's clock is %v off this replica's: signed peer requests fail beyond 5m", p, st.skew.Round(time.Second)))
		}
	}
	c.mu.Unlock()
	return append(out, c.refused.lines(c.now())...)
}

// refusals remembers, by address, peer requests this replica refused in
// the last refusalMemory: a replica with another secret or a skewed
// clock, or someone on the network trying.
type refusals struct {
	mu   sync.Mutex
	from map[string]refusal
}

type refusal struct {
	n    int
	why  string
	last time.Time
}

const (
	refusalMemory = time.Minute
	maxRefusals   = 32 // addresses remembered
)

func (c *Cluster) refuse(r *http.Request, why string) {
	c.metrics.refusedRequest(why)
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	now := c.now()
	f := &c.refused
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.from == nil {
		f.from = map[string]refusal{}
	}
	for a, rf := range f.from {
		if now.Sub(rf.last) > refusalMemory {
			delete(f.from, a)
		}
	}
	if _, ok := f.from[host]; !ok && len(f.from) >= maxRefusals {
		return
	}
	rf := f.from[host]
	f.from[host] = refusal{n: rf.n + 1, why: why, last: now}
}

func (f *refusals) lines(now time.Time) []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for a, rf := range f.from {
		if now.Sub(rf.last) <= refusalMemory {
			out = append(out, fmt.Sprintf("%d peer requests from %s refused in the last minute (%s): a replica with another secret or clock, or not a replica", rf.n, a, rf.why))
		}
	}
	slices.Sort(out)
	return out
}

// metrics are the fleet's, per peer.
type metrics struct {
	peerUp    *prometheus.GaugeVec
	peerSkew  *prometheus.GaugeVec
	probeFail *prometheus.CounterVec
	refusedIn *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		peerUp: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "wharf_peer_up",
			Help: "1 while a peer answers its probes, is ready and admits this replica's signed requests (it owns things); 0 otherwise."}, []string{"peer"}),
		peerSkew: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "wharf_peer_clock_skew_seconds",
			Help: "How far a peer's clock is ahead of this replica's, from its last probe; peer requests fail beyond 300."}, []string{"peer"}),
		probeFail: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "wharf_peer_probe_failures_total",
			Help: "Probes and requests to a peer that got no answer."}, []string{"peer"}),
		refusedIn: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "wharf_peer_requests_refused_total",
			Help: "Requests claiming to be a peer's that this replica refused, by reason: signature (another secret), clock, malformed."}, []string{"reason"}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.peerUp, m.peerSkew, m.probeFail, m.refusedIn} {
			if err := reg.Register(c); err != nil {
				return nil, err
			}
		}
	}
	return m, nil
}

func (m *metrics) up(peer string, up bool) {
	v := 0.0
	if up {
		v = 1
	}
	m.peerUp.WithLabelValues(peer).Set(v)
}

func (m *metrics) skew(peer string, d time.Duration) {
	m.peerSkew.WithLabelValues(peer).Set(d.Seconds())
}
func (m *metrics) probeFailed(peer string)   { m.probeFail.WithLabelValues(peer).Inc() }
func (m *metrics) refusedRequest(why string) { m.refusedIn.WithLabelValues(why).Inc() }

// forget drops a peer gone from the list (a pod replaced under DNS).
func (m *metrics) forget(peer string) {
	m.peerUp.DeleteLabelValues(peer)
	m.peerSkew.DeleteLabelValues(peer)
	m.probeFail.DeleteLabelValues(peer)
}
