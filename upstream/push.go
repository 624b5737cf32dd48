package upstream

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/distribution/reference"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"oras.land/oras-go/v2/registry"
	"oras.land/oras-go/v2/registry/remote/auth"
)

// Pushing: the write half of the distribution API, used to promote cached
// images to a second registry blob for blob. Bodies are streamed from the
// caller's reader and never buffered; a blob larger than the chunk size is
// sent in PATCH chunks, so a broken connection costs one chunk, not the
// whole blob.

// DefaultChunkSize is the chunk size of chunked uploads, and the size up to
// which a blob is sent in one PUT.
const DefaultChunkSize = 64 << 20

// maxResumes bounds how often one chunked upload picks up after a failed
// chunk.
const maxResumes = 3

// pushContext asks the token service for push access to repo and, for a
// mount, pull access to from.
func (c *Client) pushContext(ctx context.Context, repo, from string) context.Context {
	ctx = auth.AppendRepositoryScope(ctx, registry.Reference{Registry: c.base.Host, Repository: repo}, auth.ActionPull, auth.ActionPush)
	if from != "" {
		ctx = auth.AppendRepositoryScope(ctx, registry.Reference{Registry: c.base.Host, Repository: from}, auth.ActionPull)
	}
	return ctx
}

// PushBlob puts desc into repo. With from set it first asks the registry to
// mount the blob from that repository (mounted reports whether it did);
// otherwise, or when the registry declines, the blob is uploaded from
// open(offset), which must yield the blob's bytes from offset on.
func (c *Client) PushBlob(ctx context.Context, repo string, desc ocispec.Descriptor, from string, open func(offset int64) (io.ReadCloser, error)) (mounted bool, err error) {
	named, err := reference.WithName(repo)
	if err != nil {
		return false, err
	}
	q := url.Values{}
	if from != "" {
		q.Set("mount", desc.Digest.String())
		q.Set("from", from)
	}
	raw, err := c.urls.BuildBlobUploadURL(named, q)
	if err != nil {
		return false, err
	}
	start, err := url.Parse(raw)
	if err != nil {
		return false, err
	}
	ctx = c.pushContext(ctx, repo, from)
	resp, err := c.request(ctx, repo, http.MethodPost, start, nil, 0, nil)
	if err != nil {
		return false, err
	}
	drain(resp.Body)
	if resp.StatusCode == http.StatusCreated {
		c.blobsPushed.Add(1)
		return true, nil
	}
	loc, err := location(resp)
	if err != nil {
		return false, err
	}
	if desc.Size <= c.chunkSize {
		var rc io.ReadCloser
		if rc, err = open(0); err != nil {
			return false, err
		}
		defer rc.Close()
		resp, err = c.request(ctx, repo, http.MethodPut, withDigest(loc, desc.Digest), rc, desc.Size, octetStream)
		if err != nil {
			return false, err
		}
		drain(resp.Body)
		err = checkDigest(resp, desc.Digest)
	} else {
		err = c.uploadChunks(ctx, repo, loc, desc, open)
	}
	if err == nil {
		c.blobsPushed.Add(1)
	}
	return false, err
}

var octetStream = http.Header{"Content-Type": {"application/octet-stream"}}

// uploadChunks sends desc in PATCH chunks to the upload session at loc,
// then closes the session with its digest. A failed chunk is resumed from
// the offset the registry says it holds.
func (c *Client) uploadChunks(ctx context.Context, repo string, loc *url.URL, desc ocispec.Descriptor, open func(int64) (io.ReadCloser, error)) error {
	var (
		offset  int64
		rc      io.ReadCloser
		resumes int
	)
	defer func() {
		if rc != nil {
			rc.Close()
		}
	}()
	for offset < desc.Size {
		if rc == nil {
			var err error
			if rc, err = open(offset); err != nil {
				return err
			}
		}
		n := min(c.chunkSize, desc.Size-offset)
		hdr := http.Header{
			"Content-Type":  {"application/octet-stream"},
			"Content-Range": {fmt.Sprintf("%d-%d", offset, offset+n-1)},
		}
		resp, err := c.request(ctx, repo, http.MethodPatch, loc, io.LimitReader(rc, n), n, hdr)
		if err == nil {
			drain(resp.Body)
			if loc, err = location(resp); err != nil {
				return err
			}
			offset += n
			continue
		}
		// The chunk failed: ask how much the registry holds and go on
		// from there with a fresh reader.
		rc.Close()
		rc = nil
		if resumes++; resumes > maxResumes || ctx.Err() != nil {
			return err
		}
		held, next, serr := c.uploadStatus(ctx, repo, loc)
		if serr != nil {
			return errors.Join(err, serr)
		}
		offset, loc = held, next
	}
	resp, err := c.request(ctx, repo, http.MethodPut, withDigest(loc, desc.Digest), nil, 0, nil)
	if err != nil {
		return err
	}
	drain(resp.Body)
	return checkDigest(resp, desc.Digest)
}

