package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/wharf-registry/wharf/upstream/upstreamtest"
)

// promote measures copying the whole data set to a second registry: a
// Wharf prefetch job with push_to against `crane copy` of each image
// straight from the upstream (compressed blobs as they are, four images at
// a time, as a job copies them). Rows: a cold cache and an empty target;
// the same again (everything already there); a warm cache and a new empty
// target.
func (b *bench) promote(up *upstreamtest.Registry, imgs []upstreamtest.Image, set func(scenario, tgt string, v float64)) error {
	const cold, again, warm = "promote all to a new registry, cold", "promote all again (all present)", "promote all to a new registry, warm cache"
	newTarget := func() *upstreamtest.Registry { return upstreamtest.New(b, upstreamtest.WithFilesystem(b.TempDir())) }
	refs := make([]string, len(imgs))
	for i, img := range imgs {
		refs[i] = img.Repo + ":" + img.Tag
	}

	fmt.Fprintln(os.Stderr, "measuring promotion through wharf...")
	dst, dst2 := newTarget(), newTarget()
	t, err := b.startWharf(up.URL, fmt.Sprintf("targets:\n  - {name: b, url: %s, insecure: true}\n  - {name: c, url: %s, insecure: true}\n", dst.URL, dst2.URL))
	if err != nil {
		return err
	}
	defer t.stop()
	for _, c := range []struct{ scenario, target string }{{cold, "b"}, {again, "b"}, {warm, "c"}} {
		d, err := b.job(t.url, refs, c.target)
		if err != nil {
			return err
		}
		set(c.scenario, "wharf", d)
	}
	set("promote: peak RSS", "wharf", t.rss())
	t.stop()

	// Memory must not grow with blob size: one 512 MiB layer through a
	// fresh Wharf (chunked, 64 MiB at a time) against the big image's
	// 64 MiB layers.
	for _, c := range []struct {
		scenario string
		ref      string
	}{{"promote one image of 64 MiB layers: peak RSS", refs[0]}, {"promote one 512 MiB layer: peak RSS", b.hugeImage(up)}} {
		t, err := b.startWharf(up.URL, fmt.Sprintf("targets:\n  - {name: b, url: %s, insecure: true}\n", newTarget().URL))
		if err != nil {
			return err
		}
		if _, err := b.job(t.url, []string{c.ref}, "b"); err != nil {
			return err
		}
		set(c.scenario, "wharf", t.rss())
		set(c.scenario, "direct", -1)
		t.stop()
	}

	set("promote: peak RSS", "direct", -1)
	crane, err := exec.LookPath("crane")
	if err != nil {
		crane, err = exec.LookPath("bin/crane") // where make tools puts it
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "crane not found (make tools installs it into bin/): no direct figures for promotion")
		for _, s := range []string{cold, again, warm} {
			set(s, "direct", -1)
		}
		return nil
	}
	fmt.Fprintln(os.Stderr, "measuring promotion with crane copy...")
	dst = newTarget()
	copyAll := func() error {
		return parallel(4, len(refs), func(i int) error {
			src, to := strings.TrimPrefix(up.URL, "http://")+"/"+refs[i], strings.TrimPrefix(dst.URL, "http://")+"/"+refs[i]
			if out, err := exec.Command(crane, "copy", "--insecure", src, to).CombinedOutput(); err != nil {
				return fmt.Errorf("crane copy %s: %v\n%s", refs[i], err, out)
			}
			return nil
		})
	}
	for _, s := range []string{cold, again} {
		d, err := timedErr(copyAll)
		if err != nil {
			return err
		}
		set(s, "direct", d)
	}
	set(warm, "direct", -1) // crane has no cache: the cold figure applies
	return nil
}

// hugeImage pushes an image of one 512 MiB layer and returns its reference.
func (b *bench) hugeImage(up *upstreamtest.Registry) string {
	l := upstreamtest.NewBlob(upstreamtest.Random(7, b.sizes.huge))
	up.PushLayers(b, "bench/huge", "v1", []upstreamtest.Blob{l}, []digest.Digest{l.Digest}, amd64)
	return "bench/huge:v1"
}

// job runs one prefetch job to the end and returns its duration.
func (b *bench) job(url string, refs []string, pushTo string) (float64, error) {
	body, _ := json.Marshal(map[string]any{"images": refs, "push_to": pushTo})
	start := time.Now()
	resp, err := http.Post(url+"/api/v1/prefetch", "application/json", bytes.NewReader(body))
	if err != nil {
		return 0, err
	}
	var job struct {
		ID    string `json:"id"`
		State string `json:"state"`
		Error string `json:"error"`
	}
	err = json.NewDecoder(resp.Body).Decode(&job)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusAccepted {
		return 0, fmt.Errorf("prefetch: %d %v", resp.StatusCode, err)
	}
	resp, err = http.Get(url + "/api/v1/jobs/" + job.ID + "?wait=10m")
	if err != nil {
		return 0, err
	}
	err = json.NewDecoder(resp.Body).Decode(&job)
	resp.Body.Close()
	d := time.Since(start).Seconds()
	if err != nil || job.State != "done" {
		return 0, fmt.Errorf("prefetch job %s ended %s: %v %s%s", job.ID, job.State, err, job.Error, failedImages(url, job.ID))
	}
	return d, nil
}

