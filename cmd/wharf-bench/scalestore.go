package main

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/wharf-registry/wharf/storage"
)

// buildStore writes n blobs as files in distribution's layout and the
// index records a Wharf that pulled them would have: tags, memberships,
// job records. The blob records themselves are left to wharf check
// --repair, as after a lost index.
func buildStore(root string, n int) (*synthetic, error) {
	st, err := storage.Open(root, storage.Options{})
	if err != nil {
		return nil, err
	}
	defer st.Close()
	images := max(n/3, 1)
	repos := max(n/10, 1)
	syn := &synthetic{}
	rng := rand.New(rand.NewPCG(uint64(n), 2))
	write := func(data []byte) (digest.Digest, error) {
		d := digest.FromBytes(data)
		p := filepath.Join(root, "docker/registry/v2/blobs/sha256", d.Encoded()[:2], d.Encoded(), "data")
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return "", err
		}
		syn.bytes += int64(len(data))
		syn.count++
		return d, os.WriteFile(p, data, 0o644)
	}
	members := map[int][]digest.Digest{}
	for i := range images {
		repo := i % repos
		cfg := make([]byte, 200+rng.IntN(600))
		layer := make([]byte, 256+rng.IntN(1024))
		for _, b := range [][]byte{cfg, layer} {
			for j := range b {
				b[j] = byte(rng.Uint32())
			}
		}
		c, err := write(cfg)
		if err != nil {
			return nil, err
		}
		l, err := write(layer)
		if err != nil {
			return nil, err
		}
		m, _ := json.Marshal(ocispec.Manifest{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageManifest,
			Config: ocispec.Descriptor{MediaType: ocispec.MediaTypeImageConfig, Digest: c, Size: int64(len(cfg))},
			Layers: []ocispec.Descriptor{{MediaType: ocispec.MediaTypeImageLayerGzip, Digest: l, Size: int64(len(layer))}}})
		md, err := write(m)
		if err != nil {
			return nil, err
		}
		syn.manifests = append(syn.manifests, md)
		members[repo] = append(members[repo], md, c, l)
		name := fmt.Sprintf("scale/r%06d", repo)
		syn.blobs = append(syn.blobs, [2]string{name, c.String()}, [2]string{name, l.String()})
	}
	for repo, ds := range members {
		if err := st.AddMembers("docker.io", fmt.Sprintf("scale/r%06d", repo), ds...); err != nil {
			return nil, err
		}
	}
	// n tags: half on a tenth of the repositories (the busy ones), half
	// spread over the rest, each naming one of its repository's images.
	now := time.Now()
	busy := max(repos/10, 1)
	for i := range n {
		repo := i % busy
		if i%2 == 1 && repos > busy {
			repo = busy + i%(repos-busy)
		}
		own := members[repo] // manifest, config, layer of each of its images
		if len(own) == 0 {
			continue
		}
		md := own[3*rng.IntN(len(own)/3)]
		name, tag := fmt.Sprintf("scale/r%06d", repo), fmt.Sprintf("v%d", i)
		ti := storage.TagInfo{Digest: md, MediaType: ocispec.MediaTypeImageManifest, Checked: now}
		if err := st.PutTag("docker.io", name, tag, ti); err != nil {
			return nil, err
		}
		syn.tags = append(syn.tags, [3]string{name, tag, md.String()})
	}
	// Job records: two hundred finished jobs of 20 images each.
	for j := range 200 {
		job, _ := json.Marshal(map[string]any{"id": fmt.Sprintf("scale-%04d", j), "state": "done", "created": now, "images": 20})
		imgs := map[int][]byte{}
		for i := range 20 {
			imgs[i], _ = json.Marshal(map[string]any{"index": i, "source": "docker.io/" + syn.tags[(j*20+i)%len(syn.tags)][0], "state": "done"})
		}
		if err := st.PutJob(fmt.Sprintf("scale-%04d", j), job, imgs); err != nil {
			return nil, err
		}
	}
	return syn, nil
}

