// Package cluster makes replicas of Wharf one fleet: every piece of state
// (a blob's digest, a tag, a replication rule) has one owner among the
// live peers (rendezvous hashing), and a replica asks the owner instead
// of upstream, so the fleet fetches each thing once and gives one answer.
// It knows the peers (static or from a headless Service's DNS), which of
// them answer (a signed ping every second, which also measures their
// clocks), ownership, and the signed peer request; it knows nothing of
// caches, jobs or HTTP routes.
package cluster

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/tls"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"
)

// The peer routes: a replica serves these to its peers only.
const (
	// BlobPath serves a blob the replica owns: BlobPath<digest>?upstream=&repo=.
	BlobPath = "/internal/v1/blobs/"
	// TagPath answers what a tag resolves to, for the replica that owns
	// it: TagPath?upstream=&repo=&tag=, GET for the manifest too.
	TagPath = "/internal/v1/tag"
	// TagsPath answers a repository's tag list, for the replica that
	// owns it: TagsPath?upstream=&repo=&max_age_ms=.
	TagsPath = "/internal/v1/tags"
	// ReposPath lists the repositories a replica holds.
	ReposPath = "/internal/v1/repositories"
	// PingPath answers the probes: Pong, 200 when ready, 503 when not.
	PingPath = "/internal/v1/ping"
)

// Config describes this replica's place in the fleet: the cluster: block
// of the configuration file (Check reads the secret), and what tests set.
type Config struct {
	Peers      []string `yaml:"peers"`       // base URLs of every replica, this one included
	DNS        string   `yaml:"dns"`         // or host:port of a headless Service, resolved every Refresh
	Advertise  string   `yaml:"advertise"`   // this replica's own base URL, as the others know it
	SecretFile string   `yaml:"secret_file"` // holds Secret, 16+ characters
	// Secret is shared by every replica; it signs every peer request and
	// is never sent.
	Secret  string        `yaml:"-"`
	Refresh time.Duration `yaml:"-"`
	Client  *http.Client  `yaml:"-"` // nil: a client with sane timeouts
	// TLS is the peer client's TLS (peers on https://): nil for the
	// system's roots.
	TLS *tls.Config `yaml:"-"`
	// ProbeEvery is how often each peer is pinged (0: every second;
	// negative: never, every peer is taken as live).
	ProbeEvery time.Duration `yaml:"-"`
	// ProbeTimeout bounds a probe's round trip (0: 2s): a peer that
	// takes longer, twice in a row, is down.
	ProbeTimeout time.Duration         `yaml:"-"`
	Registerer   prometheus.Registerer `yaml:"-"` // per-peer metrics; nil: none
	Logger       *slog.Logger          `yaml:"-"` // nil: slog.Default()
	// resolve looks DNS up, now reads the clock; tests replace them.
	resolve func(ctx context.Context, host string) ([]string, error)
	now     func() time.Time
}

// Cluster is one replica's view of the fleet. Safe for concurrent use.
type Cluster struct {
	cfg    Config
	client *http.Client
	self   string // host:port of Advertise: what requests for this replica are signed for

	mu    sync.Mutex
	peers []string
	state map[string]*peerState // every peer but this one, by base URL
	ready bool                  // this replica's own readiness, told by SetReady

	stop chan struct{}
	done chan struct{}

	now     func() time.Time // the clock signatures are checked against; tests move it
	log     *slog.Logger
	metrics *metrics
	refused refusals // peer requests this replica refused
}

// peerSignatureLife is how long a signed peer request stands, either way
// of the clock (replicas' clocks drift apart by seconds, not minutes): a
// request read off the pod network can be replayed that long, for the
// same blob at the same offset only.
const peerSignatureLife = 5 * time.Minute

// peerScheme names the Authorization of a peer request:
// "Wharf-Peer t=<unix seconds>,sig=<hex HMAC-SHA256>".
const peerScheme = "Wharf-Peer "

// Headers a signature covers besides the method, path, query and Range:
// whom a forwarded API request is for (see Do) and the digest of its body.
const (
	IdentityHeader   = "Wharf-Identity"
	BodyDigestHeader = "Wharf-Body-Digest"
)

