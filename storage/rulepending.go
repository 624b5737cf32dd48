package storage

import (
	"errors"
	"strings"

	"github.com/dgraph-io/badger/v4"
)

// A replication rule's on_pull tags, from the moment a pull sees them
// until a job of the rule takes them: kept in the index so that a crash
// (kill -9) loses none; the next start runs them.

const prefixRulePending = "o\x00" // o <rule> <up/repo:tag> → pending tag (JSON)

// PutRulePending keeps tag (its key, "<up>/<repo>:<tag>") pending for rule.
func (s *Store) PutRulePending(rule, tag string, doc []byte) error {
	if strings.ContainsRune(rule, 0) || strings.ContainsRune(tag, 0) {
		return errors.New("storage: name holds NUL")
	}
	return s.db.Update(func(txn *badger.Txn) error { return txn.Set(key(prefixRulePending, rule, tag), doc) })
}

// DeleteRulePending forgets tag: a job took it, or another replica did.
func (s *Store) DeleteRulePending(rule, tag string) error {
	return s.db.Update(func(txn *badger.Txn) error { return txn.Delete(key(prefixRulePending, rule, tag)) })
}

// RulePending lists rule's pending tags, by key.
func (s *Store) RulePending(rule string) (map[string][]byte, error) {
	return s.under(key(prefixRulePending, rule, ""))
}

// under reads every record whose key starts with prefix, by the rest of
// its key.
func (s *Store) under(prefix []byte) (map[string][]byte, error) {
	out := map[string][]byte{}
	err := s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{PrefetchValues: true, Prefix: prefix})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			v, err := it.Item().ValueCopy(nil)
			if err != nil {
				return err
			}
			out[string(it.Item().Key()[len(prefix):])] = v
		}
		return nil
	})
	return out, err
}

// A rule's last run per trigger, kept across restarts: what wharf
// replicate shows.
const prefixRuleRun = "z\x00" // z <rule> <trigger> → run (JSON)

// PutRuleRun records rule's last run by trigger.
func (s *Store) PutRuleRun(rule, trigger string, doc []byte) error {
	if strings.ContainsRune(rule, 0) || strings.ContainsRune(trigger, 0) {
		return errors.New("storage: name holds NUL")
	}
	return s.db.Update(func(txn *badger.Txn) error { return txn.Set(key(prefixRuleRun, rule, trigger), doc) })
}

// RuleRuns lists rule's last runs, by trigger.
func (s *Store) RuleRuns(rule string) (map[string][]byte, error) {
	return s.under(key(prefixRuleRun, rule, ""))
}
