package main

import (
	"bytes"
	"cmp"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/dustin/go-humanize"

	"github.com/wharf-registry/wharf/api"
)

// The client side of the /api/v1 prefetch API: wharf prefetch and wharf jobs.

// listFlag collects a repeated flag.
type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

// apiClient talks to a running Wharf.
type apiClient struct {
	server string
	auth   string // the Authorization header, if any
	hc     *http.Client
}

// clientFlags are how the CLI reaches and logs in to a Wharf.
type clientFlags struct {
	server, tokenFile, user, caFile *string
}

func addClientFlags(fs *flag.FlagSet) clientFlags {
	return clientFlags{
		server:    fs.String("server", defaultServer(), "Wharf's address ($WHARF_SERVER)"),
		tokenFile: fs.String("token-file", "", "file holding the API token (api.token_file on the server)"),
		user:      fs.String("user", "", "log in as this user of the server's htpasswd; the password is read from $WHARF_PASSWORD"),
		caFile:    fs.String("ca-file", "", "trust this CA for an https --server"),
	}
}

func (f clientFlags) client() (*apiClient, error) {
	u, err := url.Parse(*f.server)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("--server %q: want http(s)://host:port", *f.server)
	}
	c := &apiClient{server: strings.TrimRight(*f.server, "/"), hc: &http.Client{}}
	if *f.tokenFile != "" && *f.user != "" {
		return nil, errors.New("--token-file and --user: give one")
	}
	if *f.tokenFile != "" {
		b, err := os.ReadFile(*f.tokenFile)
		if err != nil {
			return nil, fmt.Errorf("--token-file: %w", err)
		}
		c.auth = "Bearer " + strings.TrimSpace(string(b))
	}
	if *f.user != "" {
		pw, ok := os.LookupEnv("WHARF_PASSWORD")
		if !ok {
			return nil, errors.New("--user: set the password in $WHARF_PASSWORD")
		}
		c.auth = "Basic " + base64.StdEncoding.EncodeToString([]byte(*f.user+":"+pw))
	}
	if *f.caFile != "" {
		pem, err := os.ReadFile(*f.caFile)
		if err != nil {
			return nil, fmt.Errorf("--ca-file: %w", err)
		}
		pool, err := x509.SystemCertPool()
		if err != nil {
			pool = x509.NewCertPool()
		}
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("--ca-file %s: no PEM certificate in it", *f.caFile)
		}
		c.hc.Transport = &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}, ForceAttemptHTTP2: true}
	}
	return c, nil
}

// call sends one request and decodes a 2xx JSON answer into out; any other
// answer becomes an error listing the server's OCI errors.
func (c *apiClient) call(ctx context.Context, method, path, contentType string, body []byte, out any) error {
	_, err := c.send(ctx, method, path, contentType, body, out)
	return err
}

// callHeader is call for a GET whose answer's headers matter too.
func (c *apiClient) callHeader(ctx context.Context, method, path string, out any) (http.Header, error) {
	return c.send(ctx, method, path, "", nil, out)
}

