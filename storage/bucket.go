package storage

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"path"
	"sync"
	"time"

	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"
	"github.com/distribution/distribution/v3/registry/storage/driver/factory"
	"github.com/opencontainers/go-digest"

	// The object stores a fleet of Wharfs can share, registered with
	// distribution's driver factory.
	_ "github.com/distribution/distribution/v3/registry/storage/driver/s3-aws"
)

// ErrRemote marks a failure of the remote tier where the caller must know
// (a pin not saved): blobs never fail with it, their uploads wait in a
// queue.
var ErrRemote = errors.New("remote tier")

// remoteUploadTimeout bounds one upload: a bucket that stops answering
// must not hold a fill's slot forever.
const remoteUploadTimeout = 15 * time.Minute

// Bucket is the shared, durable tier of blobs when several Wharfs scale
// out: an object store reached through one of distribution's own storage
// drivers, configured with the parameters distribution documents for it,
// and keyed exactly as distribution keys blobs
// (docker/registry/v2/blobs/<algorithm>/<xx>/<hex>/data), so a bucket can
// be read by distribution or filled by one. A blob is uploaded whole and
// only after its digest verified: the drivers' writers commit an object
// at once (S3 completes a multipart upload in one step) or not at all.
type Bucket struct {
	d storagedriver.StorageDriver

	mu      sync.Mutex
	lastErr error     // of the last call that reached a verdict (ErrNotFound is an answer)
	lastAt  time.Time // when
	probing sync.Mutex

	beforeDelete func(digest.Digest) // tests: what happens between gc's listing and a deletion
}

// healthAge is how long the last call's outcome stands for the bucket's
// health before Healthy asks again.
const healthAge = 10 * time.Second

// note records a call's outcome for Healthy.
func (r *Bucket) note(err error) {
	if errors.Is(err, ErrNotFound) {
		err = nil
	}
	r.mu.Lock()
	r.lastErr, r.lastAt = err, time.Now()
	r.mu.Unlock()
}

// Healthy reports whether the bucket answers: the last call's outcome if
// recent, else one probe (a Stat, at most one at a time, 2 s at most).
func (r *Bucket) Healthy(ctx context.Context) error {
	r.mu.Lock()
	err, fresh := r.lastErr, time.Since(r.lastAt) < healthAge
	r.mu.Unlock()
	if fresh || !r.probing.TryLock() {
		return err
	}
	defer r.probing.Unlock()
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	_, err = r.d.Stat(ctx, "/wharf/health")
	err = remoteErr("", err)
	r.note(err)
	if errors.Is(err, ErrNotFound) {
		return nil
	}
	return err
}

// Down reports whether the bucket failed its last call within healthAge:
// lookups pass it by meanwhile, so that a bucket that hangs costs the
// misses nothing. Once the verdict is older, one probe (see Healthy) runs
// in the background and the bucket stays down until it answers.
func (r *Bucket) Down() bool {
	r.mu.Lock()
	err, fresh := r.lastErr, time.Since(r.lastAt) < healthAge
	r.mu.Unlock()
	if err == nil {
		return false
	}
	if !fresh {
		go r.Healthy(context.Background())
	}
	return true
}

// Failed records a call the caller gave up waiting for: the bucket is
// down until it answers again.
func (r *Bucket) Failed(err error) { r.note(err) }

// OpenBucket creates driver ("s3", or any name distribution's factory
// knows) with its parameters (for s3: bucket, region, regionendpoint,
// accesskey, secretkey, forcepathstyle, rootdirectory, ...).
//
// With AWS_CA_BUNDLE set, the s3 driver's SDK (aws-sdk-go v1) swaps
// http.DefaultClient's transport for one trusting that bundle, and does so
// again, racing, for every remote opened: Wharf opens one per process and
// never uses http.DefaultClient itself.
func OpenBucket(ctx context.Context, driver string, params map[string]any) (*Bucket, error) {
	name := driver
	if name == "s3" {
		name = "s3aws"
	}
	d, err := factory.Create(ctx, name, params)
	if err != nil {
		return nil, fmt.Errorf("storage driver %s: %w", driver, err)
	}
	return &Bucket{d: d}, nil
}

