// Package upstream is the client Wharf uses to read from remote registries:
// the token dance (through oras-go's auth client), timeouts, error decoding
// and request metrics. It imports no other Wharf package.
package upstream

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"
	"time"

	v2 "github.com/distribution/distribution/v3/registry/api/v2"
	"github.com/distribution/reference"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sync/semaphore"
	"oras.land/oras-go/v2/registry/remote/auth"

	"github.com/wharf-registry/wharf/oci"
)

// Config describes one remote registry.
type Config struct {
	Name                  string // label for metrics and logs
	URL                   string // scheme://host[:port], no path or credentials
	Username, Password    string
	Insecure              bool // allow http and skip TLS verification
	DialTimeout           time.Duration
	ResponseHeaderTimeout time.Duration
	IdleTimeout           time.Duration // longest silence inside a body
	MaxConcurrent         int           // requests in flight at once, bodies included; default 32
	// WaitTimeout bounds how long a request waits for one of the
	// MaxConcurrent slots; past it, it fails as 503 with a Retry-After
	// (default 5s), so a client is told to come back rather than hang.
	WaitTimeout time.Duration
	ChunkSize   int64 // pushes: larger blobs go in chunks of this size; default DefaultChunkSize
	// Push marks a push target: its checks ask for push access too, as
	// docker push does, so that one token serves the checks and the pushes
	// that follow them.
	Push      bool
	UserAgent string
	// CAFile adds a CA to the system's for this registry and the hosts it
	// redirects to: an internal CA is trusted without turning verification off.
	CAFile string
	// CertFile and KeyFile are a client certificate for registries that
	// require mutual TLS.
	CertFile, KeyFile string
	// TokenRealms are origins (https://auth.example.com) of token services
	// that may receive the credentials although they are on another site
	// than the registry: by default only the registry's own host and its
	// registrable domain may (auth.docker.io for registry-1.docker.io).
	TokenRealms []string
	Logger      *slog.Logger // refused requests are logged here; nil: slog.Default()

	dial    func(ctx context.Context, network, addr string) (net.Conn, error) // tests: record dials
	resolve func(ctx context.Context, host string) ([]net.IPAddr, error)      // tests: answer lookups
}

// Client reads from one remote registry. It is safe for concurrent use and
// holds one connection pool and one token cache for every repository.
type Client struct {
	name    string
	base    *url.URL
	urls    *v2.URLBuilder
	hc      *auth.Client
	slots   *semaphore.Weighted // one per request in flight, held until its body is closed
	wait    time.Duration       // longest wait for a slot
	breaker *breaker
	metrics *Metrics

	chunkSize int64
	push      bool // a push target: see Config.Push

	// What a push target took since start: blobs uploaded or mounted,
	// and manifests put.
	blobsPushed, manifestsPushed atomic.Int64
}

// New builds a client for cfg. It dials nothing until first use.
func New(cfg Config, m *Metrics) (*Client, error) {
	u, err := url.Parse(cfg.URL)
	if err != nil || u.Host == "" || (u.Scheme != "https" && u.Scheme != "http") {
		return nil, fmt.Errorf("upstream %s: url %q must be http(s)://host[:port]", cfg.Name, cfg.URL)
	}
	if u.User != nil {
		return nil, fmt.Errorf("upstream %s: put credentials in username/password, not in the url", cfg.Name)
	}
	if u.Scheme == "http" && !cfg.Insecure {
		return nil, fmt.Errorf("upstream %s: plain http needs insecure: true", cfg.Name)
	}
	u.Path, u.RawQuery, u.Fragment = "", "", ""
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = 5 * time.Second
	}
	if cfg.ResponseHeaderTimeout <= 0 {
		cfg.ResponseHeaderTimeout = 10 * time.Second
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = 30 * time.Second
	}
	if cfg.MaxConcurrent <= 0 {
		cfg.MaxConcurrent = 32
	}
	if cfg.WaitTimeout <= 0 {
		cfg.WaitTimeout = 5 * time.Second
	}
	if cfg.ChunkSize <= 0 {
		cfg.ChunkSize = DefaultChunkSize
	}
	tr, err := newTransport(cfg)
	if err != nil {
		return nil, fmt.Errorf("upstream %s: %w", cfg.Name, err)
	}
	g := newGuard(tr, cfg.Name, u, cfg.Logger, cfg.resolve)
	for _, r := range cfg.TokenRealms {
		ru, err := url.Parse(r)
		if err != nil || ru.Host == "" || (ru.Scheme != "https" && ru.Scheme != "http") || strings.Trim(ru.Path, "/") != "" || ru.User != nil {
			return nil, fmt.Errorf("upstream %s: token_realms: %q: want the realm's origin, like https://auth.example.com", cfg.Name, r)
		}
		g.realms = append(g.realms, origin(ru))
	}
	hc := &auth.Client{
		Client: &http.Client{Transport: traced{newChallenges(g), cfg.Name}, CheckRedirect: checkRedirect},
		Header: http.Header{"User-Agent": {cmp.Or(cfg.UserAgent, "wharf")}},
		Cache:  newTokenCache(),
	}
	if cfg.Username != "" || cfg.Password != "" {
		hc.Credential = auth.StaticCredential(u.Host, auth.Credential{Username: cfg.Username, Password: cfg.Password})
	}
	if m == nil {
		m = NewMetrics(nil)
	}
	b := newBreaker()
	b.log, b.kind, b.name = cmp.Or(cfg.Logger, slog.Default()), "upstream", cfg.Name
	if cfg.Push {
		b.kind = "target"
	}
	return &Client{name: cfg.Name, base: u, urls: v2.NewURLBuilder(u, false), hc: hc, metrics: m, wait: cfg.WaitTimeout,
		slots: semaphore.NewWeighted(int64(cfg.MaxConcurrent)), breaker: b, chunkSize: cfg.ChunkSize, push: cfg.Push}, nil
}

