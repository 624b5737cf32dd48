package storage

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sync"

	"github.com/dgraph-io/badger/v4"
	"github.com/opencontainers/go-digest"
	"github.com/wharf-registry/wharf/oci"
	"golang.org/x/sync/errgroup"
)

// Problem is one inconsistency between the blob files and the index.
type Problem struct {
	Digest digest.Digest
	Kind   string // "orphan": file without record; "dangling": record without file; "corrupt": wrong bytes; "mediatype": recorded type not the one the manifest declares
	Detail string
}

// CheckOptions tune Check.
type CheckOptions struct {
	// Verify hashes stored blobs; Sample picks which: one in every Sample
	// in digest order, from a random start, so that repeated runs cover
	// different blobs (0 or 1: all). Orphans are always verified.
	Verify bool
	Sample int
	// Repair fixes what it finds: orphans that verify are indexed, corrupt
	// files and dangling records are removed (a later pull refetches).
	Repair bool
	// Progress is called after each blob with how many of total are done.
	Progress func(done, total int)
}

// Check walks the blob files and the index and reports (and with Repair
// fixes) every disagreement. It is safe to run on a store that is not
// serving; a live server would race it.
func (s *Store) Check(opts CheckOptions) ([]Problem, error) {
	files, err := s.blobFiles()
	if err != nil {
		return nil, err
	}
	records := map[digest.Digest]BlobInfo{}
	err = s.eachBlob(func(dgst digest.Digest, bi BlobInfo) error {
		records[dgst] = bi
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read index: %w", err)
	}
	// Manifests whose recorded type is checked against their bodies: all
	// of them when verifying, otherwise those recorded with a type that
	// is no manifest's (what older Wharfs took from a Content-Type).
	typed := map[digest.Digest]string{}
	for dgst, bi := range records {
		if bi.MediaType != "" && bi.Size <= maxManifest && (opts.Verify || !oci.IsManifestType(bi.MediaType)) {
			typed[dgst] = bi.MediaType
		}
	}
	var problems []Problem
	total, done := len(files)+len(records), 0
	step := func() {
		done++
		if opts.Progress != nil {
			opts.Progress(done, total)
		}
	}
	order := slices.Sorted(maps.Keys(files))
	sample := max(opts.Sample, 1)
	start := rand.IntN(sample)
	for i, dgst := range order {
		size := files[dgst]
		bi, indexed := records[dgst]
		delete(records, dgst)
		verify := opts.Verify && (i+start)%sample == 0
		if !indexed || verify {
			if err := s.verifyFile(dgst, size); err != nil {
				problems = append(problems, Problem{dgst, "corrupt", err.Error()})
				if opts.Repair {
					if err := s.removeBlob(dgst); err != nil {
						return problems, err
					}
				}
				step()
				continue
			}
		}
		if !indexed {
			problems = append(problems, Problem{dgst, "orphan", fmt.Sprintf("%d bytes on disk, not in the index", size)})
			if opts.Repair {
				if err := s.recordBlob(dgst, size, "", []string{Unsourced}); err != nil {
					return problems, err
				}
			}
		} else if bi.Size != size {
			problems = append(problems, Problem{dgst, "corrupt", fmt.Sprintf("%d bytes on disk, index says %d", size, bi.Size)})
			if opts.Repair {
				if err := s.removeBlob(dgst); err != nil {
					return problems, err
				}
			}
		}
		step()
	}
	for dgst := range records {
		problems = append(problems, Problem{dgst, "dangling", "in the index, no file"})
		if opts.Repair {
			if err := s.removeBlob(dgst); err != nil {
				return problems, err
			}
		}
		step()
	}
	if opts.Progress != nil {
		opts.Progress(total, total)
	}
	wrong, err := s.checkMediaTypes(typed, opts.Repair)
	return append(problems, wrong...), err
}

// checkMediaTypes compares the media type recorded for each manifest in
// recorded (a blob with a type on record) with the one its body declares.
// Older Wharfs took it from upstream's Content-Type, which may have been
// application/json or anything else; Repair rewrites the record and the
// tags that resolve to it.
func (s *Store) checkMediaTypes(recorded map[digest.Digest]string, repair bool) ([]Problem, error) {
	var problems []Problem
	fixed := map[digest.Digest]string{}
	for _, dgst := range slices.Sorted(maps.Keys(recorded)) {
		body, _, rerr := s.ReadSmall(dgst, maxManifest)
		var m struct {
			MediaType string `json:"mediaType"`
		}
		if rerr != nil || json.Unmarshal(body, &m) != nil || m.MediaType == "" || m.MediaType == recorded[dgst] {
			continue
		}
		problems = append(problems, Problem{dgst, "mediatype", fmt.Sprintf("recorded as %s, declares %s", recorded[dgst], m.MediaType)})
		fixed[dgst] = m.MediaType
	}
	var err error
	if err != nil || !repair {
		return problems, err
	}
	for dgst, mt := range fixed {
		if err := s.SetMediaType(dgst, mt); err != nil {
			return problems, err
		}
	}
	tags, err := s.AllTags()
	for _, t := range tags {
		if mt, ok := fixed[t.Digest]; ok && err == nil {
			var ti TagInfo
			if ti, err = s.Tag(t.Upstream, t.Repo, t.Tag); err == nil {
				ti.MediaType = mt
				err = s.PutTag(t.Upstream, t.Repo, t.Tag, ti)
			}
		}
	}
	return problems, err
}

// maxManifest is the largest blob checkMediaTypes reads as a manifest.
const maxManifest = 4 << 20

// blobFiles lists every data file under blobs/ with its size. Files whose
// path is not a valid digest are ignored: they cannot be served.
func (s *Store) blobFiles() (map[digest.Digest]int64, error) {
	files := map[digest.Digest]int64{}
	for _, alg := range algorithms {
		root := filepath.Join(s.root, "docker", "registry", "v2", "blobs", string(alg))
		prefixes, err := os.ReadDir(root)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, err
		}
		// The <xx> directories a few at a time: a walk is mostly waiting
		// on directory reads and stats, which overlap.
		var mu sync.Mutex
		var g errgroup.Group
		g.SetLimit(4)
		for _, pre := range prefixes {
			if !pre.IsDir() {
				continue
			}
			g.Go(func() error {
				found, err := walkPrefix(filepath.Join(root, pre.Name()), alg)
				mu.Lock()
				maps.Copy(files, found)
				mu.Unlock()
				return err
			})
		}
		if err := g.Wait(); err != nil {
			return nil, err
		}
	}
	return files, nil
}

