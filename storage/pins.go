package storage

import (
	"cmp"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"path"
	"slices"
	"strings"
	"time"

	"github.com/dgraph-io/badger/v4"
	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"
	"github.com/opencontainers/go-digest"
)

// Pins that prefetch jobs set. With a bucket they live there, one empty
// object per pin whose key says everything, so that every replica of a
// fleet lists, spares and unpins the same ones whichever ran the job; a
// bucket that does not answer refuses a new pin rather than keep one that
// the rest of the fleet (and gc) cannot see. Without a bucket they live in
// the index. Pins an index held before the store had a bucket are still
// read (and can be removed) there.

// Pin is a manifest reference (tag or digest) of one upstream repository
// and the digest it resolved to when pinned: that content eviction spares,
// even if the tag moves on.
type Pin struct {
	Upstream, Repo, Ref string
	Digest              digest.Digest
}

// jobPinsPrefix holds the bucket's pins:
// <base64url upstream>/<repo>/_pin/<base64url ref>/<alg>.<hex>. No
// repository component starts with "_", and the drivers take only
// [A-Za-z0-9._-] in a key, hence the encoding of upstream (host:port) and
// reference.
const jobPinsPrefix = "/wharf/jobpins"

// pinTimeout bounds one call to the bucket about pins.
const pinTimeout = 30 * time.Second

var b64 = base64.RawURLEncoding

// pinDir is the key under which p's object lives, whatever its digest.
func pinDir(p Pin) string {
	return path.Join(jobPinsPrefix, b64.EncodeToString([]byte(p.Upstream)), p.Repo, "_pin", b64.EncodeToString([]byte(p.Ref)))
}

// parsePinKey reads a pin back from its object's key.
func parsePinKey(key string) (Pin, bool) {
	rest, ok := strings.CutPrefix(key, jobPinsPrefix+"/")
	up, rest, ok2 := strings.Cut(rest, "/")
	repo, rest, ok3 := strings.Cut(rest, "/_pin/")
	ref, dg, ok4 := strings.Cut(rest, "/")
	if !ok || !ok2 || !ok3 || !ok4 {
		return Pin{}, false
	}
	u, err1 := b64.DecodeString(up)
	r, err2 := b64.DecodeString(ref)
	alg, hex, _ := strings.Cut(dg, ".")
	d := digest.NewDigestFromEncoded(digest.Algorithm(alg), hex)
	if err1 != nil || err2 != nil || d.Validate() != nil {
		return Pin{}, false
	}
	return Pin{Upstream: string(u), Repo: repo, Ref: string(r), Digest: d}, true
}

// AddPin pins p until RemovePin: in the bucket when the store has one.
func (s *Store) AddPin(p Pin) error {
	if s.bucket == nil {
		return s.db.Update(func(txn *badger.Txn) error {
			return txn.Set(key(prefixPin, p.Upstream, p.Repo, p.Ref), []byte(p.Digest))
		})
	}
	if err := p.Digest.Validate(); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), pinTimeout)
	defer cancel()
	dir := pinDir(p)
	obj := path.Join(dir, string(p.Digest.Algorithm())+"."+p.Digest.Encoded())
	// A pin moved to another digest keeps only the new one.
	var stale []string
	err := s.bucket.walk(ctx, dir, func(fi storagedriver.FileInfo) error {
		if !fi.IsDir() && fi.Path() != obj {
			stale = append(stale, fi.Path())
		}
		return nil
	})
	if err == nil {
		err = s.bucket.d.PutContent(ctx, obj, nil)
	}
	for _, k := range stale {
		if err == nil {
			if err = s.bucket.d.Delete(ctx, k); missing(err) {
				err = nil
			}
		}
	}
	s.bucket.note(err)
	if err != nil {
		return fmt.Errorf("%w: pin %s/%s %s not saved: %w", ErrRemote, p.Upstream, p.Repo, p.Ref, err)
	}
	return nil
}

// RemovePin unpins p; it reports ErrNotFound if p was not pinned.
func (s *Store) RemovePin(p Pin) error {
	k := key(prefixPin, p.Upstream, p.Repo, p.Ref)
	local := s.db.Update(func(txn *badger.Txn) error {
		if _, err := txn.Get(k); errors.Is(err, badger.ErrKeyNotFound) {
			return ErrNotFound
		}
		return txn.Delete(k)
	})
	if s.bucket == nil || (local != nil && !errors.Is(local, ErrNotFound)) {
		return local
	}
	ctx, cancel := context.WithTimeout(context.Background(), pinTimeout)
	defer cancel()
	err := s.bucket.d.Delete(ctx, pinDir(p))
	if missing(err) {
		return local // ErrNotFound unless the index held it
	}
	s.bucket.note(err)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrRemote, err)
	}
	return nil
}

// Pins lists every pin, ordered by upstream, repository and reference. A
// bucket that cannot be listed is an error, never "nothing pinned".
func (s *Store) Pins() ([]Pin, error) {
	var pins []Pin
	err := s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{PrefetchValues: true, Prefix: []byte(prefixPin)})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			parts := splitKey(it.Item().Key()[len(prefixPin):])
			if len(parts) != 3 {
				continue
			}
			p := Pin{Upstream: parts[0], Repo: parts[1], Ref: parts[2]}
			if err := it.Item().Value(func(b []byte) error { p.Digest = digest.Digest(b); return nil }); err != nil {
				return err
			}
			pins = append(pins, p)
		}
		return nil
	})
	if err != nil || s.bucket == nil {
		return pins, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), pinTimeout)
	defer cancel()
	err = s.bucket.walk(ctx, jobPinsPrefix, func(fi storagedriver.FileInfo) error {
		if p, ok := parsePinKey(fi.Path()); ok && !fi.IsDir() {
			pins = append(pins, p)
		}
		return nil
	})
	s.bucket.note(err)
	if err != nil {
		return nil, fmt.Errorf("%w: pins: %w", ErrRemote, err)
	}
	slices.SortFunc(pins, func(a, b Pin) int {
		return cmp.Or(strings.Compare(a.Upstream, b.Upstream), strings.Compare(a.Repo, b.Repo), strings.Compare(a.Ref, b.Ref))
	})
	return slices.CompactFunc(pins, func(a, b Pin) bool {
		return a.Upstream == b.Upstream && a.Repo == b.Repo && a.Ref == b.Ref
	}), nil
}
