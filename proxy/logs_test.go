package proxy_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/wharf-registry/wharf/audit"
	"github.com/wharf-registry/wharf/cache"
	"github.com/wharf-registry/wharf/replicate"
	"github.com/wharf-registry/wharf/upstream/upstreamtest"
)

// jsonLines decodes every JSON line written to b so far.
func jsonLines(t *testing.T, b *logBuffer) []map[string]any {
	t.Helper()
	var out []map[string]any
	sc := bufio.NewScanner(strings.NewReader(b.String()))
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("not a JSON line: %q: %v", sc.Text(), err)
		}
		out = append(out, m)
	}
	return out
}

// Every registry request's log line says how the cache answered it and
// from which upstream, and the audit log has a line for every manifest and
// blob GET: miss, hit, a fill joined by a second client, a stale answer
// while upstream fails, and a refusal.
func TestRequestLogsAndAuditSayHowTheCacheAnswered(t *testing.T) {
	up := upstreamtest.New(t)
	img := up.PushImage(t, "library/app", "1.0", 91, 1, 64<<10, amd64)
	layer := img.Layers[0]
	var logs, trail logBuffer
	log := slog.New(slog.NewJSONHandler(&logs, nil))
	e := newEnvOpts(t, t.TempDir(), envOpts{cfg: cache.Config{Logger: log}, audit: audit.New(&trail)},
		spec{name: "docker.io", reg: up, def: true, ttl: 0})

	manifest := "/v2/library/app/manifests/1.0"
	blob := "/v2/library/app/blobs/" + layer.Digest.String()
	e.get(t, manifest, img.Manifest.Data, img.Manifest.Digest.String()) // miss
	e.get(t, manifest, img.Manifest.Data, img.Manifest.Digest.String()) // hit: upstream's HEAD confirms it

	// The layer's upstream GET sends half the blob and waits: the first
	// client has its headers (it started the fill), a second one gets its
	// own from the same fill (joined), then the rest flows to both.
	release := make(chan struct{})
	up.SetHook(func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method != http.MethodGet || r.URL.Path != blob {
			return false
		}
		w.Header().Set("Content-Length", strconv.Itoa(len(layer.Data)))
		w.Header().Set("Docker-Content-Digest", layer.Digest.String())
		w.WriteHeader(http.StatusOK)
		w.Write(layer.Data[:len(layer.Data)/2])
		w.(http.Flusher).Flush()
		<-release
		w.Write(layer.Data[len(layer.Data)/2:])
		return true
	})
	first, second := e.open(t, blob), e.open(t, blob)
	close(release)
	for _, resp := range []*http.Response{first, second} {
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || !bytes.Equal(b, layer.Data) {
			t.Fatalf("blob through the fill: %v, %d bytes", err, len(b))
		}
	}
	up.SetHook(nil)
	if n := settle(func() int { return int(metric(t, e, "wharf_fills_in_flight")) }, 0); n != 0 {
		t.Fatalf("%d fills still in flight", n)
	}
	e.get(t, blob, layer.Data, layer.Digest.String()) // hit

	// Upstream fails: the manifest is served as cached, unconfirmed.
	up.SetHook(func(w http.ResponseWriter, r *http.Request) bool {
		w.WriteHeader(http.StatusServiceUnavailable)
		return true
	})
	e.get(t, manifest, img.Manifest.Data, img.Manifest.Digest.String())
	up.SetHook(nil)
	if r := e.do(t, http.MethodGet, "/v2/library/nothing/manifests/1.0"); r.status != http.StatusNotFound {
		t.Fatalf("unknown repository: %d", r.status)
	}

	var got []string
	for _, l := range jsonLines(t, &logs) {
		if l["msg"] == "request" && l["route"] != "base" {
			got = append(got, l["route"].(string)+" "+str(l["cache"])+" "+str(l["upstream"])+" "+strconv.Itoa(int(l["status"].(float64))))
		}
	}
	want := []string{
		"manifest miss docker.io 200", "manifest hit docker.io 200",
		"blob miss docker.io 200", "blob joined docker.io 200", // either order: sorted below
		"blob hit docker.io 200", "manifest stale docker.io 200", "manifest miss docker.io 404",
	}
	if !sameLines(got, want) {
		t.Fatalf("request log lines:\n%q\nwant\n%q", got, want)
	}

	got = got[:0]
	for _, a := range jsonLines(t, &trail) {
		got = append(got, str(a["action"])+" "+str(a["kind"])+" "+str(a["repository"])+" "+str(a["reference"])+" "+str(a["digest"])+" "+
			str(a["result"])+" "+str(a["upstream"])+" "+strconv.Itoa(int(a["status"].(float64)))+" "+str(a["address"]))
	}
	m, l := img.Manifest.Digest.String(), layer.Digest.String()
	want = []string{
		"pull manifest library/app 1.0 " + m + " miss docker.io 200 127.0.0.1",
		"pull manifest library/app 1.0 " + m + " hit docker.io 200 127.0.0.1",
		"pull blob library/app " + l + " " + l + " miss docker.io 200 127.0.0.1",
		"pull blob library/app " + l + " " + l + " joined docker.io 200 127.0.0.1",
		"pull blob library/app " + l + " " + l + " hit docker.io 200 127.0.0.1",
		"pull manifest library/app 1.0 " + m + " stale docker.io 200 127.0.0.1",
		"pull manifest library/nothing 1.0  miss docker.io 404 127.0.0.1",
	}
	if !sameLines(got, want) {
		t.Fatalf("audit lines:\n%q\nwant\n%q", got, want)
	}
}