// remoteKey is dgst's object key, distribution's.
func remoteKey(dgst digest.Digest) (string, error) {
	if err := dgst.Validate(); err != nil {
		return "", err
	}
	hex := dgst.Encoded()
	return path.Join("/docker/registry/v2/blobs", string(dgst.Algorithm()), hex[:2], hex, "data"), nil
}

// Upload stores the size bytes r yields as blob dgst. The caller has
// verified them; a short or failed copy leaves no object behind.
func (r *Bucket) Upload(ctx context.Context, dgst digest.Digest, size int64, src io.Reader) error {
	key, err := remoteKey(dgst)
	if err != nil {
		return err
	}
	w, err := r.d.Writer(ctx, key, false)
	if err != nil {
		return fmt.Errorf("upload blob %s: %w", dgst, err)
	}
	n, err := io.Copy(w, src)
	if err == nil && n != size {
		err = fmt.Errorf("%d bytes of %d", n, size)
	}
	if err == nil {
		err = w.Commit(ctx)
	}
	if err != nil {
		err = errors.Join(err, w.Cancel(ctx))
	}
	if cerr := w.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("upload blob %s: %w", dgst, err)
	}
	return nil
}

// Stat is blob dgst's size in the object store; ErrNotFound if it has none.
func (r *Bucket) Stat(ctx context.Context, dgst digest.Digest) (int64, error) {
	key, err := remoteKey(dgst)
	if err != nil {
		return 0, err
	}
	fi, err := r.d.Stat(ctx, key)
	err = remoteErr(dgst, err)
	if ctx.Err() == nil {
		r.note(err)
	}
	if err != nil {
		return 0, err
	}
	return fi.Size(), nil
}

// Open reads blob dgst from offset on.
func (r *Bucket) Open(ctx context.Context, dgst digest.Digest, offset int64) (io.ReadCloser, error) {
	key, err := remoteKey(dgst)
	if err != nil {
		return nil, err
	}
	rc, err := r.d.Reader(ctx, key, offset)
	if err != nil {
		return nil, remoteErr(dgst, err)
	}
	return rc, nil
}

// Delete removes blob dgst; ErrNotFound if it has none.
func (r *Bucket) Delete(ctx context.Context, dgst digest.Digest) error {
	key, err := remoteKey(dgst)
	if err != nil {
		return err
	}
	return remoteErr(dgst, r.d.Delete(ctx, key))
}

// RedirectURL is a short-lived URL from which a client may GET blob dgst
// itself (a presigned URL for s3), or "" when the driver offers none.
func (r *Bucket) RedirectURL(ctx context.Context, dgst digest.Digest) (string, error) {
	key, err := remoteKey(dgst)
	if err != nil {
		return "", err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "/", nil)
	if err != nil {
		return "", err
	}
	u, err := r.d.RedirectURL(req, key)
	if err != nil {
		return "", remoteErr(dgst, err)
	}
	return u, nil
}

// missing reports whether err is the driver's "no such path", the one
// failure that means absent rather than unknown.
func missing(err error) bool {
	var nf storagedriver.PathNotFoundError
	return errors.As(err, &nf)
}

// remoteErr turns a driver's "no such path" into ErrNotFound, and keeps
// anything else (an outage, a refusal) an error of its own: a bucket that
// cannot be asked says nothing about whether it holds a blob.
func remoteErr(dgst digest.Digest, err error) error {
	if err == nil {
		return nil
	}
	if missing(err) {
		return fmt.Errorf("blob %s in the object store: %w", dgst, ErrNotFound)
	}
	return fmt.Errorf("object store, blob %s: %w", dgst, err)
}
