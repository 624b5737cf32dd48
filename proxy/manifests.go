package proxy

import (
	"bytes"
	"net/http"
	"strconv"
	"time"

	"github.com/gorilla/mux"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/wharf-registry/wharf/httpx"
)

// manifest answers HEAD and GET of a manifest with upstream's exact bytes
// and media type; ServeContent adds Content-Length, Range and If-None-Match.
// A HEAD is answered from what describes the manifest: an upstream HEAD
// when it is not cached, never a download.
func (p *proxy) manifest(w http.ResponseWriter, r *http.Request) error {
	ref, err := parseReference(mux.Vars(r)["reference"])
	if err != nil {
		return err
	}
	t, err := p.resolve(w, r)
	if err != nil {
		return err
	}
	if r.Method == http.MethodHead {
		desc, err := p.cache.ManifestHead(r.Context(), t.upstream, t.repo, ref)
		if err != nil {
			return err
		}
		setManifestHeaders(w, desc)
		if inm := r.Header.Get("If-None-Match"); inm != "" && inm == w.Header().Get("Etag") {
			w.WriteHeader(http.StatusNotModified)
			return nil
		}
		w.Header().Set("Content-Length", strconv.FormatInt(desc.Size, 10))
		w.WriteHeader(http.StatusOK)
		return nil
	}
	desc, body, err := p.cache.Manifest(r.Context(), t.upstream, t.repo, ref)
	if err != nil {
		return err
	}
	setManifestHeaders(w, desc)
	bytesOnly(r)
	cw := &httpx.Recorder{ResponseWriter: w, RangeErrors: true, BodySize: int64(len(body))}
	http.ServeContent(cw, r, "", time.Time{}, bytes.NewReader(body))
	p.metrics.served.WithLabelValues(t.upstream, "manifest").Add(float64(cw.Bytes()))
	p.cache.Served(t.upstream, t.repo, cw.Bytes(), true)
	return nil
}

func setManifestHeaders(w http.ResponseWriter, desc ocispec.Descriptor) {
	h := w.Header()
	h.Set("Content-Type", desc.MediaType)
	h.Set("Docker-Content-Digest", desc.Digest.String())
	h.Set("Etag", `"`+desc.Digest.String()+`"`)
}
