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
	accessPrefix  = "/wharf/access"
	pinsPrefix    = "/wharf/pins"
	sourcesPrefix = "/wharf/sources" // <alg>/<hex>/<source>: see Store.AddSource
)

func accessKey(dgst digest.Digest) string {
	return path.Join(accessPrefix, string(dgst.Algorithm()), dgst.Encoded())
}

func sourcesKey(dgst digest.Digest) string {
	return path.Join(sourcesPrefix, string(dgst.Algorithm()), dgst.Encoded())
}

// AddSources records in the bucket that each of sources served blob dgst
// (see BlobInfo.Sources): one empty object each, so replicas adding
// theirs at once never overwrite each other's.
func (r *Bucket) AddSources(ctx context.Context, dgst digest.Digest, sources ...string) error {
	if err := dgst.Validate(); err != nil {
		return err
	}
	for _, s := range sources {
		if s == "" || strings.ContainsAny(s, "/ ") {
			return fmt.Errorf("source %q of blob %s: not a name", s, dgst)
		}
		if err := r.d.PutContent(ctx, path.Join(sourcesKey(dgst), s), []byte{}); err != nil {
			return fmt.Errorf("object store, sources of blob %s: %w", dgst, err)
		}
	}
	return nil
}

// Sources lists what the bucket records as sources of blob dgst; none for
// a blob uploaded by a Wharf before sources were kept.
func (r *Bucket) Sources(ctx context.Context, dgst digest.Digest) ([]string, error) {
	if err := dgst.Validate(); err != nil {
		return nil, err
	}
	keys, err := r.d.List(ctx, sourcesKey(dgst))
	if missing(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("object store, sources of blob %s: %w", dgst, err)
	}
	out := make([]string, 0, len(keys))
	for _, k := range keys {
		out = append(out, path.Base(k))
	}
	slices.Sort(out)
	return out, nil
}

// Touch records that blob dgst was served at t.
func (r *Bucket) Touch(ctx context.Context, dgst digest.Digest, t time.Time) error {
	if err := dgst.Validate(); err != nil {
		return err
	}
	return r.d.PutContent(ctx, accessKey(dgst), []byte(t.UTC().Format(time.RFC3339Nano)))
}

// PutPins records the digests replica keeps pinned.
func (r *Bucket) PutPins(ctx context.Context, replica string, dgsts []digest.Digest) error {
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
	Used   time.Time // when a replica last recorded a use, else the upload
}

// GCPolicy is what a collection may delete.
type GCPolicy struct {
	Keep    int64         // bytes of blobs to bring the bucket down to
	PinsAge time.Duration // pin lists older than this (a replica gone) spare nothing
	// MinAge spares every blob used or uploaded more recently, however far
	// above Keep the bucket stays: a use reaches the bucket up to
	// remoteUseEvery late, and a client redirected to a blob fetches it up
	// to a presigned URL's life (20 minutes) after the redirect's marker
	// (see Store.MarkUsed).
	MinAge time.Duration
	Dry    bool // only say what would be deleted
}

// GCResult is what a collection did (or, dry, would do).
type GCResult struct {
	Deleted       []RemoteBlob
	Before, After int64 // bytes of blobs in the bucket
	Pinned        int   // blobs spared because a replica pins them
	Recent        int   // blobs spared because used within MinAge
}

// GC deletes the least recently used blobs that no replica whose pin list
// is younger than p.PinsAge pins and nobody used within p.MinAge, until
// the bucket's blobs total at most p.Keep bytes. Each blob's marker is
// read again just before it is deleted: a replica may have redirected a
// client to it since the collection listed the bucket. A replica still
// indexing a deleted blob finds it gone and fetches it again.
func (r *Bucket) GC(ctx context.Context, p GCPolicy, now time.Time) (GCResult, error) {
	var res GCResult
	blobs, err := r.blobs(ctx)
	if err != nil {
		return res, err
	}
	pinned, err := r.pinned(ctx, now.Add(-p.PinsAge))
	if err != nil {
		return res, err
	}
	for _, b := range blobs {
		res.Before += b.Size
	}
	slices.SortFunc(blobs, func(a, b RemoteBlob) int { return a.Used.Compare(b.Used) })
	recent := func(t time.Time) bool { return t.After(now.Add(-p.MinAge)) }
	res.After = res.Before
	for _, b := range blobs {
		if res.After <= p.Keep {
			break
		}
		if pinned[b.Digest] {
			res.Pinned++
			continue
		}
		if recent(b.Used) {
			res.Recent++
			continue
		}
		if !p.Dry {
			if r.beforeDelete != nil {
				r.beforeDelete(b.Digest)
			}
			used, ok, err := r.marker(ctx, b.Digest)
			if err != nil {
				return res, fmt.Errorf("blob %s: its last use cannot be read, so it is not deleted: %w", b.Digest, err)
			}
			if ok && recent(used) {
				res.Recent++
				continue
			}
			if err := r.Delete(ctx, b.Digest); err != nil && !errors.Is(err, ErrNotFound) {
				return res, err
			}
			r.d.Delete(ctx, accessKey(b.Digest)) // a marker may be missing; a leftover one costs nothing
			r.d.Delete(ctx, sourcesKey(b.Digest))
		}
		res.Deleted = append(res.Deleted, b)
		res.After -= b.Size
	}
	return res, nil
}

