package replicate

import (
	"errors"
	"fmt"

	"github.com/opencontainers/go-digest"

	"github.com/wharf-registry/wharf/storage"
)

// Pin is a reference a prefetch job pinned, and the content it pins;
// eviction (the cache's) reads the same records from the store.
type Pin struct {
	Upstream   string        `json:"upstream"`
	Repository string        `json:"repository"`
	Reference  string        `json:"reference"`
	Digest     digest.Digest `json:"digest"`
}

// ErrNotPinned says a reference to unpin was not pinned.
var ErrNotPinned = errors.New("not pinned")

// Pins lists the references prefetch jobs pinned.
func (c *Jobs) Pins() ([]Pin, error) {
	pins, err := c.store.Pins()
	out := make([]Pin, 0, len(pins))
	for _, p := range pins {
		out = append(out, Pin{Upstream: p.Upstream, Repository: p.Repo, Reference: p.Ref, Digest: p.Digest})
	}
	return out, err
}

// Unpin lets eviction have the content of up/repo:ref again.
func (c *Jobs) Unpin(up, repo, ref string) error {
	err := c.store.RemovePin(storage.Pin{Upstream: up, Repo: repo, Ref: ref})
	if errors.Is(err, storage.ErrNotFound) {
		return fmt.Errorf("%w: %s/%s %s", ErrNotPinned, up, repo, ref)
	}
	if err == nil {
		c.cache.PinsChanged()
	}
	return err
}