func (c *apiClient) send(ctx context.Context, method, path, contentType string, body []byte, out any) (http.Header, error) {
	req, err := http.NewRequestWithContext(ctx, method, c.server+path, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	if c.auth != "" {
		req.Header.Set("Authorization", c.auth)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode/100 != 2 {
		return nil, apiError(resp.StatusCode, raw)
	}
	if out == nil || resp.StatusCode == http.StatusNoContent {
		return resp.Header, nil
	}
	return resp.Header, json.Unmarshal(raw, out)
}

// apiError turns an OCI error document into one readable error, a line per
// problem.
func apiError(status int, raw []byte) error {
	var doc struct {
		Errors []struct {
			Code    string            `json:"code"`
			Message string            `json:"message"`
			Detail  map[string]string `json:"detail"`
		} `json:"errors"`
	}
	if json.Unmarshal(raw, &doc) != nil || len(doc.Errors) == 0 {
		return fmt.Errorf("server answered %d %s", status, http.StatusText(status))
	}
	var lines []string
	for _, e := range doc.Errors {
		line := e.Code + ": " + e.Message
		if item := e.Detail["item"]; item != "" {
			line = item + ": " + line
		}
		lines = append(lines, line)
	}
	if len(lines) == 1 {
		return fmt.Errorf("server answered %d: %s", status, lines[0])
	}
	return fmt.Errorf("server answered %d:\n  %s", status, strings.Join(lines, "\n  "))
}

func defaultServer() string { return cmp.Or(os.Getenv("WHARF_SERVER"), "http://127.0.0.1:5000") }

// jobsCmd lists jobs, shows one (with --failed, only its failed images),
// cancels one, or runs a finished one's failed images again (--retry:
// prints the new job's ID).
func jobsCmd(args []string, stdout, stderr io.Writer) error {
	fs := newCommand("jobs", stdout, stderr)
	cf := addClientFlags(fs.FlagSet)
	cancel := fs.Bool("cancel", false, "cancel the job ID")
	failed := fs.Bool("failed", false, "list only the job's failed images")
	retry := fs.Bool("retry", false, "run the failed images of the ended job ID again, as a new job; print its ID")
	output := fs.String("output", "text", "text or json")
	ids, err := fs.parse(args)
	if err != nil {
		return err
	}
	if len(ids) > 1 || ((*cancel || *failed || *retry) && len(ids) == 0) {
		return usagef("jobs", "usage: wharf jobs [--cancel | --failed | --retry] [ID]")
	}
	c, err := cf.client()
	if err != nil {
		return err
	}
	ctx := context.Background()
	if len(ids) == 0 {
		var list api.JobList
		if err := c.call(ctx, http.MethodGet, "/api/v1/jobs", "", nil, &list); err != nil {
			return err
		}
		if *output == "json" {
			return writeJob(stdout, list)
		}
		fmt.Fprintf(stdout, "%-24s  %-9s  %-6s  %-6s  %-6s  %-9s  %-10s  %-12s  %s\n", "ID", "STATE", "IMAGES", "DONE", "FAILED", "SIZE", "PUSH TO", "RULE", "CREATED")
		for _, j := range list.Jobs {
			fmt.Fprintf(stdout, "%-24s  %-9s  %-6d  %-6d  %-6d  %-9s  %-10s  %-12s  %s\n", j.ID, j.State, j.Images, j.Done, j.Failed,
				humanize.IBytes(uint64(j.BytesTotal)), cmp.Or(j.PushTo, "-"), cmp.Or(j.Rule, "-"), j.Created.Local().Format(time.DateTime))
		}
		return nil
	}
	if *retry {
		var job api.Job
		if err := c.call(ctx, http.MethodPost, "/api/v1/jobs/"+url.PathEscape(ids[0])+"/retry", "application/json", []byte("{}"), &job); err != nil {
			return err
		}
		if *output == "json" {
			return writeJob(stdout, job)
		}
		fmt.Fprintln(stdout, job.ID)
		fmt.Fprintf(stderr, "job %s runs the %d failed images of job %s again\n", job.ID, job.Images, ids[0])
		return nil
	}
	method := http.MethodGet
	if *cancel {
		method = http.MethodDelete
	}
	var job api.Job
	if err := c.call(ctx, method, "/api/v1/jobs/"+url.PathEscape(ids[0]), "", nil, &job); err != nil {
		return err
	}
	var state api.State
	if *failed {
		state = api.StateFailed
	}
	var images []api.Image
	err = c.eachImage(ctx, job.ID, state, func(img api.Image) {
		if *output == "json" {
			images = append(images, img)
		} else {
			fmt.Fprintln(stdout, imageLine(img))
		}
	})
	if err != nil {
		return err
	}
	if *output == "json" {
		if images == nil {
			images = []api.Image{}
		}
		return writeJob(stdout, map[string]any{"job": job, "images": images})
	}
	fmt.Fprintln(stdout, summary(job))
	return nil
}

// images reads one page of a job's images after index last (-1: from the
// first), only those in state if it is set; more says another page follows.
func (c *apiClient) images(ctx context.Context, id string, state api.State, last, n int) (page []api.Image, more bool, err error) {
	q := url.Values{"n": {strconv.Itoa(n)}}
	if last >= 0 {
		q.Set("last", strconv.Itoa(last))
	}
	if state != "" {
		q.Set("state", string(state))
	}
	var doc api.ImagePage
	hdr, err := c.callHeader(ctx, http.MethodGet, "/api/v1/jobs/"+url.PathEscape(id)+"/images?"+q.Encode(), &doc)
	return doc.Images, strings.Contains(hdr.Get("Link"), `rel="next"`), err
}

// eachImage calls fn with every image of a job (in state, if set), a page
// at a time.
func (c *apiClient) eachImage(ctx context.Context, id string, state api.State, fn func(api.Image)) error {
	last := -1
	for {
		page, more, err := c.images(ctx, id, state, last, api.MaxImagesPage)
		if err != nil {
			return err
		}
		for _, img := range page {
			fn(img)
			last = img.Index
		}
		if !more || len(page) == 0 {
			return nil
		}
	}
}

// pinsCmd lists what prefetch jobs pinned, or unpins one reference.
func pinsCmd(args []string, stdout, stderr io.Writer) error {
	fs := newCommand("pins", stdout, stderr)
	cf := addClientFlags(fs.FlagSet)
	unpin := fs.String("unpin", "", "unpin this image reference, as the job named it")
	output := fs.String("output", "text", "text or json (the API's fields)")
	rest, err := fs.parse(args)
	if err != nil {
		return err
	}
	if len(rest) > 0 {
		return usagef("pins", "usage: wharf pins [--unpin REF]")
	}
	c, err := cf.client()
	if err != nil {
		return err
	}
	ctx := context.Background()
	if *unpin != "" {
		return c.call(ctx, http.MethodDelete, "/api/v1/pins?"+url.Values{"image": {*unpin}}.Encode(), "", nil, nil)
	}
	var list api.PinList
	if err := c.call(ctx, http.MethodGet, "/api/v1/pins", "", nil, &list); err != nil {
		return err
	}
	if *output == "json" {
		return writeJob(stdout, list)
	}
	for _, p := range list.Pins {
		fmt.Fprintf(stdout, "%s/%s %s %s\n", p.Upstream, p.Repository, p.Reference, p.Digest)
	}
	return nil
}

// targetsCmd shows each push target's health as the server sees it, and
// what it took since the server started.
func targetsCmd(args []string, stdout, stderr io.Writer) error {
	fs := newCommand("targets", stdout, stderr)
	cf := addClientFlags(fs.FlagSet)
	output := fs.String("output", "text", "text or json")
	rest, err := fs.parse(args)
	if err != nil {
		return err
	}
	if len(rest) > 0 {
		return usagef("targets", "usage: wharf targets [--output json]")
	}
	c, err := cf.client()
	if err != nil {
		return err
	}
	if *output == "json" {
		var raw json.RawMessage // every field the API gives, as it names them
		if err := c.call(context.Background(), http.MethodGet, "/api/v1/targets", "", nil, &raw); err != nil {
			return err
		}
		return writeJob(stdout, raw)
	}
	var list struct {
		Targets []struct {
			Name                string `json:"name"`
			State               string `json:"state"`
			ConsecutiveFailures int    `json:"consecutiveFailures"`
			LastError           string `json:"lastError"`
			BlobsPushed         int64  `json:"blobsPushed"`
			ManifestsPushed     int64  `json:"manifestsPushed"`
		} `json:"targets"`
	}
	if err := c.call(context.Background(), http.MethodGet, "/api/v1/targets", "", nil, &list); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%-20s  %-9s  %-8s  %-12s  %-9s  %s\n", "TARGET", "CIRCUIT", "FAILURES", "BLOBS PUSHED", "MANIFESTS", "LAST ERROR")
	for _, t := range list.Targets {
		fmt.Fprintf(stdout, "%-20s  %-9s  %-8d  %-12d  %-9d  %s\n", t.Name, t.State, t.ConsecutiveFailures, t.BlobsPushed, t.ManifestsPushed, cmp.Or(t.LastError, "-"))
	}
	return nil
}
