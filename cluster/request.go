package cluster

import (
	"bytes"
	"context"
	"crypto/hmac"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"
)

// The peer request: signed with the fleet's secret for the one peer it is
// sent to, cancelled when the probes find that peer gone.

// Blob asks peer for blob dgst of repo on upstream up, from offset on: the
// peer fills it once (from the bucket or upstream) and streams it. size is
// what the reader yields, -1 if unknown.
func (c *Cluster) Blob(ctx context.Context, peer, up, repo string, dgst digest.Digest, offset int64) (io.ReadCloser, int64, error) {
	q := url.Values{"upstream": {up}, "repo": {repo}}
	var hdr http.Header
	if offset > 0 {
		hdr = http.Header{"Range": {"bytes=" + strconv.FormatInt(offset, 10) + "-"}}
	}
	resp, err := c.do(ctx, blobHeaderTimeout, peer, http.MethodGet, BlobPath+dgst.String()+"?"+q.Encode(), hdr, nil)
	if err != nil {
		return nil, 0, err
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

// Tag asks peer, the tag's owner, what tag of repo on upstream up
// resolves to (with head, without the manifest): the answer as the peer
// gave it, for the cache to read (see proxy's peerTag).
func (c *Cluster) Tag(ctx context.Context, peer, up, repo, tag string, head bool) (*http.Response, error) {
	method := http.MethodGet
	if head {
		method = http.MethodHead
	}
	q := url.Values{"upstream": {up}, "repo": {repo}, "tag": {tag}}
	return c.do(ctx, blobHeaderTimeout, peer, method, TagPath+"?"+q.Encode(), nil, nil)
}

// Tags asks peer, the repository's owner, for the tags of repo on
// upstream up, in a list no older than maxAge: the answer as the peer gave
// it (see proxy's peerTags).
func (c *Cluster) Tags(ctx context.Context, peer, up, repo string, maxAge time.Duration) (*http.Response, error) {
	q := url.Values{"upstream": {up}, "repo": {repo}, "max_age_ms": {strconv.FormatInt(maxAge.Milliseconds(), 10)}}
	return c.do(ctx, blobHeaderTimeout, peer, http.MethodGet, TagsPath+"?"+q.Encode(), nil, nil)
}

// Repositories asks peer for the repositories it holds: its answer, a
// JSON list (see proxy's peerRepositories).
func (c *Cluster) Repositories(ctx context.Context, peer string) (*http.Response, error) {
	return c.do(ctx, blobHeaderTimeout, peer, http.MethodGet, ReposPath, nil, nil)
}

// Do sends peer a request signed for it: uri is a path with its query,
// hdr may carry Range and IdentityHeader (both signed), and a body's
// digest is signed too (see ReadBody). The request is cancelled when the
// probes find the peer gone; its body's Close releases it. A peer that
// cannot be reached counts against it as a failed probe would.
func (c *Cluster) Do(ctx context.Context, peer, method, uri string, hdr http.Header, body []byte) (*http.Response, error) {
	return c.do(ctx, 0, peer, method, uri, hdr, body)
}

// blobHeaderTimeout bounds the wait for a blob's owner to start its
// answer: the owner may be waiting for upstream's, which upstream's
// response_header_timeout bounds.
const blobHeaderTimeout = 40 * time.Second

// do is Do, given up when no answer begins within headerTimeout (0: no
// bound but the peer's liveness and ctx).
func (c *Cluster) do(ctx context.Context, headerTimeout time.Duration, peer, method, uri string, hdr http.Header, body []byte) (*http.Response, error) {
	ctx, cancel := context.WithCancel(ctx)
	stop := func() bool { return true }
	if down := c.peerDown(peer); down != nil {
		stop = context.AfterFunc(down, cancel)
	}
	release := func() { stop(); cancel() }
	if headerTimeout > 0 {
		t := time.AfterFunc(headerTimeout, cancel)
		defer t.Stop()
	}
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, peer+uri, rd)
	if err != nil {
		release()
		return nil, err
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	if body != nil {
		req.Header.Set(BodyDigestHeader, digest.FromBytes(body).String())
	}
	c.sign(req)
	resp, err := c.client.Do(req)
	if err != nil {
		if ctx.Err() == nil { // not the caller leaving, nor the probes' verdict
			c.failed(peer, err)
		}
		release()
		return nil, fmt.Errorf("peer %s: %w", peer, err)
	}
	resp.Body = releaseOnClose{resp.Body, release}
	return resp, nil
}

// releaseOnClose ends a peer request's context with its body.
type releaseOnClose struct {
	io.ReadCloser
	release func()
}

func (r releaseOnClose) Close() error {
	err := r.ReadCloser.Close()
	r.release()
	return err
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
// method, path and query, Range, identity and body digest), within
// peerSignatureLife of now: a request read off the wire opens nothing
// else, nor the same blob on another replica. A request that claims to
// be a peer's and is not is counted, and shown by Problems.
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
		c.refuse(r, "malformed")
		return false
	}
	if age := c.now().Sub(time.Unix(t, 0)); age > peerSignatureLife || age < -peerSignatureLife {
		c.refuse(r, "clock")
		return false
	}
	if !hmac.Equal(got, c.signature(c.self, r, r.URL.RequestURI(), t)) {
		c.refuse(r, "signature")
		return false
	}
	return true
}

// ReadBody reads the body of an Authorized request, at most max bytes,
// and checks it against the digest its signature covers.
func ReadBody(r *http.Request, max int64) ([]byte, error) {
	want, err := digest.Parse(r.Header.Get(BodyDigestHeader))
	if err != nil {
		return nil, errors.New("a peer request's body must come with its signed digest")
	}
	b, err := io.ReadAll(io.LimitReader(r.Body, max+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > max {
		return nil, fmt.Errorf("a peer request's body is larger than %d bytes", max)
	}
	if want.Algorithm().FromBytes(b) != want {
		return nil, errors.New("a peer request's body does not match its signed digest")
	}
	return b, nil
}
