package proxy

import (
	"errors"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/gorilla/mux"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/wharf-registry/wharf/cache"
	"github.com/wharf-registry/wharf/httpx"
)

// blob answers HEAD from the index (or an upstream HEAD, never a download)
// and GET from the store or a fill in progress, Range included.
func (p *proxy) blob(w http.ResponseWriter, r *http.Request) error {
	dgst, err := parseDigest(mux.Vars(r)["digest"])
	if err != nil {
		return err
	}
	t, err := p.resolve(w, r)
	if err != nil {
		return err
	}
	if r.Method == http.MethodHead {
		desc, err := p.cache.StatBlob(r.Context(), t.upstream, t.repo, dgst)
		if err != nil {
			return err
		}
		setBlobHeaders(w, desc)
		if desc.Size >= 0 {
			w.Header().Set("Content-Length", strconv.FormatInt(desc.Size, 10))
		}
		w.WriteHeader(http.StatusOK)
		return nil
	}
	if url, err := p.cache.RedirectURL(r.Context(), t.upstream, t.repo, dgst); err != nil {
		return err
	} else if url != "" {
		w.Header().Set("Docker-Content-Digest", dgst.String())
		http.Redirect(w, r, url, http.StatusTemporaryRedirect)
		return nil
	}
	return p.serveBlob(w, r, t.upstream, t.repo, dgst)
}

// serveBlob answers a GET of blob dgst of repo on upstream up from the
// store or a fill, Range included.
func (p *proxy) serveBlob(w http.ResponseWriter, r *http.Request, up, repo string, dgst digest.Digest) error {
	b, err := p.cache.Blob(r.Context(), up, repo, dgst)
	if err != nil {
		return err
	}
	defer b.Close()
	if b.Descriptor.Size < 0 {
		// Upstream sent no length: the blob's is known once its fill
		// ends, verified or not. http.ServeContent would answer a
		// failure there with a plain-text 500; this is the client's
		// OCI error.
		if b.Descriptor.Size, err = b.Seek(0, io.SeekEnd); err != nil {
			return err
		}
		if _, err := b.Seek(0, io.SeekStart); err != nil {
			return err
		}
	}
	setBlobHeaders(w, b.Descriptor)
	bytesOnly(r)
	cw := &httpx.Recorder{ResponseWriter: w, RangeErrors: true, BodySize: b.Descriptor.Size}
	content := &catchingReader{ReadSeeker: b}
	if f, ok := b.ReadSeekCloser.(*os.File); ok {
		http.ServeContent(cw, r, "", time.Time{}, f) // sendfile
	} else {
		http.ServeContent(cw, r, "", time.Time{}, content)
	}
	p.metrics.served.WithLabelValues(up, "blob").Add(float64(cw.Bytes()))
	if !cache.IsForPeer(r.Context()) {
		p.cache.Served(up, repo, cw.Bytes(), false)
	}
	if content.err != nil && cw.Status() != 0 {
		// The blob failed to verify or the fill broke mid-stream: cut the
		// connection so the client sees a broken transfer, never a clean one.
		return content.err
	}
	return nil
}

// bytesOnly leaves r a Range that http.ServeContent reads as RFC 9110
// says: a range unit other than bytes is ignored (the whole blob, 200),
// and the unit is compared without regard to case.
func bytesOnly(r *http.Request) {
	unit, ranges, ok := strings.Cut(r.Header.Get("Range"), "=")
	switch {
	case r.Header.Get("Range") == "":
	case !ok || !strings.EqualFold(strings.TrimSpace(unit), "bytes"):
		r.Header.Del("Range")
	default:
		r.Header.Set("Range", "bytes="+ranges)
	}
}

func setBlobHeaders(w http.ResponseWriter, desc ocispec.Descriptor) {
	h := w.Header()
	mt := desc.MediaType
	if mt == "" {
		mt = "application/octet-stream"
	}
	h.Set("Content-Type", mt)
	h.Set("Docker-Content-Digest", desc.Digest.String())
	h.Set("Etag", `"`+desc.Digest.String()+`"`)
	h.Set("Accept-Ranges", "bytes")
}

// catchingReader remembers the first read error other than EOF, which
// ServeContent would otherwise swallow.
type catchingReader struct {
	io.ReadSeeker
	err error
}

// SendTo passes the sendfile path of the reader beneath through,
// remembering its error as Read does.
func (e *catchingReader) SendTo(dst io.ReaderFrom, n int64) (int64, bool, error) {
	s, ok := e.ReadSeeker.(httpx.Sender)
	if !ok {
		return 0, false, nil
	}
	sent, ok, err := s.SendTo(dst, n)
	if err != nil && e.err == nil {
		e.err = err
	}
	return sent, ok, err
}

func (e *catchingReader) Read(p []byte) (int, error) {
	n, err := e.ReadSeeker.Read(p)
	if err != nil && !errors.Is(err, io.EOF) && e.err == nil {
		e.err = err
	}
	return n, err
}
