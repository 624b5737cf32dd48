package api

import (
	"bytes"
	"embed"
	"html/template"
	"io/fs"
	"net/http"
	"path"
	"strings"
	"time"

	"github.com/distribution/distribution/v3/registry/api/errcode"

	"github.com/wharf-registry/wharf/auth"
	"github.com/wharf-registry/wharf/httpx"
)

// The status page under /ui/: a page and a script, embedded, that read
// /api/v1 as the signed-in user. It shows nothing the API would not
// show that user, because it is the API that answers.

//go:embed ui
var uiFiles embed.FS

var uiPage = template.Must(template.ParseFS(uiFiles, "ui/index.html"))

// uiHeaders keep the page to its own files: no inline script, no frame
// around it on another site's page (clickjacking), no type guessing.
var uiHeaders = map[string]string{
	"Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
	"X-Frame-Options":         "DENY",
	"X-Content-Type-Options":  "nosniff",
	"Referrer-Policy":         "no-referrer",
	"Cache-Control":           "no-cache",
}

// ui serves the page and its files. An anonymous caller where users or a
// token exist is asked to log in (a browser then prompts for Basic
// credentials, sent with every call the page makes); one where they do
// not is let in only as the API lets it in (loopback).
func (a *api) ui(w http.ResponseWriter, r *http.Request) error {
	id := httpx.Identity(r.Context())
	if httpx.Anonymous(id) && !a.auth.MayAPI(id, auth.RightJobs) {
		if err := a.mayAPI(r, auth.RightJobs); err != nil {
			return err
		}
	}
	for k, v := range uiHeaders {
		w.Header().Set(k, v)
	}
	name := strings.TrimPrefix(r.URL.Path, "/ui/")
	if name == "" || name == "index.html" {
		var buf bytes.Buffer
		data := struct{ Version, Replica string }{a.version, ""}
		if a.fleet != nil {
			data.Replica = a.fleet.Self()
		}
		if err := uiPage.Execute(&buf, data); err != nil {
			return err
		}
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		http.ServeContent(w, r, "index.html", time.Time{}, bytes.NewReader(buf.Bytes()))
		return nil
	}
	b, err := fs.ReadFile(uiFiles, path.Join("ui", path.Clean("/" + name)[1:]))
	if err != nil || name == "index.html" {
		return httpx.OCIError(http.StatusNotFound, errcode.ErrorCodeUnsupported, "no such file on the status page")
	}
	http.ServeContent(w, r, name, time.Time{}, bytes.NewReader(b))
	return nil
}
