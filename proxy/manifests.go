package proxy

import (
	"bytes"
	"net/http"
	"time"

	"github.com/gorilla/mux"
)

// manifest answers HEAD and GET of a manifest with upstream's exact bytes
// and media type; ServeContent adds Content-Length, Range and If-None-Match.
func (p *proxy) manifest(w http.ResponseWriter, r *http.Request) error {
	ref, err := parseReference(mux.Vars(r)["reference"])
	if err != nil {
		return err
	}
	t, err := p.resolve(w, r)
	if err != nil {
		return err
	}
	desc, body, err := p.cache.Manifest(r.Context(), t.upstream, t.repo, ref)
	if err != nil {
		return err
	}
	h := w.Header()
	h.Set("Content-Type", desc.MediaType)
	h.Set("Docker-Content-Digest", desc.Digest.String())
	h.Set("Etag", `"`+desc.Digest.String()+`"`)
	cw := &recorder{ResponseWriter: w}
	http.ServeContent(cw, r, "", time.Time{}, bytes.NewReader(body))
	p.metrics.served.WithLabelValues(t.upstream, "manifest").Add(float64(cw.bytes))
	return nil
}
