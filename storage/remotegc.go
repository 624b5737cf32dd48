package storage

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path"
	"slices"
	"strings"
	"time"

	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"
	"github.com/opencontainers/go-digest"
)

// The bucket bounded: every replica records in the bucket when it last
// served each blob (a marker per blob, its content the time) and which
// digests it keeps pinned; `wharf gc` deletes the blobs least recently
// used across the fleet down to a size, sparing the pinned ones. Markers
// and pin lists live beside distribution's tree, under /wharf/.
const (
	accessPrefix = "/wharf/access"
	pinsPrefix   = "/wharf/pins"
)

func accessKey(dgst digest.Digest) string {
	return path.Join(accessPrefix, string(dgst.Algorithm()), dgst.Encoded())
}

// Touch records that blob dgst was served at t.
func (r *Remote) Touch(ctx context.Context, dgst digest.Digest, t time.Time) error {
	if err := dgst.Validate(); err != nil {
		return err
	}
	return r.d.PutContent(ctx, accessKey(dgst), []byte(t.UTC().Format(time.RFC3339Nano)))
}

// PutPins records the digests replica keeps pinned.
func (r *Remote) PutPins(ctx context.Context, replica string, dgsts []digest.Digest) error {
	body, err := json.Marshal(dgsts)
	if err != nil {
		return err
	}
	return r.d.PutContent(ctx, path.Join(pinsPrefix, replica), body)
}

// RemoteBlob is one blob of the bucket as gc sees it.
type RemoteBlob struct {
	Digest digest.Digest
	Size   int64
	Used   time.Time // the last use any replica recorded, else the upload
}

// GCResult is what a collection did (or, dry, would do).
type GCResult struct {
	Deleted       []RemoteBlob
	Before, After int64 // bytes of blobs in the bucket
	Pinned        int   // blobs spared because a replica pins them
}

// GC deletes the least recently used blobs not pinned by any replica whose
// pin list is younger than pinsAge, until the bucket's blobs total at most
// keep bytes; dry only says what it would delete. A replica still indexing
// a deleted blob finds it gone and fetches it again.
func (r *Remote) GC(ctx context.Context, keep int64, pinsAge time.Duration, now time.Time, dry bool) (GCResult, error) {
	var res GCResult
	blobs, err := r.blobs(ctx)
	if err != nil {
		return res, err
	}
	pinned, err := r.pinned(ctx, now.Add(-pinsAge))
	if err != nil {
		return res, err
	}
	for _, b := range blobs {
		res.Before += b.Size
	}
	slices.SortFunc(blobs, func(a, b RemoteBlob) int { return a.Used.Compare(b.Used) })
	res.After = res.Before
	for _, b := range blobs {
		if res.After <= keep {
			break
		}
		if pinned[b.Digest] {
			res.Pinned++
			continue
		}
		if !dry {
			if err := r.Delete(ctx, b.Digest); err != nil && !errors.Is(err, ErrNotFound) {
				return res, err
			}
			r.d.Delete(ctx, accessKey(b.Digest)) // a marker may be missing; a leftover one costs nothing
		}
		res.Deleted = append(res.Deleted, b)
		res.After -= b.Size
	}
	return res, nil
}

// blobs lists the bucket's blobs with their last recorded use.
func (r *Remote) blobs(ctx context.Context) ([]RemoteBlob, error) {
	var out []RemoteBlob
	byDigest := map[digest.Digest]int{}
	err := r.walk(ctx, "/docker/registry/v2/blobs", func(fi storagedriver.FileInfo) error {
		// .../blobs/<algorithm>/<xx>/<hex>/data
		parts := strings.Split(fi.Path(), "/")
		if fi.IsDir() || len(parts) < 4 || parts[len(parts)-1] != "data" {
			return nil
		}
		d := digest.NewDigestFromEncoded(digest.Algorithm(parts[len(parts)-4]), parts[len(parts)-2])
		if d.Validate() != nil {
			return nil
		}
		byDigest[d] = len(out)
		out = append(out, RemoteBlob{Digest: d, Size: fi.Size(), Used: fi.ModTime()})
		return nil
	})
	if err != nil {
		return nil, err
	}
	err = r.walk(ctx, accessPrefix, func(fi storagedriver.FileInfo) error {
		parts := strings.Split(fi.Path(), "/")
		if fi.IsDir() || len(parts) < 2 {
			return nil
		}
		i, ok := byDigest[digest.NewDigestFromEncoded(digest.Algorithm(parts[len(parts)-2]), parts[len(parts)-1])]
		if !ok {
			return nil
		}
		body, err := r.d.GetContent(ctx, fi.Path())
		if err != nil {
			return nil // gone meanwhile
		}
		if t, err := time.Parse(time.RFC3339Nano, string(body)); err == nil && t.After(out[i].Used) {
			out[i].Used = t
		}
		return nil
	})
	return out, err
}

// pinned is the union of the pin lists written since since.
func (r *Remote) pinned(ctx context.Context, since time.Time) (map[digest.Digest]bool, error) {
	pinned := map[digest.Digest]bool{}
	err := r.walk(ctx, pinsPrefix, func(fi storagedriver.FileInfo) error {
		if fi.IsDir() || fi.ModTime().Before(since) {
			return nil
		}
		body, err := r.d.GetContent(ctx, fi.Path())
		if err != nil {
			return nil
		}
		var ds []digest.Digest
		if err := json.Unmarshal(body, &ds); err != nil {
			return fmt.Errorf("pin list %s: %w", fi.Path(), err)
		}
		for _, d := range ds {
			pinned[d] = true
		}
		return nil
	})
	return pinned, err
}

// walk visits everything under prefix; a prefix with nothing under it is
// empty, not an error.
func (r *Remote) walk(ctx context.Context, prefix string, fn func(storagedriver.FileInfo) error) error {
	err := r.d.Walk(ctx, prefix, func(fi storagedriver.FileInfo) error { return fn(fi) })
	var nf storagedriver.PathNotFoundError
	if errors.As(err, &nf) {
		return nil
	}
	return err
}