// uploadStatus asks an upload session how many bytes it holds.
func (c *Client) uploadStatus(ctx context.Context, repo string, loc *url.URL) (int64, *url.URL, error) {
	resp, err := c.request(ctx, repo, http.MethodGet, loc, nil, 0, nil)
	if err != nil {
		return 0, nil, err
	}
	drain(resp.Body)
	next, err := location(resp)
	if err != nil {
		return 0, nil, err
	}
	r := resp.Header.Get("Range") // "0-<last byte>", absent when empty
	if r == "" {
		return 0, next, nil
	}
	_, end, ok := strings.Cut(r, "-")
	last, perr := strconv.ParseInt(end, 10, 64)
	if !ok || perr != nil || last < -1 {
		return 0, nil, &Error{Method: http.MethodGet, URL: redact(loc.String()), Err: fmt.Errorf("upload status has a bad Range %q", r)}
	}
	return last + 1, next, nil
}

// PushManifest puts a manifest's exact bytes into repo under ref, a tag or
// its digest, and checks the registry stored it under the same digest.
func (c *Client) PushManifest(ctx context.Context, repo, ref, mediaType string, body []byte) error {
	u := c.base.JoinPath("v2", repo, "manifests", ref)
	ctx = c.pushContext(ctx, repo, "")
	resp, err := c.request(ctx, repo, http.MethodPut, u, bytes.NewReader(body), int64(len(body)), http.Header{"Content-Type": {mediaType}})
	if err != nil {
		return err
	}
	drain(resp.Body)
	if err := checkDigest(resp, digest.FromBytes(body)); err != nil {
		return err
	}
	c.manifestsPushed.Add(1)
	return nil
}

// request sends one push request to repo with an optional body of size bytes.
func (c *Client) request(ctx context.Context, repo, method string, u *url.URL, body io.Reader, size int64, hdr http.Header) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, method, u.String(), body)
	if err != nil {
		return nil, err
	}
	req.ContentLength = size
	if body == nil || size == 0 {
		req.Body, req.GetBody, req.ContentLength = http.NoBody, nil, 0
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	return c.send(req, repo)
}

// location is the upload session URL a registry answered with, resolved
// against the request.
func location(resp *http.Response) (*url.URL, error) {
	loc, err := resp.Location()
	if err != nil {
		return nil, &Error{Method: resp.Request.Method, URL: redact(resp.Request.URL.String()), Status: resp.StatusCode, Detail: "no upload Location in the answer"}
	}
	return loc, nil
}

func withDigest(loc *url.URL, dgst digest.Digest) *url.URL {
	u := *loc
	q := u.Query()
	q.Set("digest", dgst.String())
	u.RawQuery = q.Encode()
	return &u
}

// checkDigest refuses an answer whose Docker-Content-Digest names other
// content than was sent.
func checkDigest(resp *http.Response, want digest.Digest) error {
	if got := resp.Header.Get("Docker-Content-Digest"); got != "" && got != want.String() {
		return &Error{Method: resp.Request.Method, URL: redact(resp.Request.URL.String()), Status: resp.StatusCode,
			Detail: fmt.Sprintf("registry stored %s, sent %s", got, want)}
	}
	return nil
}

// CheckPush asks whether Wharf may push to repo, pushing nothing: it opens
// an upload session (what a push does first, with the push scope) and
// cancels it. An error says why not, as a push would fail.
func (c *Client) CheckPush(ctx context.Context, repo string) error {
	named, err := reference.WithName(repo)
	if err != nil {
		return err
	}
	raw, err := c.urls.BuildBlobUploadURL(named, url.Values{})
	if err != nil {
		return err
	}
	start, err := url.Parse(raw)
	if err != nil {
		return err
	}
	ctx = c.pushContext(ctx, repo, "")
	resp, err := c.request(ctx, repo, http.MethodPost, start, nil, 0, nil)
	if err != nil {
		return err
	}
	drain(resp.Body)
	if loc, err := location(resp); err == nil {
		if resp, err := c.request(ctx, repo, http.MethodDelete, loc, nil, 0, nil); err == nil {
			drain(resp.Body)
		}
	}
	return nil
}