func str(v any) string { s, _ := v.(string); return s }

// sameLines compares as multisets: concurrent requests log in either order.
func sameLines(got, want []string) bool {
	count := map[string]int{}
	for _, g := range got {
		count[g]++
	}
	for _, w := range want {
		count[w]--
	}
	for _, n := range count {
		if n != 0 {
			return false
		}
	}
	return len(got) == len(want)
}

// open sends a GET and returns the response once its headers are in, the
// body unread.
func (e *env) open(t *testing.T, path string) *http.Response {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, e.URL+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := e.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d", path, resp.StatusCode)
	}
	return resp
}

// The cache figures stay a page however many repositories were served:
// the top lists are cut server-side, and the repositories counted are
// bounded so that random names cannot grow memory.
func TestCacheFiguresArePaged(t *testing.T) {
	up := upstreamtest.New(t)
	e := newEnvAPI(t, t.TempDir(), cache.Config{}, "tok", spec{name: "docker.io", reg: up, def: true})
	const repos = 100_000
	for i := range repos + 10 {
		e.cache.Served("docker.io", "r/"+strconv.Itoa(i), int64(i), i%7 == 0)
	}
	r := e.do(t, http.MethodGet, "/api/v1/cache?top=5", "Authorization", "Bearer tok")
	if r.status != http.StatusOK || len(r.body) > 4096 {
		t.Fatalf("GET /api/v1/cache: %d, %d bytes", r.status, len(r.body))
	}
	var st struct {
		TopByBytes []struct {
			Repository string
			Bytes      int64
		} `json:"top_by_bytes"`
		TopByPulls []struct{ Repository string } `json:"top_by_pulls"`
	}
	if err := json.Unmarshal(r.body, &st); err != nil {
		t.Fatal(err)
	}
	// The 100,000th and later names were not counted: the largest counted is r/99999.
	if len(st.TopByBytes) != 5 || len(st.TopByPulls) != 5 || st.TopByBytes[0].Repository != "r/99999" || st.TopByBytes[0].Bytes != 99999 {
		t.Fatalf("top lists: %+v %+v", st.TopByBytes, st.TopByPulls)
	}
	if r := e.do(t, http.MethodGet, "/api/v1/cache?top=1000", "Authorization", "Bearer tok"); r.status != http.StatusBadRequest {
		t.Fatalf("top=1000: %d", r.status)
	}
}

// GET /api/v1/jobs?n= pages newest first, following Link: what the status
// page shows of thousands of jobs without sending them all.
func TestJobListPagesNewestFirst(t *testing.T) {
	p := newPromotion(t, t.TempDir(), cache.Config{}, replicate.Config{}, "", 0)
	p.seed(t)
	var ids []string
	for range 3 {
		id := p.submit(t, "application/json", "", `{"images": ["harbor-a.example.com/proj/app:1.0"]}`)
		p.wait(t, id)
		ids = append(ids, id)
	}
	var got []string
	path := "/api/v1/jobs?n=2"
	for pages := 0; path != ""; pages++ {
		if pages > 3 {
			t.Fatal("more pages than jobs")
		}
		r := p.do(t, http.MethodGet, path)
		var list struct{ Jobs []struct{ ID string } }
		if r.status != http.StatusOK || json.Unmarshal(r.body, &list) != nil {
			t.Fatalf("GET %s: %d %s", path, r.status, r.body)
		}
		for _, j := range list.Jobs {
			got = append(got, j.ID)
		}
		path = ""
		if link := r.header.Get("Link"); link != "" {
			path = link[strings.Index(link, "<")+1 : strings.Index(link, ">")]
		}
	}
	if want := []string{ids[2], ids[1], ids[0]}; !slices.Equal(got, want) {
		t.Fatalf("pages: %v, want %v", got, want)
	}
}
