package upstream

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"

	"github.com/distribution/reference"

	"github.com/wharf-registry/wharf/oci"
)

// maxTagPages bounds how many pages of a tag list are followed (of 1000
// tags each); a longer list is an error, never served as complete.
const maxTagPages = 100

// Tags lists every tag of repo, following Link pagination on the upstream
// host only. A list that cannot be followed to its end is an error.
func (c *Client) Tags(ctx context.Context, repo string) ([]string, error) {
	named, err := reference.WithName(repo)
	if err != nil {
		return nil, err
	}
	u, err := c.urls.BuildTagsURL(named, url.Values{"n": {"1000"}})
	if err != nil {
		return nil, err
	}
	var tags []string
	for page := 0; u != ""; page++ {
		if page == maxTagPages {
			return nil, &Error{Method: http.MethodGet, URL: redact(u), Status: http.StatusBadGateway,
				Detail: fmt.Sprintf("the tag list goes on past %d pages", maxTagPages)}
		}
		resp, err := c.do(ctx, http.MethodGet, repo, u, nil)
		if err != nil {
			return nil, err
		}
		var doc struct {
			Tags []string `json:"tags"`
		}
		err = json.NewDecoder(io.LimitReader(resp.Body, oci.MaxManifestSize)).Decode(&doc)
		link := resp.Header.Get("Link")
		drain(resp.Body)
		if err != nil {
			return nil, &Error{Method: http.MethodGet, URL: redact(u), Err: fmt.Errorf("decode tag list: %w", err)}
		}
		tags = append(tags, doc.Tags...)
		if u, err = c.nextPage(u, link); err != nil {
			return nil, err
		}
	}
	return tags, nil
}

// nextPage resolves the rel="next" target of a Link header against the
// current page ("" when there is none). A next page that cannot be read or
// is on another host is an error: the list would be cut short.
func (c *Client) nextPage(current, header string) (string, error) {
	target, ok := nextLink(header)
	if !ok {
		return "", nil
	}
	fail := func(why string) (string, error) {
		return "", &Error{Method: http.MethodGet, URL: redact(current), Status: http.StatusBadGateway, Detail: "tag list: " + why}
	}
	cur, err := url.Parse(current)
	if err != nil {
		return fail(err.Error())
	}
	next, err := cur.Parse(target)
	if err != nil {
		return fail("bad next page link")
	}
	if next.Host != c.base.Host {
		return fail("the next page is on another host")
	}
	return next.String(), nil
}

// nextLink finds the target of the rel="next" link among the
// comma-separated links of a Link header (RFC 8288): <target>; rel="next".
func nextLink(header string) (string, bool) {
	for header != "" {
		start := strings.IndexByte(header, '<')
		end := strings.IndexByte(header, '>')
		if start < 0 || end < start {
			return "", false
		}
		target := header[start+1 : end]
		params := header[end+1:]
		if i := strings.IndexByte(params, '<'); i >= 0 {
			params, header = params[:i], params[i:]
		} else {
			header = ""
		}
		for p := range strings.SplitSeq(params, ";") {
			k, v, _ := strings.Cut(strings.TrimSpace(strings.TrimRight(strings.TrimSpace(p), ",")), "=")
			if strings.EqualFold(strings.TrimSpace(k), "rel") && slices.Contains(strings.Fields(strings.ToLower(strings.Trim(v, `"`))), "next") {
				return target, true
			}
		}
	}
	return "", false
}
