package storage

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/opencontainers/go-digest"
)

func put(t *testing.T, s *Store, data string) digest.Digest {
	t.Helper()
	d := digest.FromString(data)
	w, err := s.Create(d, "")
	if err != nil {
		t.Fatal(err)
	}
	w.Write([]byte(data))
	if err := w.Commit(int64(len(data))); err != nil {
		t.Fatal(err)
	}
	return d
}

func TestCheckFindsAndRepairs(t *testing.T) {
	root := t.TempDir()
	s := open(t, root)
	good := put(t, s, "good")
	corrupt := put(t, s, "corrupt")
	dangling := put(t, s, "dangling")
	p, _ := s.blobPath(corrupt)
	os.WriteFile(p, []byte("tampered"), 0o644)
	p, _ = s.blobPath(dangling)
	os.Remove(p)
	// An orphan: a verified file whose record was lost in a crash.
	orphan := digest.FromString("orphan")
	p, _ = s.blobPath(orphan)
	os.MkdirAll(filepath.Dir(p), 0o755)
	os.WriteFile(p, []byte("orphan"), 0o644)
	// A file that is neither: wrong bytes and no record.
	junk := digest.FromString("junk")
	p, _ = s.blobPath(junk)
	os.MkdirAll(filepath.Dir(p), 0o755)
	os.WriteFile(p, []byte("not junk"), 0o644)

	kinds := func(ps []Problem) map[digest.Digest]string {
		m := map[digest.Digest]string{}
		for _, p := range ps {
			m[p.Digest] = p.Kind
		}
		return m
	}
	var calls int
	ps, err := s.Check(CheckOptions{Verify: true, Progress: func(done, total int) { calls++ }})
	if err != nil {
		t.Fatal(err)
	}
	want := map[digest.Digest]string{corrupt: "corrupt", dangling: "dangling", orphan: "orphan", junk: "corrupt"}
	if got := kinds(ps); len(got) != len(want) || got[corrupt] != "corrupt" || got[dangling] != "dangling" || got[orphan] != "orphan" || got[junk] != "corrupt" {
		t.Fatalf("problems: %v", ps)
	}
	if calls == 0 {
		t.Fatal("no progress reported")
	}
	if _, err := s.Check(CheckOptions{Verify: true, Repair: true}); err != nil {
		t.Fatal(err)
	}
	if ps, _ := s.Check(CheckOptions{Verify: true}); len(ps) != 0 {
		t.Fatalf("after repair: %v", ps)
	}
	if _, err := s.Blob(orphan); err != nil {
		t.Fatalf("orphan not indexed: %v", err)
	}
	if _, _, err := s.Open(corrupt); err == nil {
		t.Fatal("corrupt file kept")
	}
	if b, n := s.Size(); n != 2 || b != int64(len("good")+len("orphan")) {
		t.Fatalf("totals after repair: %d blobs, %d bytes", n, b)
	}
	_ = good
}

func TestReadSmallRefusesDamagedBytes(t *testing.T) {
	s := open(t, t.TempDir())
	d := put(t, s, `{"a":1}`)
	p, _ := s.blobPath(d)
	os.WriteFile(p, []byte(`{"a":2}`), 0o644)
	if _, _, err := s.ReadSmall(d, 100); err == nil {
		t.Fatal("damaged manifest read back")
	}
}

// A record whose file was deleted behind the store's back heals on first
// access instead of answering "not found" forever.
func TestOpenDropsARecordWithoutAFile(t *testing.T) {
	s := open(t, t.TempDir())
	d := put(t, s, "vanishing")
	p, _ := s.blobPath(d)
	os.Remove(p)
	if _, _, err := s.Open(d); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Open: %v", err)
	}
	if _, err := s.Blob(d); !errors.Is(err, ErrNotFound) {
		t.Fatalf("record kept: %v", err)
	}
	if b, n := s.Size(); b != 0 || n != 0 {
		t.Fatalf("totals: %d bytes, %d blobs", b, n)
	}
}

// A manifest recorded with a Content-Type like application/json (as older
// Wharfs did) is found, and repaired with the type its body declares, in
// its record and its tags.
func TestCheckRepairsManifestMediaTypes(t *testing.T) {
	s := open(t, t.TempDir())
	const oci = "application/vnd.oci.image.manifest.v1+json"
	body := `{"schemaVersion":2,"mediaType":"` + oci + `","config":{},"layers":[]}`
	d := digest.FromString(body)
	w, _ := s.Create(d, "application/json")
	w.Write([]byte(body))
	if err := w.Commit(int64(len(body))); err != nil {
		t.Fatal(err)
	}
	layer := put(t, s, "a layer, no type")
	s.PutTag("docker.io", "org/app", "1", TagInfo{Digest: d, MediaType: "application/json", Size: int64(len(body))})
	s.ReadSmall(d, 1<<20) // in the memory cache too
	ps, err := s.Check(CheckOptions{})
	if err != nil || len(ps) != 1 || ps[0].Kind != "mediatype" || ps[0].Digest != d {
		t.Fatalf("check: %v %+v", err, ps)
	}
	if _, err := s.Check(CheckOptions{Repair: true}); err != nil {
		t.Fatal(err)
	}
	if bi, _ := s.Blob(d); bi.MediaType != oci {
		t.Fatalf("record after repair: %q", bi.MediaType)
	}
	if _, bi, _ := s.ReadSmall(d, 1<<20); bi.MediaType != oci {
		t.Fatalf("read after repair: %q", bi.MediaType)
	}
	if ti, _ := s.Tag("docker.io", "org/app", "1"); ti.MediaType != oci {
		t.Fatalf("tag after repair: %q", ti.MediaType)
	}
	if bi, _ := s.Blob(layer); bi.MediaType != "" {
		t.Fatalf("a layer got a type: %q", bi.MediaType)
	}
	if ps, _ := s.Check(CheckOptions{}); len(ps) != 0 {
		t.Fatalf("after repair: %+v", ps)
	}
}

// Without verification, check reads only the manifests recorded with a
// type that is no manifest's; one recorded with another manifest's type
// is found when verifying, which reads them all.
func TestCheckReadsManifestsByTheirRecordedType(t *testing.T) {
	s := open(t, t.TempDir())
	body := `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{},"layers":[]}`
	d := digest.FromString(body)
	w, _ := s.Create(d, "application/vnd.docker.distribution.manifest.v2+json")
	w.Write([]byte(body))
	if err := w.Commit(int64(len(body))); err != nil {
		t.Fatal(err)
	}
	if ps, err := s.Check(CheckOptions{}); err != nil || len(ps) != 0 {
		t.Fatalf("check without verification: %v %+v", err, ps)
	}
	if ps, err := s.Check(CheckOptions{Verify: true}); err != nil || len(ps) != 1 || ps[0].Kind != "mediatype" || ps[0].Digest != d {
		t.Fatalf("check, verifying: %v %+v", err, ps)
	}
}
