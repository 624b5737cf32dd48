package storage

import (
	"encoding/json"
	"errors"
	"fmt"
	"sync"

	"github.com/dgraph-io/badger/v4"
)

// The store's running totals (bytes and blobs) live in memory, and in the
// index only between a clean Close and the next Open: Open takes the
// record and deletes it, durably, before anything is written, so a store
// that crashes afterwards has none and counts its blob records at the
// next start, and a store of a million blobs that was stopped cleanly
// starts without reading them.

// keyTotals is the record Close leaves for the next Open.
const keyTotals = "z\x00totals"

type totals struct {
	Bytes int64 `json:"bytes"`
	Blobs int64 `json:"blobs"`
}

// errClosed refuses a write that would change the totals after Close has
// taken them.
var errClosed = errors.New("the store is closed")

// tallies orders the writes that change the totals against Close: each
// such write and its change of the totals hold it shared, and Close takes
// it to read the totals and seal the store.
type tallies struct {
	mu     sync.RWMutex
	sealed bool
}

// tally runs write, a change to blob records, and adds what it reports to
// the totals, as one step against Close's reading of them.
func (s *Store) tally(write func() (size, count int64, err error)) error {
	s.tallies.mu.RLock()
	defer s.tallies.mu.RUnlock()
	if s.tallies.sealed {
		return errClosed
	}
	size, count, err := write()
	if err == nil {
		s.size.Add(size)
		s.blobs.Add(count)
	}
	return err
}

// loadTotals sets the totals from the record a clean Close left, deleting
// it, or failing that from a count of every blob record.
func (s *Store) loadTotals() error {
	if ok, err := s.takeTotals(); err == nil && ok {
		return nil
	}
	return s.countBlobs()
}

// takeTotals reads and deletes the totals record, and syncs the index so
// that the deletion outlives a crash. A read-only index keeps it (it can
// delete nothing): such a store counts.
func (s *Store) takeTotals() (bool, error) {
	if s.ReadOnly() {
		return false, nil
	}
	var t totals
	found := false
	err := s.db.Update(func(txn *badger.Txn) error {
		item, err := txn.Get([]byte(keyTotals))
		if errors.Is(err, badger.ErrKeyNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		if err := item.Value(func(v []byte) error { return json.Unmarshal(v, &t) }); err != nil {
			return err
		}
		found = true
		return txn.Delete([]byte(keyTotals))
	})
	if err == nil && found {
		err = s.db.sync()
	}
	if err != nil || !found {
		return false, err
	}
	s.size.Store(t.Bytes)
	s.blobs.Store(t.Blobs)
	return true, nil
}

// forgetTotals deletes, durably, the totals a clean stop left in an index
// opened read-only and now read-write: from its first write on they would
// be wrong.
func forgetTotals(bdb *badger.DB) error {
	if err := bdb.Update(func(txn *badger.Txn) error { return txn.Delete([]byte(keyTotals)) }); err != nil {
		return err
	}
	return bdb.Sync()
}

// sealTotals stops every change to the totals and records them for the
// next Open. A store that cannot write them counts at its next start.
func (s *Store) sealTotals() error {
	s.tallies.mu.Lock()
	s.tallies.sealed = true
	s.tallies.mu.Unlock()
	if s.ReadOnly() {
		return nil
	}
	v, _ := json.Marshal(totals{Bytes: s.size.Load(), Blobs: s.blobs.Load()})
	if err := s.db.Update(func(txn *badger.Txn) error { return txn.Set([]byte(keyTotals), v) }); err != nil {
		return fmt.Errorf("record the store's totals: %w", err)
	}
	return nil
}
