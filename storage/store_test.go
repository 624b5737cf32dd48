package storage

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
)

func open(t *testing.T, root string) *Store {
	t.Helper()
	s, err := Open(root, Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func tmpFiles(t *testing.T, s *Store) []os.DirEntry {
	t.Helper()
	ents, err := os.ReadDir(s.tmpDir())
	if err != nil {
		t.Fatal(err)
	}
	return ents
}

func TestCommitPlacesBlobInDistributionLayout(t *testing.T) {
	root := t.TempDir()
	s := open(t, root)
	data := []byte("hello, wharf")
	dgst := digest.FromBytes(data)
	w, err := s.Create(dgst, "application/octet-stream")
	if err != nil {
		t.Fatal(err)
	}
	w.Write(data[:5])
	w.Write(data[5:])
	if err := w.Commit(int64(len(data))); err != nil {
		t.Fatal(err)
	}
	hex := dgst.Encoded()
	got, err := os.ReadFile(filepath.Join(root, "docker/registry/v2/blobs/sha256", hex[:2], hex, "data"))
	if err != nil || string(got) != string(data) {
		t.Fatalf("blob on disk: %q %v", got, err)
	}
	f, size, err := s.Open(dgst)
	if err != nil || size != int64(len(data)) {
		t.Fatalf("Open: %d %v", size, err)
	}
	f.Close()
	if bi, err := s.Blob(dgst); err != nil || bi.Size != int64(len(data)) {
		t.Fatalf("Blob record: %+v %v", bi, err)
	}
	if b, n := s.Size(); b != int64(len(data)) || n != 1 {
		t.Fatalf("Size: %d bytes %d blobs", b, n)
	}
	if len(tmpFiles(t, s)) != 0 {
		t.Fatal("temp file left behind")
	}
}

func TestCommitRefusesWrongContent(t *testing.T) {
	s := open(t, t.TempDir())
	dgst := digest.FromString("right")
	for _, c := range []struct {
		data string
		size int64
	}{{"wrong", -1}, {"right", 4}} {
		w, _ := s.Create(dgst, "")
		io.WriteString(w, c.data)
		if err := w.Commit(c.size); !errors.Is(err, ErrDigestMismatch) {
			t.Fatalf("Commit(%q, %d): %v", c.data, c.size, err)
		}
	}
	if _, _, err := s.Open(dgst); !errors.Is(err, ErrNotFound) {
		t.Fatalf("unverified blob visible: %v", err)
	}
	if _, err := s.Blob(dgst); !errors.Is(err, ErrNotFound) {
		t.Fatalf("unverified blob indexed: %v", err)
	}
	if len(tmpFiles(t, s)) != 0 {
		t.Fatal("temp file left behind")
	}
}

func TestInvalidDigestsNeverBecomePaths(t *testing.T) {
	s := open(t, t.TempDir())
	for _, d := range []digest.Digest{"", "sha256:../../etc/passwd", "sha512:" + digest.Digest(string(make([]byte, 128))), "md5:abc"} {
		if _, err := s.Create(d, ""); err == nil {
			t.Errorf("Create(%q) accepted", d)
		}
		if _, _, err := s.Open(d); !errors.Is(err, ErrNotFound) {
			t.Errorf("Open(%q): %v", d, err)
		}
	}
}

func TestOpenRemovesLeftoverTempFilesAndKeepsIndex(t *testing.T) {
	root := t.TempDir()
	s, err := Open(root, Options{})
	if err != nil {
		t.Fatal(err)
	}
	w, _ := s.Create(digest.FromString("half"), "")
	w.Write([]byte("ha")) // a fill interrupted by a crash
	d := digest.FromString("x")
	now := time.Now().UTC().Truncate(time.Second)
	s.PutTag("docker.io", "library/app", "1", TagInfo{Digest: d, MediaType: "m", Size: 1, Checked: now})
	s.AddMembers("docker.io", "library/app", d)
	s.PutTagList("docker.io", "library/app", []string{"1", "2"}, now)
	s.Close()

	s = open(t, root)
	if n := len(tmpFiles(t, s)); n != 0 {
		t.Fatalf("%d temp files survived restart", n)
	}
	ti, err := s.Tag("docker.io", "library/app", "1")
	if err != nil || ti.Digest != d || !ti.Checked.Equal(now) {
		t.Fatalf("Tag after restart: %+v %v", ti, err)
	}
	if ok, _ := s.IsMember("docker.io", "library/app", d); !ok {
		t.Fatal("membership lost")
	}
	if ok, _ := s.IsMember("docker.io", "library/other", d); ok {
		t.Fatal("membership leaked to another repository")
	}
	if tags, _ := s.CachedTags("docker.io", "library/app"); len(tags) != 1 || tags[0] != "1" {
		t.Fatalf("CachedTags: %v", tags)
	}
	if tags, at, err := s.TagList("docker.io", "library/app"); err != nil || len(tags) != 2 || !at.Equal(now) {
		t.Fatalf("TagList: %v %v %v", tags, at, err)
	}
	if repos, _ := s.Repositories(); len(repos) != 1 || repos[0] != (Repository{"docker.io", "library/app"}) {
		t.Fatalf("Repositories: %v", repos)
	}
	if _, err := s.Tag("docker.io", "library/app", "nope"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("missing tag: %v", err)
	}
}
