package storage

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/opencontainers/go-digest"
)

// Index keys. Parts are joined with NUL, which no upstream name, repository,
// tag or digest can contain, so prefixes never collide.
const (
	prefixBlob      = "b\x00" // b <digest>                      → BlobInfo
	prefixTag       = "t\x00" // t <up> <repo> <tag>             → TagInfo
	prefixMember    = "m\x00" // m <up> <repo> <digest>          → (empty)
	prefixRepo      = "r\x00" // r <up> <repo>                   → (empty)
	prefixTagList   = "l\x00" // l <up> <repo>                   → tagList
	prefixReferrers = "f\x00" // f <up> <repo> <digest> ""       → Document (unfiltered)
)

func key(prefix string, parts ...string) []byte {
	return []byte(prefix + strings.Join(parts, "\x00"))
}

func splitKey(k []byte) []string { return strings.Split(string(k), "\x00") }

func blobKey(dgst digest.Digest) []byte { return key(prefixBlob, dgst.String()) }

// TagInfo is what a tag resolved to upstream, and when that was last checked.
type TagInfo struct {
	Digest    digest.Digest `json:"digest"`
	MediaType string        `json:"mediaType"`
	Size      int64         `json:"size"`
	Checked   time.Time     `json:"checked"`
}

// Tag returns the cached resolution of up/repo:tag, or ErrNotFound.
func (s *Store) Tag(up, repo, tag string) (TagInfo, error) {
	k := key(prefixTag, up, repo, tag)
	if ti, ok := s.tags.get(string(k)); ok {
		return ti, nil
	}
	var ti TagInfo
	err := s.get(k, &ti)
	if err == nil {
		s.tags.put(string(k), ti)
	}
	return ti, err
}

// PutTag records what up/repo:tag resolved to.
func (s *Store) PutTag(up, repo, tag string, ti TagInfo) error {
	k := key(prefixTag, up, repo, tag)
	err := s.db.Update(func(txn *badger.Txn) error { return setJSON(txn, k, ti) })
	if err == nil {
		s.tags.put(string(k), ti)
	}
	return err
}

// CachedTags lists the tags of up/repo that resolved at least once, sorted;
// the fallback when upstream cannot list them.
func (s *Store) CachedTags(up, repo string) ([]string, error) {
	prefix := key(prefixTag, up, repo, "")
	var tags []string
	err := s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: prefix})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			tags = append(tags, string(it.Item().Key()[len(prefix):]))
		}
		return nil
	})
	return tags, err
}

// AddMembers records that upstream up showed repository repo to hold the
// digests, and that the repository exists. Blobs are only served under a
// repository that is a member, so content cannot leak across repositories.
func (s *Store) AddMembers(up, repo string, dgsts ...digest.Digest) error {
	return s.db.batch(func(wb *badger.WriteBatch) error {
		if err := wb.Set(key(prefixRepo, up, repo), nil); err != nil {
			return err
		}
		for _, d := range dgsts {
			if err := wb.Set(key(prefixMember, up, repo, d.String()), nil); err != nil {
				return err
			}
		}
		return nil
	})
}

// IsMember reports whether repo of upstream up is known to hold dgst.
func (s *Store) IsMember(up, repo string, dgst digest.Digest) (bool, error) {
	k := key(prefixMember, up, repo, dgst.String())
	if _, ok := s.members.get(string(k)); ok {
		return true, nil
	}
	err := s.db.View(func(txn *badger.Txn) error {
		_, err := txn.Get(k)
		return err
	})
	if errors.Is(err, badger.ErrKeyNotFound) {
		return false, nil
	}
	if err == nil {
		s.members.put(string(k), struct{}{})
	}
	return err == nil, err
}

// Repository is one cached repository of one upstream.
type Repository struct{ Upstream, Name string }

// Repositories lists every cached repository, ordered by upstream then name.
func (s *Store) Repositories() ([]Repository, error) {
	var repos []Repository
	err := s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte(prefixRepo)})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			up, name, _ := strings.Cut(string(it.Item().Key()[len(prefixRepo):]), "\x00")
			repos = append(repos, Repository{Upstream: up, Name: name})
		}
		return nil
	})
	return repos, err
}

// tagList is a tag list as upstream gave it, and when.
type tagList struct {
	Tags    []string  `json:"tags"`
	Checked time.Time `json:"checked"`
}

// TagList returns the last tag list fetched from upstream for up/repo, and
// when it was fetched (zero for a list kept by an older Wharf).
func (s *Store) TagList(up, repo string) ([]string, time.Time, error) {
	var raw json.RawMessage
	if err := s.get(key(prefixTagList, up, repo), &raw); err != nil {
		return nil, time.Time{}, err
	}
	var tl tagList
	if err := json.Unmarshal(raw, &tl); err != nil {
		err = json.Unmarshal(raw, &tl.Tags) // a bare list, as older records are
		return tl.Tags, time.Time{}, err
	}
	return tl.Tags, tl.Checked, nil
}

// PutTagList remembers the tag list upstream gave for up/repo at checked.
func (s *Store) PutTagList(up, repo string, tags []string, checked time.Time) error {
	return s.db.Update(func(txn *badger.Txn) error {
		return setJSON(txn, key(prefixTagList, up, repo), tagList{Tags: tags, Checked: checked})
	})
}

// Records counts the index's records of every kind, for wharf check's
// summary and the tests that show the index stays bounded. It walks the
// keys.
func (s *Store) Records() (int, error) {
	n := 0
	err := s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			n++
		}
		return nil
	})
	return n, err
}

// Document is a small response kept verbatim in the index, such as a
// referrers list; blobs never go here.
type Document struct {
	MediaType string    `json:"mediaType"`
	Body      []byte    `json:"body"`
	Checked   time.Time `json:"checked"`
}

// Referrers returns the cached, unfiltered referrers answer for
// up/repo@dgst. Filters are applied to it, never cached, so that what a
// client chooses cannot grow the index.
func (s *Store) Referrers(up, repo string, dgst digest.Digest) (Document, error) {
	var doc Document
	err := s.get(key(prefixReferrers, up, repo, dgst.String(), ""), &doc)
	return doc, err
}

// PutReferrers caches an unfiltered referrers answer.
func (s *Store) PutReferrers(up, repo string, dgst digest.Digest, doc Document) error {
	return s.db.Update(func(txn *badger.Txn) error {
		return setJSON(txn, key(prefixReferrers, up, repo, dgst.String(), ""), doc)
	})
}

func (s *Store) get(k []byte, v any) error {
	err := s.db.View(func(txn *badger.Txn) error {
		item, err := txn.Get(k)
		if err != nil {
			return err
		}
		return item.Value(func(b []byte) error { return json.Unmarshal(b, v) })
	})
	if errors.Is(err, badger.ErrKeyNotFound) {
		return fmt.Errorf("index %q: %w", strings.ReplaceAll(string(k[2:]), "\x00", " "), ErrNotFound)
	}
	return err
}

func setJSON(txn *badger.Txn, k []byte, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return txn.Set(k, b)
}