// signature is the HMAC of a peer request: the peer it is for, its
// method, path and query, Range, when it was signed and, when it has
// them, the identity it acts for and its body's digest.
// Seal is the fleet's MAC of what one replica leaves in the bucket for
// another (a job's spec): whoever can write to the bucket but does not
// hold the fleet's secret cannot make a replica act on a document.
func (c *Cluster) Seal(kind string, doc []byte) string {
	m := hmac.New(sha256.New, []byte(c.cfg.Secret))
	m.Write([]byte("wharf-seal\x00" + kind + "\x00"))
	m.Write(doc)
	return hex.EncodeToString(m.Sum(nil))
}

func (c *Cluster) signature(host string, r *http.Request, uri string, t int64) []byte {
	m := hmac.New(sha256.New, []byte(c.cfg.Secret))
	fmt.Fprintf(m, "%s\n%s\n%s\n%s\n%d", strings.ToLower(host), r.Method, uri, r.Header.Get("Range"), t)
	for _, h := range []string{IdentityHeader, BodyDigestHeader} {
		if v := r.Header.Get(h); v != "" {
			fmt.Fprintf(m, "\n%s: %s", h, v)
		}
	}
	return m.Sum(nil)
}

// sign sets req's Authorization: the peers may talk plain HTTP, so the
// secret itself never goes on the wire.
func (c *Cluster) sign(req *http.Request) {
	t := c.now().Unix()
	sig := c.signature(req.URL.Host, req, req.URL.RequestURI(), t)
	req.Header.Set("Authorization", peerScheme+"t="+strconv.FormatInt(t, 10)+",sig="+hex.EncodeToString(sig))
}

// New starts watching the peers (DNS only) until Close.
func New(cfg Config) (*Cluster, error) {
	if cfg.Advertise == "" || cfg.Secret == "" {
		return nil, errors.New("cluster: advertise and a secret are required")
	}
	if len(cfg.Peers) == 0 && cfg.DNS == "" {
		return nil, errors.New("cluster: set peers or dns")
	}
	if cfg.Refresh <= 0 {
		cfg.Refresh = 10 * time.Second
	}
	cfg.Advertise = Canonical(cfg.Advertise)
	cfg.Peers = slices.Clone(cfg.Peers)
	for i, p := range cfg.Peers {
		cfg.Peers[i] = Canonical(p)
	}
	if cfg.resolve == nil {
		cfg.resolve = net.DefaultResolver.LookupHost
	}
	self, err := url.Parse(cfg.Advertise)
	if err != nil || self.Host == "" {
		return nil, fmt.Errorf("cluster: advertise %q: want this replica's base URL, like http://10.0.0.5:5000", cfg.Advertise)
	}
	if cfg.ProbeEvery == 0 {
		cfg.ProbeEvery = time.Second
	}
	if cfg.now == nil {
		cfg.now = time.Now
	}
	if cfg.ProbeTimeout <= 0 {
		cfg.ProbeTimeout = 2 * time.Second
	}
	c := &Cluster{cfg: cfg, client: cfg.Client, self: self.Host, stop: make(chan struct{}), done: make(chan struct{}), now: cfg.now,
		state: map[string]*peerState{}, ready: true, log: cfg.Logger}
	if c.log == nil {
		c.log = slog.Default()
	}
	if c.client == nil {
		// No response header timeout: a blob request sets its own (see
		// Blob), and an API call may wait minutes for a job. A peer that
		// stops answering altogether is found by the probes within
		// seconds, and its requests are cancelled then.
		c.client = &http.Client{Transport: &http.Transport{
			DialContext:         (&net.Dialer{Timeout: 2 * time.Second}).DialContext,
			TLSClientConfig:     cfg.TLS,
			TLSHandshakeTimeout: 2 * time.Second,
			MaxIdleConnsPerHost: 32,
		}}
	}
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, err
	}
	c.metrics = m
	c.setPeers(cfg.Peers)
	if cfg.DNS != "" {
		c.refresh()
	}
	go c.watch()
	return c, nil
}

// Close stops the DNS watch.
func (c *Cluster) Close() {
	select {
	case <-c.stop:
	default:
		close(c.stop)
	}
	<-c.done
}