// marker is the use recorded in dgst's marker: ok false if it has none (or
// one that is no time), err if the bucket would not say.
func (r *Bucket) marker(ctx context.Context, dgst digest.Digest) (used time.Time, ok bool, err error) {
	body, err := r.d.GetContent(ctx, accessKey(dgst))
	if missing(err) {
		return time.Time{}, false, nil
	}
	if err != nil {
		return time.Time{}, false, err
	}
	used, err = time.Parse(time.RFC3339Nano, string(body))
	return used, err == nil, nil
}

// blobs lists the bucket's blobs with their last recorded use, sorted by
// digest.
func (r *Bucket) blobs(ctx context.Context) ([]RemoteBlob, error) {
	var out []RemoteBlob
	err := r.walk(ctx, "/docker/registry/v2/blobs", func(fi storagedriver.FileInfo) error {
		// .../blobs/<algorithm>/<xx>/<hex>/data
		if fi.IsDir() || path.Base(fi.Path()) != "data" {
			return nil
		}
		dir := path.Dir(fi.Path())
		alg := path.Base(path.Dir(path.Dir(dir)))
		d := digest.NewDigestFromEncoded(digest.Algorithm(alg), path.Base(dir))
		if d.Validate() != nil {
			return nil
		}
		out = append(out, RemoteBlob{Digest: d, Size: fi.Size(), Used: fi.ModTime()})
		return nil
	})
	if err != nil {
		return nil, err
	}
	slices.SortFunc(out, func(a, b RemoteBlob) int { return strings.Compare(string(a.Digest), string(b.Digest)) })
	err = r.walk(ctx, accessPrefix, func(fi storagedriver.FileInfo) error {
		// /wharf/access/<algorithm>/<hex>
		if fi.IsDir() {
			return nil
		}
		d := digest.NewDigestFromEncoded(digest.Algorithm(path.Base(path.Dir(fi.Path()))), path.Base(fi.Path()))
		i, ok := slices.BinarySearchFunc(out, d, func(b RemoteBlob, d digest.Digest) int { return strings.Compare(string(b.Digest), string(d)) })
		if !ok {
			return nil
		}
		// The order is by when the marker was written, which is at or
		// after the use it records: a listing, and no read of each of a
		// million markers. The marker itself is read before its blob
		// would be deleted.
		if t := fi.ModTime(); t.After(out[i].Used) {
			out[i].Used = t
		}
		return nil
	})
	return out, err
}

// pinned is the union of the pin lists written since since.
func (r *Bucket) pinned(ctx context.Context, since time.Time) (map[digest.Digest]bool, error) {
	pinned := map[digest.Digest]bool{}
	err := r.walk(ctx, pinsPrefix, func(fi storagedriver.FileInfo) error {
		if fi.IsDir() || fi.ModTime().Before(since) {
			return nil
		}
		body, err := r.d.GetContent(ctx, fi.Path())
		if missing(err) {
			return nil // its replica went meanwhile
		}
		if err != nil {
			return fmt.Errorf("pin list %s cannot be read, so nothing is deleted: %w", fi.Path(), err)
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
func (r *Bucket) walk(ctx context.Context, prefix string, fn func(storagedriver.FileInfo) error) error {
	err := r.d.Walk(ctx, prefix, func(fi storagedriver.FileInfo) error { return fn(fi) })
	if missing(err) {
		return nil
	}
	return err
}
