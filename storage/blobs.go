package storage

import (
	_ "crypto/sha512" // SHA-512 for go-digest: sha512 digests are stored too
	"errors"
	"fmt"
	"hash"
	"os"
	"path/filepath"
	"slices"

	"github.com/opencontainers/go-digest"
)

// ErrNotFound is returned when a blob or index entry does not exist; callers
// test for it with errors.Is to tell "absent" from "broken".
var ErrNotFound = errors.New("not found")

// ErrDigestMismatch is returned by Commit when the bytes written do not hash
// to the expected digest or do not have the expected size.
var ErrDigestMismatch = errors.New("content does not match digest")

// algorithms are the digests the store keeps, each under blobs/<alg>/.
var algorithms = []digest.Algorithm{digest.SHA256, digest.SHA512}

// blobPath validates dgst before it becomes a path: only canonical sha256
// and sha512 digests are stored, so nothing a client sends can escape the
// root.
func (s *Store) blobPath(dgst digest.Digest) (string, error) {
	if err := dgst.Validate(); err != nil || !slices.Contains(algorithms, dgst.Algorithm()) {
		return "", fmt.Errorf("invalid digest %q: %w", dgst, ErrNotFound)
	}
	hex := dgst.Encoded()
	return filepath.Join(s.root, "docker", "registry", "v2", "blobs", string(dgst.Algorithm()), hex[:2], hex, "data"), nil
}

// Open returns the stored blob and its size. The file stays readable even if
// the blob is later evicted, so callers may stream it at leisure.
func (s *Store) Open(dgst digest.Digest) (*os.File, int64, error) {
	p, err := s.blobPath(dgst)
	if err != nil {
		return nil, 0, err
	}
	f, err := os.Open(p)
	if errors.Is(err, os.ErrNotExist) {
		// A record without a file (deleted behind our back): drop the
		// record too, so the blob is fetched again rather than reported
		// missing forever. Not found either way, even if the index
		// cannot take the deletion now.
		s.removeBlob(dgst)
		return nil, 0, fmt.Errorf("blob %s: %w", dgst, ErrNotFound)
	}
	if err != nil {
		return nil, 0, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, 0, err
	}
	return f, fi.Size(), nil
}

// Writer receives the bytes of one blob into a temporary file, hashing them
// as they arrive. Nothing is visible in the store until Commit succeeds.
type Writer struct {
	s         *Store
	f         *os.File
	dgst      digest.Digest
	mediaType string
	h         hash.Hash
	n         int64
	unchecked int64 // bytes written since the free space was last looked at
	inRemote  bool  // the remote tier has the blob already: Commit uploads nothing
	sources   []string
}

// From names whoever's bytes these are (see BlobInfo.Sources), recorded
// with the blob, and in the remote tier with its upload.
func (w *Writer) From(sources ...string) { w.sources = union(w.sources, sources) }

// InRemote tells Commit that the remote tier holds the blob already (the
// bytes came from it).
func (w *Writer) InRemote() { w.inRemote = true }

// Create starts writing the blob dgst. The caller must end with Commit or
// Cancel; Cancel after Commit is a no-op, so `defer w.Cancel()` is safe.
// Below MinFree it refuses with ErrNoSpace: the caller serves without
// storing.
func (s *Store) Create(dgst digest.Digest, mediaType string) (*Writer, error) {
	if _, err := s.blobPath(dgst); err != nil {
		return nil, err
	}
	if s.sp.low() || s.ReadOnly() {
		return nil, fmt.Errorf("store blob %s: %w", dgst, ErrNoSpace)
	}
	f, err := os.CreateTemp(s.tmpDir(), "fill-")
	if err != nil {
		return nil, fmt.Errorf("create temp blob: %w", err)
	}
	return &Writer{s: s, f: f, dgst: dgst, mediaType: mediaType, h: dgst.Algorithm().Hash()}, nil
}

// Name is the temporary file's path: readers of a fill in progress open it to
// follow the bytes as they land.
func (w *Writer) Name() string { return w.f.Name() }

// spaceCheck is how much a writer writes between looks at the free space.
const spaceCheck = 1 << 20

// Write appends p to the blob. It writes to the file before hashing so the
// hash only ever covers bytes that reached the disk. Once the filesystem is
// under MinFree it stops with ErrNoSpace, leaving the rest to the index.
func (w *Writer) Write(p []byte) (int, error) {
	n, err := w.f.Write(p)
	w.h.Write(p[:n])
	w.n += int64(n)
	if w.unchecked += int64(n); err == nil && w.unchecked >= spaceCheck {
		w.unchecked = 0
		if w.s.sp.low() {
			err = fmt.Errorf("store blob %s: %w", w.dgst, ErrNoSpace)
		}
	}
	return n, err
}

// Size is the number of bytes written so far.
func (w *Writer) Size() int64 { return w.n }

// Commit verifies digest and size (size < 0 skips the size check), makes the
// bytes durable, moves them into place, records the blob in the index
// and, with a bucket, queues its upload there (see uploads.go): nobody
// waits for the bucket. On any failure the temporary file is removed.
func (w *Writer) Commit(size int64) error {
	if w.f == nil {
		return errors.New("blob writer already closed")
	}
	defer w.Cancel()
	if err := w.Verify(size); err != nil {
		return err
	}
	if err := w.f.Sync(); err != nil {
		return fmt.Errorf("sync blob: %w", err)
	}
	p, _ := w.s.blobPath(w.dgst)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	if err := os.Rename(w.f.Name(), p); err != nil {
		return fmt.Errorf("commit blob: %w", err)
	}
	w.f.Close()
	w.f = nil
	if err := w.s.recordBlob(w.dgst, w.n, w.mediaType, w.sources); err != nil {
		return err
	}
	if !w.inRemote {
		// Stored here whatever becomes of it: the queue outlives a
		// restart, and a record it lacks is made up for when the blob is
		// next told to the bucket as used.
		w.s.queueUpload(w.dgst)
	}
	return nil
}

// Verify reports whether the bytes written so far are the blob: they hash
// to its digest and, if size >= 0, have that size. A fill uses it to release
// the last bytes to readers before the slower fsync in Commit.
func (w *Writer) Verify(size int64) error {
	got := digest.NewDigest(w.dgst.Algorithm(), w.h)
	if got != w.dgst || (size >= 0 && size != w.n) {
		return fmt.Errorf("%w: want %s (%d bytes), got %s (%d bytes)", ErrDigestMismatch, w.dgst, size, got, w.n)
	}
	return nil
}

// Cancel discards the temporary file.
func (w *Writer) Cancel() {
	if w.f == nil {
		return
	}
	w.f.Close()
	os.Remove(w.f.Name())
	w.f = nil
}