// watch resolves the peers (DNS only) and probes them until Close.
func (c *Cluster) watch() {
	defer close(c.done)
	var probe <-chan time.Time
	if c.cfg.ProbeEvery > 0 {
		pt := time.NewTicker(c.cfg.ProbeEvery)
		defer pt.Stop()
		probe = pt.C
		c.probeAll()
	}
	var refresh <-chan time.Time
	if c.cfg.DNS != "" {
		rt := time.NewTicker(c.cfg.Refresh)
		defer rt.Stop()
		refresh = rt.C
	}
	for {
		select {
		case <-c.stop:
			return
		case <-refresh:
			c.refresh()
		case <-probe:
			c.probeAll()
		}
	}
}

// refresh resolves the headless Service into peers; a failed lookup keeps
// the peers it had.
func (c *Cluster) refresh() {
	host, port, err := net.SplitHostPort(c.cfg.DNS)
	if err != nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	addrs, err := c.cfg.resolve(ctx, host)
	if err != nil || len(addrs) == 0 {
		return
	}
	scheme, _, _ := strings.Cut(c.cfg.Advertise, "://") // the fleet's: every replica is reached as this one is
	var peers []string
	for _, a := range addrs {
		peers = append(peers, scheme+"://"+net.JoinHostPort(a, port))
	}
	c.setPeers(append(peers, c.cfg.Advertise))
}

// setPeers takes a new peer list: peers new to it are taken as live until
// a probe says otherwise, peers gone from it are forgotten.
func (c *Cluster) setPeers(peers []string) {
	peers = slices.Clone(peers)
	slices.Sort(peers)
	peers = slices.Compact(peers)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.peers = peers
	for _, p := range peers {
		if _, ok := c.state[p]; !ok && p != c.cfg.Advertise {
			c.state[p] = newPeerState()
		}
	}
	for p, st := range c.state {
		if !slices.Contains(peers, p) {
			st.markDown()
			delete(c.state, p)
			c.metrics.forget(p)
		}
	}
}

// Peers is the current peer list, this replica included, live or not.
func (c *Cluster) Peers() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.peers)
}

// Self is this replica's base URL, as its peers know it.
func (c *Cluster) Self() string { return c.cfg.Advertise }

// Owner is the peer that fetches dgst for the fleet, and whether it is
// this replica.
func (c *Cluster) Owner(dgst digest.Digest) (peer string, self bool) {
	return c.OwnerOf(dgst.String())
}

// TagOwner is the replica that resolves tag of up/repo for the fleet:
// one upstream check per tag per tag_ttl, and one answer everywhere.
func (c *Cluster) TagOwner(up, repo, tag string) (peer string, self bool) {
	return c.OwnerOf("tag\x00" + up + "/" + repo + ":" + tag)
}

// TagsOwner is the replica that lists the tags of up/repo upstream for
// the fleet.
func (c *Cluster) TagsOwner(up, repo string) (peer string, self bool) {
	return c.OwnerOf("tags\x00" + up + "/" + repo)
}

// OwnerOf is the live peer that owns key (a digest, a tag, a rule's
// name) for the fleet, and whether it is this replica: the peer scoring
// highest for the key (rendezvous hashing), so a peer joining or leaving
// moves only its own share.
func (c *Cluster) OwnerOf(key string) (peer string, self bool) {
	best, bestScore := "", uint64(0)
	for _, p := range c.Live() {
		h := sha256.Sum256([]byte(p + "\x00" + key))
		if s := binary.BigEndian.Uint64(h[:8]); best == "" || s > bestScore {
			best, bestScore = p, s
		}
	}
	if best == "" {
		return c.cfg.Advertise, true
	}
	return best, best == c.cfg.Advertise
}

// Canonical is a peer's base URL written as DNS answers make it. On an
// IPv6 cluster "http://${POD_IP}:5000" comes out with the address bare,
// which no URL allows: its last group can only be the port, and the
// address is put in brackets. Anything else is left as it is.
func Canonical(base string) string {
	scheme, rest, ok := strings.Cut(base, "://")
	if !ok {
		return base
	}
	hostport, path, _ := strings.Cut(rest, "/")
	i := strings.LastIndexByte(hostport, ':')
	if strings.Count(hostport, ":") < 2 || strings.HasPrefix(hostport, "[") {
		return base
	}
	host, port := hostport[:i], hostport[i+1:]
	if net.ParseIP(host) == nil || port == "" || strings.Trim(port, "0123456789") != "" {
		return base
	}
	if path != "" {
		path = "/" + path
	}
	return scheme + "://" + net.JoinHostPort(host, port) + path
}