// walkPrefix lists the blobs of one <xx> directory: <hex>/data files.
func walkPrefix(dir string, alg digest.Algorithm) (map[digest.Digest]int64, error) {
	found := map[digest.Digest]int64{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || d.Name() != "data" {
			return err
		}
		dgst := digest.NewDigestFromEncoded(alg, filepath.Base(filepath.Dir(p)))
		if dgst.Validate() != nil {
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		found[dgst] = fi.Size()
		return nil
	})
	return found, err
}

func (s *Store) verifyFile(dgst digest.Digest, size int64) error {
	f, _, err := s.Open(dgst)
	if err != nil {
		return err
	}
	defer f.Close()
	v := dgst.Verifier()
	n, err := io.Copy(v, f)
	if err != nil {
		return err
	}
	if n != size || !v.Verified() {
		return fmt.Errorf("content does not hash to its digest")
	}
	return nil
}

// removeBlob deletes a blob's file and record, keeping the totals right.
func (s *Store) removeBlob(dgst digest.Digest) error { return s.removeBlobs([]digest.Digest{dgst}) }

// removeBlobs removes blobs' files and, in one transaction, their records.
func (s *Store) removeBlobs(dgsts []digest.Digest) error {
	for _, dgst := range dgsts {
		p, err := s.blobPath(dgst)
		if err != nil {
			return err
		}
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		os.Remove(filepath.Dir(p)) // the <hex> directory, if now empty
		s.small.remove(dgst)
	}
	// Read and delete the records in one transaction, so that of two
	// removals of one blob only the one that deleted it changes the totals.
	return s.tally(func() (size, count int64, err error) {
		err = retryConflict(func() error {
			size, count = 0, 0
			return s.db.updateFreeing(func(txn *badger.Txn) error {
				for _, dgst := range dgsts {
					item, err := txn.Get(blobKey(dgst))
					if errors.Is(err, badger.ErrKeyNotFound) {
						continue
					}
					if err != nil {
						return err
					}
					var n int64
					if err := item.Value(func(v []byte) error { n, err = recordSize(v); return err }); err != nil {
						return err
					}
					if err := txn.Delete(blobKey(dgst)); err != nil {
						return err
					}
					size, count = size+n, count+1
				}
				return nil
			})
		})
		return -size, -count, err
	})
}

// Adopt indexes a blob file that is on disk but missing from the index (a
// crash between the rename and the index write) once its bytes verify, so
// it is served instead of fetched again. ErrNotFound if there is no file;
// a file that does not verify is removed.
func (s *Store) Adopt(dgst digest.Digest) error {
	p, err := s.blobPath(dgst)
	if err != nil {
		return err
	}
	fi, err := os.Stat(p)
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("blob %s: %w", dgst, ErrNotFound)
	}
	if err != nil {
		return err
	}
	if err := s.verifyFile(dgst, fi.Size()); err != nil {
		os.Remove(p)
		return fmt.Errorf("blob %s on disk is damaged, removed: %w", dgst, ErrNotFound)
	}
	return s.recordBlob(dgst, fi.Size(), "", []string{Unsourced})
}