// typeManifests records each manifest's media type, as the Wharf that
// fetched it would have: wharf check --repair indexes files without one.
func typeManifests(root string, manifests []digest.Digest) error {
	st, err := storage.Open(root, storage.Options{})
	if err != nil {
		return err
	}
	defer st.Close()
	for _, d := range manifests {
		if err := st.SetMediaType(d, ocispec.MediaTypeImageManifest); err != nil {
			return err
		}
	}
	return nil
}

// churn opens the store and updates tags (each a new digest), writes and
// deletes jobs, and writes, indexes and evicts blobs, as months of a busy
// mirror would, then lets the index collect itself and reports its size
// before and after.
func churn(root string, syn *synthetic, updates, jobCycles, blobCycles int) (live, after int64, err error) {
	st, err := storage.Open(root, storage.Options{})
	if err != nil {
		return 0, 0, err
	}
	defer st.Close()
	lsm, vlog := indexSize(filepath.Join(root, "index"))
	live = lsm + vlog
	now := time.Now()
	for i := range updates {
		tg := syn.tags[i%len(syn.tags)]
		ti := storage.TagInfo{Digest: digest.FromString(strconv.Itoa(i)), MediaType: ocispec.MediaTypeImageManifest, Checked: now}
		if err := st.PutTag("docker.io", tg[0], tg[1], ti); err != nil {
			return 0, 0, err
		}
	}
	// Jobs come and go (the index keeps the last 200): each cycle writes
	// a job of 20 images and deletes one.
	for i := range jobCycles {
		id := fmt.Sprintf("churn-%07d", i)
		imgs := map[int][]byte{}
		for k := range 20 {
			imgs[k] = []byte(fmt.Sprintf(`{"index":%d,"source":"docker.io/%s","state":"done"}`, k, syn.tags[(i+k)%len(syn.tags)][0]))
		}
		if err := st.PutJob(id, []byte(`{"id":"`+id+`","state":"done"}`), imgs); err != nil {
			return 0, 0, err
		}
		if err := st.DeleteJob(id); err != nil {
			return 0, 0, err
		}
	}
	// Blobs come and go: written, indexed, then evicted, a round of up
	// to 100,000 at a time.
	for done := 0; done < blobCycles; {
		round := min(blobCycles-done, 100_000)
		before, _ := st.Size()
		fresh := make(map[digest.Digest]bool, round)
		for i := range round {
			data := []byte("churn blob " + strconv.Itoa(done+i))
			d := digest.FromBytes(data)
			p := filepath.Join(root, "docker/registry/v2/blobs/sha256", d.Encoded()[:2], d.Encoded(), "data")
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				return 0, 0, err
			}
			if err := os.WriteFile(p, data, 0o644); err != nil {
				return 0, 0, err
			}
			if err := st.Adopt(d); err != nil {
				return 0, 0, err
			}
			fresh[d] = true
		}
		gone, _, err := st.Evict(before, func(d digest.Digest) bool { return !fresh[d] })
		if err != nil {
			return 0, 0, err
		}
		if len(gone) != round {
			return 0, 0, fmt.Errorf("churn: evicted %d blobs of the %d just written", len(gone), round)
		}
		done += round
	}
	// Put back what the tags were: the live set is what it was.
	for _, tg := range syn.tags {
		ti := storage.TagInfo{Digest: digest.Digest(tg[2]), MediaType: ocispec.MediaTypeImageManifest, Checked: now}
		if err := st.PutTag("docker.io", tg[0], tg[1], ti); err != nil {
			return 0, 0, err
		}
	}
	st.CollectIndex()
	lsm, vlog = indexSize(filepath.Join(root, "index"))
	return live, lsm + vlog, nil
}

// indexSize is the bytes of the index's tables and value log.
func indexSize(dir string) (lsm, vlog int64) {
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		fi, err := e.Info()
		if err != nil {
			continue
		}
		used := fi.Size()
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			used = st.Blocks * 512 // a value-log file is created sparse, at twice its size
		}
		switch filepath.Ext(e.Name()) {
		case ".sst":
			lsm += used
		case ".vlog":
			vlog += used
		}
	}
	return lsm, vlog
}
