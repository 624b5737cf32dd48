package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/dustin/go-humanize"

	"github.com/wharf-registry/wharf/api"
)

// wharf prefetch: submit a job and follow it.

// prefetchCmd submits a job and, with --wait, follows it to the end.
func prefetchCmd(args []string, stdout, stderr io.Writer, tty bool) error {
	fs := newCommand("prefetch", stdout, stderr)
	cf := addClientFlags(fs.FlagSet)
	pushTo := fs.String("push-to", "", "push target, as named in the server's config")
	file := fs.String("f", "", "list of images: text (one per line), skopeo sync YAML (.yml/.yaml) or JSON (.json); - for stdin")
	wait := fs.Bool("wait", false, "follow the job until it ends; exit 1 unless every image is done")
	pin := fs.Bool("pin", false, "pin the images against eviction")
	output := fs.String("output", "text", "text or json (the final job, with --wait)")
	var platforms, renames listFlag
	fs.Var(&platforms, "platform", "copy only this platform's children of an index, os/arch[/variant] (repeatable)")
	fs.Var(&renames, "rename", "map source repositories starting with FROM to target ones starting with TO, FROM=TO (repeatable)")
	referrers := fs.Bool("referrers", true, "copy signatures, attestations and SBOMs with their images (--referrers=false: leave them)")
	index := fs.String("index", "verbatim", "with --platform: verbatim (copy indexes as they are) or filter (push indexes listing only those platforms)")
	var fromCache listFlag
	fs.Var(&fromCache, "from-cache", "copy every cached tag matching this pattern on <upstream>/<repo>[:<tag>], as pins use (repeatable)")
	refs, err := fs.parse(args)
	if err != nil {
		return err
	}
	if *file != "" && len(refs) > 0 || *file == "" && len(refs) == 0 && len(fromCache) == 0 {
		return usagef("prefetch", "usage: wharf prefetch [flags] (-f FILE | REF... | --from-cache PATTERN)")
	}
	if *output != "text" && *output != "json" {
		return fmt.Errorf("--output %q: want text or json", *output)
	}
	c, err := cf.client()
	if err != nil {
		return err
	}
	body, contentType, q, err := prefetchRequest(*file, refs, fromCache, *pushTo, platforms, renames, *pin)
	if err == nil && (!*referrers || *index != "verbatim") {
		body, q, err = withOptions(body, contentType, q, *referrers, *index)
	}
	if err != nil {
		return err
	}
	path := "/api/v1/prefetch"
	if len(q) > 0 {
		path += "?" + q.Encode()
	}
	ctx := context.Background()
	var job api.Job
	if err := c.call(ctx, http.MethodPost, path, contentType, body, &job); err != nil {
		if *file != "" && *file != "-" && strings.Contains(err.Error(), "YAML body") {
			return fmt.Errorf("%s: %w", *file, err) // the line is the file's
		}
		return err
	}
	if !*wait {
		if *output == "json" {
			return writeJob(stdout, job)
		}
		fmt.Fprintln(stdout, job.ID)
		fmt.Fprintf(stderr, "job %s accepted: %d images; follow it with wharf jobs %s\n", job.ID, job.Images, job.ID)
		return nil
	}
	fmt.Fprintf(stderr, "job %s: %d images\n", job.ID, job.Images)
	job, err = follow(ctx, c, job, stderr, tty)
	if err != nil {
		return err
	}
	if *output == "json" {
		if err := writeJob(stdout, job); err != nil {
			return err
		}
	}
	if job.State != api.StateDone {
		return fmt.Errorf("job %s ended %s", job.ID, job.State)
	}
	return nil
}