// Manifest resolves ref (a tag or digest) in repo. With head set only the
// descriptor is fetched and rc is nil; otherwise rc is capped at
// oci.MaxManifestSize+1 bytes so the caller can detect an oversized manifest.
// desc.Digest is upstream's Docker-Content-Digest and may be empty.
func (c *Client) Manifest(ctx context.Context, repo, ref string, head bool) (ocispec.Descriptor, io.ReadCloser, error) {
	named, err := reference.WithName(repo)
	if err != nil {
		return ocispec.Descriptor{}, nil, err
	}
	var r reference.Named
	if d, err := digest.Parse(ref); err == nil {
		r, err = reference.WithDigest(named, d)
		if err != nil {
			return ocispec.Descriptor{}, nil, err
		}
	} else if r, err = reference.WithTag(named, ref); err != nil {
		return ocispec.Descriptor{}, nil, err
	}
	u, err := c.urls.BuildManifestURL(r)
	if err != nil {
		return ocispec.Descriptor{}, nil, err
	}
	method := http.MethodGet
	if head {
		method = http.MethodHead
	}
	resp, err := c.do(ctx, method, repo, u, http.Header{"Accept": {oci.Accept}})
	if err != nil {
		return ocispec.Descriptor{}, nil, err
	}
	desc := describe(resp)
	if head {
		drain(resp.Body)
		return desc, nil, nil
	}
	return desc, limitBody(resp.Body, oci.MaxManifestSize+1), nil
}

// Blob opens the blob dgst of repo from byte offset on (0 for all of it).
// size is the length of what rc yields, or -1 when upstream did not say.
func (c *Client) Blob(ctx context.Context, repo string, dgst digest.Digest, offset int64) (rc io.ReadCloser, size int64, err error) {
	u, err := c.blobURL(repo, dgst)
	if err != nil {
		return nil, 0, err
	}
	hdr := http.Header{}
	if offset > 0 {
		hdr.Set("Range", fmt.Sprintf("bytes=%d-", offset))
	}
	resp, err := c.do(ctx, http.MethodGet, repo, u, hdr)
	if err != nil {
		return nil, 0, err
	}
	if offset > 0 && resp.StatusCode != http.StatusPartialContent {
		resp.Body.Close() // the whole blob: drop the connection rather than read it
		return nil, 0, &Error{Method: http.MethodGet, URL: redact(u), Err: errors.New("upstream ignored the Range request")}
	}
	return resp.Body, resp.ContentLength, nil
}

// StatBlob asks upstream whether repo holds dgst, without downloading it.
func (c *Client) StatBlob(ctx context.Context, repo string, dgst digest.Digest) (ocispec.Descriptor, error) {
	u, err := c.blobURL(repo, dgst)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	resp, err := c.do(ctx, http.MethodHead, repo, u, nil)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	drain(resp.Body)
	desc := describe(resp)
	desc.Digest = dgst
	return desc, nil
}

func (c *Client) blobURL(repo string, dgst digest.Digest) (string, error) {
	named, err := reference.WithName(repo)
	if err != nil {
		return "", err
	}
	can, err := reference.WithDigest(named, dgst)
	if err != nil {
		return "", err
	}
	return c.urls.BuildBlobURL(can)
}

func describe(resp *http.Response) ocispec.Descriptor {
	mt, _, _ := strings.Cut(resp.Header.Get("Content-Type"), ";")
	return ocispec.Descriptor{
		MediaType: strings.TrimSpace(mt),
		Digest:    digest.Digest(resp.Header.Get("Docker-Content-Digest")),
		Size:      resp.ContentLength,
	}
}

// drain reads a little of a body so the connection can be reused, then
// closes it.
func drain(rc io.ReadCloser) {
	io.Copy(io.Discard, io.LimitReader(rc, 64<<10))
	rc.Close()
}

type limitedBody struct {
	io.Reader
	io.Closer
}

func limitBody(rc io.ReadCloser, n int64) io.ReadCloser {
	return limitedBody{Reader: io.LimitReader(rc, n), Closer: rc}
}

// Referrers fetches the referrers list of dgst in repo, optionally filtered
// by artifactType, as upstream's bytes and media type.
func (c *Client) Referrers(ctx context.Context, repo string, dgst digest.Digest, artifactType string) (string, []byte, error) {
	u := c.base.JoinPath("v2", repo, "referrers", dgst.String())
	if artifactType != "" {
		u.RawQuery = url.Values{"artifactType": {artifactType}}.Encode()
	}
	resp, err := c.do(ctx, http.MethodGet, repo, u.String(), http.Header{"Accept": {ocispec.MediaTypeImageIndex}})
	if err != nil {
		return "", nil, err
	}
	defer drain(resp.Body)
	body, err := io.ReadAll(io.LimitReader(resp.Body, oci.MaxManifestSize+1))
	if err != nil {
		return "", nil, &Error{Method: http.MethodGet, URL: redact(u.String()), Err: err}
	}
	if len(body) > oci.MaxManifestSize {
		return "", nil, &Error{Method: http.MethodGet, URL: redact(u.String()), Status: http.StatusBadGateway, Detail: "referrers list exceeds 4 MiB"}
	}
	return describe(resp).MediaType, body, nil
}
