// Package cluster lets replicas of Wharf fetch each blob from upstream once
// for the whole fleet: every digest has one owner among the peers
// (rendezvous hashing), and a replica that misses a blob asks the owner,
// which fills it once and streams it to every replica asking. Peer
// requests are signed with a shared secret. This package knows peers, ownership and
// the peer request; it knows nothing of caches or HTTP routes.
package cluster

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"
)

// BlobPath is the peer route a replica serves blobs to its peers on.
const BlobPath = "/internal/v1/blobs/"

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
	// resolve looks DNS up; tests replace it.
	resolve func(ctx context.Context, host string) ([]string, error)
}

// Cluster is one replica's view of the fleet. Safe for concurrent use.
type Cluster struct {
	cfg    Config
	client *http.Client
	self   string // host:port of Advertise: what requests for this replica are signed for

	mu    sync.Mutex
	peers []string

	stop chan struct{}
	done chan struct{}

	now func() time.Time // the clock signatures are checked against; tests move it
}

// peerSignatureLife is how long a signed peer request stands, either way
// of the clock (replicas' clocks drift apart by seconds, not minutes): a
// request read off the pod network can be replayed that long, for the
// same blob at the same offset only.
const peerSignatureLife = 5 * time.Minute

// peerScheme names the Authorization of a peer request:
// "Wharf-Peer t=<unix seconds>,sig=<hex HMAC-SHA256>".
const peerScheme = "Wharf-Peer "

// signature is the HMAC of a peer request: the peer it is for, its
// method, path and query, Range, and when it was signed.
func (c *Cluster) signature(host, method, uri, rng string, t int64) []byte {
	m := hmac.New(sha256.New, []byte(c.cfg.Secret))
	fmt.Fprintf(m, "%s\n%s\n%s\n%s\n%d", strings.ToLower(host), method, uri, rng, t)
	return m.Sum(nil)
}

// sign sets req's Authorization: the peers talk plain HTTP, so the
// secret itself never goes on the wire.
func (c *Cluster) sign(req *http.Request) {
	t := c.now().Unix()
	sig := c.signature(req.URL.Host, req.Method, req.URL.RequestURI(), req.Header.Get("Range"), t)
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
	c := &Cluster{cfg: cfg, client: cfg.Client, self: self.Host, stop: make(chan struct{}), done: make(chan struct{}), now: time.Now}
	if c.client == nil {
		c.client = &http.Client{Transport: &http.Transport{
			DialContext:           (&net.Dialer{Timeout: 2 * time.Second}).DialContext,
			ResponseHeaderTimeout: time.Minute, // the owner may be waiting for upstream
			MaxIdleConnsPerHost:   32,
		}}
	}
	c.setPeers(cfg.Peers)
	if cfg.DNS != "" {
		c.refresh()
		go c.watch()
	} else {
		close(c.done)
	}
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

func (c *Cluster) watch() {
	defer close(c.done)
	t := time.NewTicker(c.cfg.Refresh)
	defer t.Stop()
	for {
		select {
		case <-c.stop:
			return
		case <-t.C:
			c.refresh()
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
	var peers []string
	for _, a := range addrs {
		peers = append(peers, "http://"+net.JoinHostPort(a, port))
	}
	c.setPeers(append(peers, c.cfg.Advertise))
}

func (c *Cluster) setPeers(peers []string) {
	peers = slices.Clone(peers)
	slices.Sort(peers)
	peers = slices.Compact(peers)
	c.mu.Lock()
	c.peers = peers
	c.mu.Unlock()
}

// Peers is the current peer list.
func (c *Cluster) Peers() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.peers)
}

// Owner is the peer that fetches dgst for the fleet, and whether it is
// this replica: the peer scoring highest for the digest (rendezvous
// hashing), so a peer joining or leaving moves only its own share.
func (c *Cluster) Owner(dgst digest.Digest) (peer string, self bool) {
	best, bestScore := "", uint64(0)
	for _, p := range c.Peers() {
		h := sha256.Sum256([]byte(p + "\x00" + dgst.String()))
		if s := binary.BigEndian.Uint64(h[:8]); best == "" || s > bestScore {
			best, bestScore = p, s
		}
	}
	if best == "" {
		return c.cfg.Advertise, true
	}
	return best, best == c.cfg.Advertise
}

// Blob asks peer for blob dgst of repo on upstream up, from offset on: the
// peer fills it once (from the bucket or upstream) and streams it. size is
// what the reader yields, -1 if unknown.
func (c *Cluster) Blob(ctx context.Context, peer, up, repo string, dgst digest.Digest, offset int64) (io.ReadCloser, int64, error) {
	q := url.Values{"upstream": {up}, "repo": {repo}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, peer+BlobPath+dgst.String()+"?"+q.Encode(), nil)
	if err != nil {
		return nil, 0, err
	}
	if offset > 0 {
		req.Header.Set("Range", "bytes="+strconv.FormatInt(offset, 10)+"-")
	}
	c.sign(req)
	resp, err := c.client.Do(req)
	if err != nil {
		return nil, 0, fmt.Errorf("peer %s: %w", peer, err)
	}
	want := http.StatusOK
	if offset > 0 {
		want = http.StatusPartialContent
	}
	if resp.StatusCode != want {
		io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
		resp.Body.Close()
		return nil, 0, &PeerError{Peer: peer, Status: resp.StatusCode}
	}
	return resp.Body, resp.ContentLength, nil
}

// PeerError is a peer's refusal of a blob request.
type PeerError struct {
	Peer   string
	Status int
}

func (e *PeerError) Error() string { return fmt.Sprintf("peer %s answered %d", e.Peer, e.Status) }

// StatusCode is the peer's HTTP status.
func (e *PeerError) StatusCode() int { return e.Status }

// Authorized reports whether r was signed with the fleet's secret, as it
// is (for this replica by its advertise URL, whatever Host r names; its
// method, path and query, Range), within peerSignatureLife of now: a
// request read off the wire opens nothing else, nor the same blob on
// another replica.
func (c *Cluster) Authorized(r *http.Request) bool {
	v, ok := strings.CutPrefix(r.Header.Get("Authorization"), peerScheme)
	if !ok {
		return false
	}
	ts, sig, ok := strings.Cut(v, ",sig=")
	ts, ok2 := strings.CutPrefix(ts, "t=")
	t, err := strconv.ParseInt(ts, 10, 64)
	got, herr := hex.DecodeString(sig)
	if !ok || !ok2 || err != nil || herr != nil {
		return false
	}
	if age := c.now().Sub(time.Unix(t, 0)); age > peerSignatureLife || age < -peerSignatureLife {
		return false
	}
	return hmac.Equal(got, c.signature(c.self, r.Method, r.URL.RequestURI(), r.Header.Get("Range"), t))
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