// failedImages lists why a job's images failed, for the error above.
func failedImages(url, id string) string {
	resp, err := http.Get(url + "/api/v1/jobs/" + id + "/images?state=failed&n=10")
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	var page struct {
		Images []struct{ Source, Error string }
	}
	json.NewDecoder(resp.Body).Decode(&page)
	return fmt.Sprintf(" %+v", page.Images)
}

func timedErr(f func() error) (float64, error) {
	start := time.Now()
	err := f()
	return time.Since(start).Seconds(), err
}

// replicateByRule measures the whole set (52 images: the big one, the 50
// small ones and the index, every platform) copied by a replication rule
// run by hand (its sources name every repository, as a team's rule would)
// on a cold Wharf, against `skopeo sync --all` of the same list.
func (b *bench) replicateByRule(up *upstreamtest.Registry, imgs [][2]string, set func(scenario, tgt string, v float64)) error {
	const scenario = "replicate all by a rule, cold (direct: skopeo sync)"
	set(scenario, "distribution", -1)
	newTarget := func() *upstreamtest.Registry { return upstreamtest.New(b, upstreamtest.WithFilesystem(b.TempDir())) }
	var sources, yml strings.Builder
	fmt.Fprintf(&yml, "%s:\n  tls-verify: false\n  images:\n", strings.TrimPrefix(up.URL, "http://"))
	for i, img := range imgs {
		if i > 0 {
			sources.WriteString(", ")
		}
		sources.WriteString("docker.io/" + img[0])
		fmt.Fprintf(&yml, "    %s: [%s]\n", img[0], img[1])
	}
	fmt.Fprintln(os.Stderr, "measuring a replication rule...")
	dst := newTarget()
	t, err := b.startWharf(up.URL, fmt.Sprintf("targets:\n  - {name: b, url: %s, insecure: true}\nreplication:\n  - {name: all, sources: [%s], target: b, schedule: '@every 24h'}\n", dst.URL, sources.String()))
	if err != nil {
		return err
	}
	defer t.stop()
	start := time.Now()
	resp, err := http.Post(t.url+"/api/v1/replication/all/run", "application/json", strings.NewReader("{}"))
	if err != nil {
		return err
	}
	var run struct {
		Job struct{ ID string }
	}
	err = json.NewDecoder(resp.Body).Decode(&run)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusAccepted {
		return fmt.Errorf("replication run: %d %v", resp.StatusCode, err)
	}
	resp, err = http.Get(t.url + "/api/v1/jobs/" + run.Job.ID + "?wait=10m")
	if err != nil {
		return err
	}
	var job struct{ State string }
	err = json.NewDecoder(resp.Body).Decode(&job)
	resp.Body.Close()
	if err != nil || job.State != "done" {
		return fmt.Errorf("replication job %s ended %s: %v%s", run.Job.ID, job.State, err, failedImages(t.url, run.Job.ID))
	}
	ruleTime := time.Since(start).Seconds()
	set(scenario, "wharf", ruleTime)
	set("replicate all by a rule, cold (direct: crane copy)", "wharf", ruleTime)

	skopeo, err := exec.LookPath("skopeo")
	if err != nil {
		fmt.Fprintln(os.Stderr, "skopeo not found (make test installs it): no skopeo figure for the rule")
		set(scenario, "direct", -1)
		return b.craneCopy(up, imgs, set, "replicate all by a rule, cold (direct: crane copy)")
	}
	file := b.TempDir() + "/sync.yml"
	if err := os.WriteFile(file, []byte(yml.String()), 0o644); err != nil {
		return err
	}
	dst = newTarget()
	d, err := timedErr(func() error {
		out, err := exec.Command(skopeo, "sync", "--all", "--src", "yaml", "--dest", "docker", "--dest-tls-verify=false", file, strings.TrimPrefix(dst.URL, "http://")).CombinedOutput()
		if err != nil {
			return fmt.Errorf("skopeo sync: %v\n%s", err, out)
		}
		return nil
	})
	if err != nil {
		return err
	}
	set(scenario, "direct", d)
	return b.craneCopy(up, imgs, set, "replicate all by a rule, cold (direct: crane copy)")
}

// craneCopy times crane copy of every image of the list, four at a time,
// into a new registry, for the rule row's second comparison.
func (b *bench) craneCopy(up *upstreamtest.Registry, imgs [][2]string, set func(scenario, tgt string, v float64), row string) error {
	crane, err := exec.LookPath("crane")
	if err != nil {
		crane, err = exec.LookPath("bin/crane")
	}
	set(row, "distribution", -1)
	if err != nil {
		set(row, "direct", -1)
		return nil
	}
	dst := upstreamtest.New(b, upstreamtest.WithFilesystem(b.TempDir()))
	d, err := timedErr(func() error {
		return parallel(4, len(imgs), func(i int) error {
			ref := imgs[i][0] + ":" + imgs[i][1]
			src, to := strings.TrimPrefix(up.URL, "http://")+"/"+ref, strings.TrimPrefix(dst.URL, "http://")+"/"+ref
			if out, err := exec.Command(crane, "copy", "--insecure", src, to).CombinedOutput(); err != nil {
				return fmt.Errorf("crane copy %s: %v\n%s", ref, err, out)
			}
			return nil
		})
	})
	if err != nil {
		return err
	}
	set(row, "direct", d)
	return nil
}