// prefetchRequest builds the request: a JSON file as it is, with the
// options as query parameters; anything else as a JSON body of the
// references (or the text list or sync YAML of the -f file, in "list" or
// "sync") and options. JSON, because a loopback Wharf without credentials
// takes no other body: a web page could send one.
func prefetchRequest(file string, refs, fromCache []string, pushTo string, platforms, renames []string, pin bool) (body []byte, contentType string, q url.Values, err error) {
	q = url.Values{}
	req := api.PrefetchRequest{Images: refs, PushTo: pushTo, Platforms: platforms, Pin: pin, FromCache: fromCache}
	if file != "" {
		if body, contentType, err = readList(file); err != nil {
			return nil, "", nil, err
		}
		switch contentType {
		case "application/json":
			if len(fromCache) > 0 {
				return nil, "", nil, errors.New("--from-cache goes with a text or YAML list, not a JSON file")
			}
			if pushTo != "" {
				q.Set("push_to", pushTo)
			}
			q["platform"], q["rename"] = platforms, renames
			if pin {
				q.Set("pin", "true")
			}
			return body, contentType, q, nil
		case "application/yaml":
			req.Sync = string(body)
		default:
			req.List = string(body)
		}
	}
	for _, r := range renames {
		from, to, ok := strings.Cut(r, "=")
		if !ok {
			return nil, "", nil, fmt.Errorf("--rename %q: want FROM=TO", r)
		}
		req.Rename = append(req.Rename, api.Rename{From: from, To: to})
	}
	body, err = json.Marshal(req)
	return body, "application/json", q, err
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
// image, in the job's order, and on a terminal a bar per running image and
// the overall bytes, redrawn in place below them. It reads the job's
// record and a page or two of images per poll, whatever the job's size.
func follow(ctx context.Context, c *apiClient, job api.Job, w io.Writer, tty bool) (api.Job, error) {
	reported := -1 // index of the last image reported: all before it are too
	drawn := 0
	for {
		var err error
		var next api.Job
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
		if reported, err = reportFinished(ctx, c, job.ID, reported, w); err != nil {
			return job, err
		}
		if job.Finished != nil {
			fmt.Fprintln(w, summary(job))
			return job, nil
		}
		if tty {
			running, _, err := c.images(ctx, job.ID, api.StateRunning, -1, 50)
			if err != nil {
				return job, err
			}
			drawn = drawBars(w, job, running)
		}
	}
}

// reportFinished writes a line for each finished image after index last,
// in order, up to the first one still queued or running, and returns the
// index of the last one written.
func reportFinished(ctx context.Context, c *apiClient, id string, last int, w io.Writer) (int, error) {
	for {
		page, more, err := c.images(ctx, id, "", last, 200)
		if err != nil {
			return last, err
		}
		for _, img := range page {
			if !img.State.Ended() {
				return last, nil
			}
			fmt.Fprintln(w, imageLine(img))
			last = img.Index
		}
		if !more || len(page) == 0 {
			return last, nil
		}
	}
}

// drawBars writes a bar per running image and a line of overall bytes, and
// returns how many lines it wrote.
func drawBars(w io.Writer, job api.Job, running []api.Image) int {
	const width = 30
	for _, img := range running {
		frac := 0.0
		if img.BytesTotal > 0 {
			frac = min(1, float64(img.BytesDone)/float64(img.BytesTotal))
		}
		filled := int(frac * width)
		fmt.Fprintf(w, "[%s%s] %9s / %-9s %s\n", strings.Repeat("#", filled), strings.Repeat(" ", width-filled),
			humanize.IBytes(uint64(img.BytesDone)), humanize.IBytes(uint64(img.BytesTotal)), img.Source)
	}
	finishedImages := job.Done + job.Failed + job.Cancelled
	fmt.Fprintf(w, "%d/%d images, %s of %s so far\n", finishedImages, job.Images, humanize.IBytes(uint64(job.BytesDone)), humanize.IBytes(uint64(job.BytesTotal)))
	return len(running) + 1
}

func imageLine(img api.Image) string {
	s := fmt.Sprintf("%-9s %s", img.State, img.Source)
	if img.Target != "" {
		s += " -> " + img.Target
	}
	switch {
	case img.FilteredDigest != "":
		// The index the target holds, not the source's it was made from.
		s += " " + img.FilteredDigest.String() + " (filtered from " + img.Digest.String() + ")"
	case img.Digest != "":
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

func summary(job api.Job) string {
	s := fmt.Sprintf("job %s %s: %d of %d images done", job.ID, job.State, job.Done, job.Images)
	if job.Failed > 0 {
		s += fmt.Sprintf(", %d failed", job.Failed)
	}
	if job.Cancelled > 0 {
		s += fmt.Sprintf(", %d cancelled", job.Cancelled)
	}
	if n := job.Queued + job.Running; n > 0 {
		s += fmt.Sprintf(", %d to go", n)
	}
	s += fmt.Sprintf("; %s fetched from upstream", humanize.IBytes(uint64(job.BytesFetched)))
	if job.PushTo != "" {
		s += fmt.Sprintf(", %s pushed to %s", humanize.IBytes(uint64(job.BytesPushed)), job.PushTo)
	}
	if job.Started != nil && job.Finished != nil {
		s += fmt.Sprintf(" in %s", job.Finished.Sub(*job.Started).Round(100*time.Millisecond))
	}
	if job.Error != "" {
		s += ": " + job.Error
	}
	return s
}

// withOptions adds referrers and index to a request built by
// prefetchRequest: into its JSON body, or its query for a JSON file sent
// as it is.
func withOptions(body []byte, contentType string, q url.Values, referrers bool, index string) ([]byte, url.Values, error) {
	if q.Encode() != "" || contentType != "application/json" {
		q.Set("referrers", strconv.FormatBool(referrers))
		q.Set("index", index)
		return body, q, nil
	}
	var req api.PrefetchRequest
	if err := json.Unmarshal(body, &req); err != nil {
		return nil, nil, err
	}
	req.Referrers, req.Index = &referrers, index
	b, err := json.Marshal(req)
	return b, q, err
}
