package main

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/dustin/go-humanize"

	"github.com/wharf-registry/wharf/cache"
)

// The client side of the /api/v1 prefetch API: wharf prefetch and wharf jobs.

// listFlag collects a repeated flag.
type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

// apiClient talks to a running Wharf.
type apiClient struct {
	server string
	token  string
	hc     *http.Client
}

func newAPIClient(server, tokenFile string) (*apiClient, error) {
	u, err := url.Parse(server)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("--server %q: want http(s)://host:port", server)
	}
	c := &apiClient{server: strings.TrimRight(server, "/"), hc: &http.Client{}}
	if tokenFile != "" {
		b, err := os.ReadFile(tokenFile)
		if err != nil {
			return nil, fmt.Errorf("--token-file: %w", err)
		}
		c.token = strings.TrimSpace(string(b))
	}
	return c, nil
}

// call sends one request and decodes a 2xx JSON answer into out; any other
// answer becomes an error listing the server's OCI errors.
func (c *apiClient) call(ctx context.Context, method, path, contentType string, body []byte, out any) error {
	req, err := http.NewRequestWithContext(ctx, method, c.server+path, bytes.NewReader(body))
	if err != nil {
		return err
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode/100 != 2 {
		return apiError(resp.StatusCode, raw)
	}
	if out == nil || resp.StatusCode == http.StatusNoContent {
		return nil
	}
	return json.Unmarshal(raw, out)
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

// parseInterleaved parses flags wherever they stand among the arguments, so
// `wharf prefetch REF --wait` works as well as `--wait REF`.
func parseInterleaved(fs *flag.FlagSet, args []string) ([]string, error) {
	var rest []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		if fs.NArg() == 0 {
			return rest, nil
		}
		rest = append(rest, fs.Arg(0))
		args = fs.Args()[1:]
	}
}

func defaultServer() string { return cmp.Or(os.Getenv("WHARF_SERVER"), "http://127.0.0.1:5000") }

// prefetchCmd submits a job and, with --wait, follows it to the end.
func prefetchCmd(args []string, stdout, stderr io.Writer, tty bool) error {
	fs := flag.NewFlagSet("prefetch", flag.ContinueOnError)
	fs.SetOutput(stderr)
	server := fs.String("server", defaultServer(), "Wharf's address ($WHARF_SERVER)")
	tokenFile := fs.String("token-file", "", "file holding the API token (api.token_file on the server)")
	pushTo := fs.String("push-to", "", "push target, as named in the server's config")
	file := fs.String("f", "", "list of images: text (one per line), skopeo sync YAML (.yml/.yaml) or JSON (.json); - for stdin")
	wait := fs.Bool("wait", false, "follow the job until it ends; exit 1 unless every image is done")
	pin := fs.Bool("pin", false, "pin the images against eviction")
	output := fs.String("output", "text", "text or json (the final job, with --wait)")
	var platforms, renames listFlag
	fs.Var(&platforms, "platform", "copy only this platform's children of an index, os/arch[/variant] (repeatable)")
	fs.Var(&renames, "rename", "map source repositories starting with FROM to target ones starting with TO, FROM=TO (repeatable)")
	refs, err := parseInterleaved(fs, args)
	if err != nil {
		return err
	}
	if (*file == "") == (len(refs) == 0) {
		return errors.New("usage: wharf prefetch [flags] (-f FILE | REF...)")
	}
	if *output != "text" && *output != "json" {
		return fmt.Errorf("--output %q: want text or json", *output)
	}
	c, err := newAPIClient(*server, *tokenFile)
	if err != nil {
		return err
	}
	q := url.Values{}
	var body []byte
	contentType := "application/json"
	if *file != "" {
		if body, contentType, err = readList(*file); err != nil {
			return err
		}
		if *pushTo != "" {
			q.Set("push_to", *pushTo)
		}
		q["platform"], q["rename"] = platforms, renames
		if *pin {
			q.Set("pin", "true")
		}
	} else {
		req := map[string]any{"images": refs, "push_to": *pushTo, "platforms": platforms, "pin": *pin}
		var rn []map[string]string
		for _, r := range renames {
			from, to, ok := strings.Cut(r, "=")
			if !ok {
				return fmt.Errorf("--rename %q: want FROM=TO", r)
			}
			rn = append(rn, map[string]string{"from": from, "to": to})
		}
		req["rename"] = rn
		body, _ = json.Marshal(req)
	}
	path := "/api/v1/prefetch"
	if len(q) > 0 {
		path += "?" + q.Encode()
	}
	ctx := context.Background()
	var job cache.Job
	if err := c.call(ctx, http.MethodPost, path, contentType, body, &job); err != nil {
		return err
	}
	if !*wait {
		if *output == "json" {
			return writeJob(stdout, job)
		}
		fmt.Fprintln(stdout, job.ID)
		fmt.Fprintf(stderr, "job %s accepted: %d images; follow it with wharf jobs %s\n", job.ID, len(job.Images), job.ID)
		return nil
	}
	fmt.Fprintf(stderr, "job %s: %d images\n", job.ID, len(job.Images))
	job, err = follow(ctx, c, job, stderr, tty)
	if err != nil {
		return err
	}
	if *output == "json" {
		if err := writeJob(stdout, job); err != nil {
			return err
		}
	}
	if job.State != cache.StateDone {
		return fmt.Errorf("job %s ended %s", job.ID, job.State)
	}
	return nil
}

// readList reads -f and picks its Content-Type from the file name.
func readList(name string) ([]byte, string, error) {
	var b []byte
	var err error
	if name == "-" {
		b, err = io.ReadAll(os.Stdin)
	} else {
		b, err = os.ReadFile(name)
	}
	if err != nil {
		return nil, "", err
	}
	switch strings.ToLower(filepath.Ext(name)) {
	case ".yml", ".yaml":
		return b, "application/yaml", nil
	case ".json":
		return b, "application/json", nil
	}
	return b, "text/plain", nil
}

func writeJob(w io.Writer, job any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(job)
}

// follow polls the job (each poll waits up to a second on the server for
// it to end) and shows progress until it has finished: a line per finished
// image, and on a terminal a bar per running image and the overall bytes,
// redrawn in place below them.
func follow(ctx context.Context, c *apiClient, job cache.Job, w io.Writer, tty bool) (cache.Job, error) {
	reported := map[int]bool{}
	drawn := 0
	for {
		var err error
		var next cache.Job
		for attempt := 0; ; attempt++ {
			err = c.call(ctx, http.MethodGet, "/api/v1/jobs/"+job.ID+"?wait=1s", "", nil, &next)
			if err == nil || attempt == 5 {
				break
			}
			time.Sleep(time.Second) // a restarting server: the job resumes, keep following
		}
		if err != nil {
			return job, err
		}
		job = next
		if drawn > 0 {
			fmt.Fprintf(w, "\x1b[%dA\x1b[J", drawn) // up to the first bar, clear below
			drawn = 0
		}
		for i, img := range job.Images {
			if finished(img.State) && !reported[i] {
				reported[i] = true
				fmt.Fprintln(w, imageLine(img))
			}
		}
		if job.Finished != nil {
			fmt.Fprintln(w, summary(job))
			return job, nil
		}
		if tty {
			drawn = drawBars(w, job)
		}
	}
}

func finished(state string) bool {
	return state == cache.StateDone || state == cache.StateFailed || state == cache.StateCancelled
}

// drawBars writes a bar per running image and a line of overall bytes, and
// returns how many lines it wrote.
func drawBars(w io.Writer, job cache.Job) int {
	const width = 30
	var done, total int64
	lines, finishedImages := 0, 0
	for _, img := range job.Images {
		done, total = done+img.BytesDone, total+img.BytesTotal
		if finished(img.State) {
			finishedImages++
		}
		if img.State != cache.StateRunning {
			continue
		}
		frac := 0.0
		if img.BytesTotal > 0 {
			frac = min(1, float64(img.BytesDone)/float64(img.BytesTotal))
		}
		filled := int(frac * width)
		fmt.Fprintf(w, "[%s%s] %9s / %-9s %s\n", strings.Repeat("#", filled), strings.Repeat(" ", width-filled),
			humanize.IBytes(uint64(img.BytesDone)), humanize.IBytes(uint64(img.BytesTotal)), img.Source)
		lines++
	}
	fmt.Fprintf(w, "%d/%d images, %s of %s so far\n", finishedImages, len(job.Images), humanize.IBytes(uint64(done)), humanize.IBytes(uint64(total)))
	return lines + 1
}

func imageLine(img *cache.Image) string {
	s := fmt.Sprintf("%-9s %s", img.State, img.Source)
	if img.Target != "" {
		s += " -> " + img.Target
	}
	if img.Digest != "" {
		s += " " + img.Digest.String()
	}
	s += fmt.Sprintf(" (%s fetched, %s cached", humanize.IBytes(uint64(img.BytesFetched)), humanize.IBytes(uint64(img.BytesCached)))
	if img.Target != "" {
		s += fmt.Sprintf("; blobs %d pushed, %d skipped, %d mounted", img.BlobsPushed, img.BlobsSkipped, img.BlobsMounted)
	}
	s += fmt.Sprintf(", %.1fs)", img.Seconds)
	if img.Error != "" {
		s += ": " + img.Error
	}
	return s
}

func summary(job cache.Job) string {
	counts := map[string]int{}
	var fetched, pushed int64
	for _, img := range job.Images {
		counts[img.State]++
		fetched += img.BytesFetched
		pushed += img.BytesPushed
	}
	s := fmt.Sprintf("job %s %s: %d of %d images done", job.ID, job.State, counts[cache.StateDone], len(job.Images))
	if n := counts[cache.StateFailed]; n > 0 {
		s += fmt.Sprintf(", %d failed", n)
	}
	if n := counts[cache.StateCancelled]; n > 0 {
		s += fmt.Sprintf(", %d cancelled", n)
	}
	s += fmt.Sprintf("; %s fetched from upstream", humanize.IBytes(uint64(fetched)))
	if job.PushTo != "" {
		s += fmt.Sprintf(", %s pushed to %s", humanize.IBytes(uint64(pushed)), job.PushTo)
	}
	if job.Started != nil && job.Finished != nil {
		s += fmt.Sprintf(" in %s", job.Finished.Sub(*job.Started).Round(100*time.Millisecond))
	}
	return s
}

// jobsCmd lists jobs, shows one, or cancels one.
func jobsCmd(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("jobs", flag.ContinueOnError)
	fs.SetOutput(stderr)
	server := fs.String("server", defaultServer(), "Wharf's address ($WHARF_SERVER)")
	tokenFile := fs.String("token-file", "", "file holding the API token")
	cancel := fs.Bool("cancel", false, "cancel the job ID")
	output := fs.String("output", "text", "text or json")
	ids, err := parseInterleaved(fs, args)
	if err != nil {
		return err
	}
	if len(ids) > 1 || (*cancel && len(ids) == 0) {
		return errors.New("usage: wharf jobs [--cancel] [ID]")
	}
	c, err := newAPIClient(*server, *tokenFile)
	if err != nil {
		return err
	}
	ctx := context.Background()
	if len(ids) == 0 {
		var list struct {
			Jobs []struct {
				ID         string    `json:"id"`
				State      string    `json:"state"`
				PushTo     string    `json:"push_to"`
				Created    time.Time `json:"created"`
				Images     int       `json:"images"`
				Done       int       `json:"images_done"`
				Failed     int       `json:"images_failed"`
				BytesTotal int64     `json:"bytes_total"`
			} `json:"jobs"`
		}
		if err := c.call(ctx, http.MethodGet, "/api/v1/jobs", "", nil, &list); err != nil {
			return err
		}
		if *output == "json" {
			return writeJob(stdout, list)
		}
		fmt.Fprintf(stdout, "%-24s  %-9s  %-6s  %-6s  %-6s  %-9s  %-10s  %s\n", "ID", "STATE", "IMAGES", "DONE", "FAILED", "SIZE", "PUSH TO", "CREATED")
		for _, j := range list.Jobs {
			fmt.Fprintf(stdout, "%-24s  %-9s  %-6d  %-6d  %-6d  %-9s  %-10s  %s\n", j.ID, j.State, j.Images, j.Done, j.Failed,
				humanize.IBytes(uint64(j.BytesTotal)), cmp.Or(j.PushTo, "-"), j.Created.Local().Format(time.DateTime))
		}
		return nil
	}
	method := http.MethodGet
	if *cancel {
		method = http.MethodDelete
	}
	var job cache.Job
	if err := c.call(ctx, method, "/api/v1/jobs/"+url.PathEscape(ids[0]), "", nil, &job); err != nil {
		return err
	}
	if *output == "json" {
		return writeJob(stdout, job)
	}
	for _, img := range job.Images {
		fmt.Fprintln(stdout, imageLine(img))
	}
	fmt.Fprintln(stdout, summary(job))
	return nil
}

// pinsCmd lists what prefetch jobs pinned, or unpins one reference.
func pinsCmd(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("pins", flag.ContinueOnError)
	fs.SetOutput(stderr)
	server := fs.String("server", defaultServer(), "Wharf's address ($WHARF_SERVER)")
	tokenFile := fs.String("token-file", "", "file holding the API token")
	unpin := fs.String("unpin", "", "unpin this image reference, as the job named it")
	rest, err := parseInterleaved(fs, args)
	if err != nil {
		return err
	}
	if len(rest) > 0 {
		return errors.New("usage: wharf pins [--unpin REF]")
	}
	c, err := newAPIClient(*server, *tokenFile)
	if err != nil {
		return err
	}
	ctx := context.Background()
	if *unpin != "" {
		return c.call(ctx, http.MethodDelete, "/api/v1/pins?"+url.Values{"image": {*unpin}}.Encode(), "", nil, nil)
	}
	var list struct{ Pins []cache.Pin }
	if err := c.call(ctx, http.MethodGet, "/api/v1/pins", "", nil, &list); err != nil {
		return err
	}
	for _, p := range list.Pins {
		fmt.Fprintf(stdout, "%s/%s %s %s\n", p.Upstream, p.Repository, p.Reference, p.Digest)
	}
	return nil
}
