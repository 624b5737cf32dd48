package httpx

import (
	"encoding/json"
	"net/http"
	"net/url"
	"slices"
	"strconv"

	"github.com/distribution/distribution/v3/registry/api/errcode"
)

// JSON answers and the n/last paging of the distribution spec, which the
// tag list, the catalog and the API's lists share.

// PageParams reads n, -1 when absent.
func PageParams(r *http.Request) (int, error) {
	n := -1
	if s := r.URL.Query().Get("n"); s != "" {
		v, err := strconv.Atoi(s)
		if err != nil || v < 0 {
			return 0, OCIError(http.StatusBadRequest, errcode.ErrorCodePaginationNumberInvalid, "n must be a non-negative integer")
		}
		n = v
	}
	return n, nil
}

// Paginate returns the sorted items after last, at most n of them (all if
// n < 0), and whether more follow.
func Paginate(items []string, n int, last string) ([]string, bool) {
	if last != "" {
		i, _ := slices.BinarySearch(items, last)
		if i < len(items) && items[i] == last {
			i++
		}
		items = items[i:]
	}
	if items == nil {
		items = []string{}
	}
	if n >= 0 && len(items) > n {
		return items[:n], n > 0
	}
	return items, false
}

// SetNextLink points to the page after last, keeping ns.
func SetNextLink(w http.ResponseWriter, r *http.Request, path string, n int, last string) {
	q := url.Values{"n": {strconv.Itoa(n)}, "last": {last}}
	if ns := r.URL.Query().Get("ns"); ns != "" {
		q.Set("ns", ns)
	}
	w.Header().Set("Link", "<"+path+"?"+q.Encode()+`>; rel="next"`)
}

// WriteJSON answers v as JSON, the body left out for HEAD.
func WriteJSON(w http.ResponseWriter, r *http.Request, v any) error {
	return WriteJSONStatus(w, r, http.StatusOK, v)
}

// WriteJSONStatus answers v as JSON with status.
func WriteJSONStatus(w http.ResponseWriter, r *http.Request, status int, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(status)
	if r.Method == http.MethodHead {
		return nil
	}
	_, err = w.Write(b)
	return err
}
