package cache

import (
	"container/list"
	"sync"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// hotManifests keeps recently served manifests in memory. Content is
// addressed by digest and never changes, so an entry cannot go stale; it
// only saves the open/read/close of a small file on every pull, which is
// what bounds manifest request rates. Bounded in bytes, least recently used
// out first.
type hotManifests struct {
	mu     sync.Mutex
	max    int
	size   int
	order  *list.List // front: most recent; values are *hotEntry
	byDgst map[digest.Digest]*list.Element
}

type hotEntry struct {
	desc ocispec.Descriptor
	body []byte
}

func newHotManifests(maxBytes int) *hotManifests {
	return &hotManifests{max: maxBytes, order: list.New(), byDgst: map[digest.Digest]*list.Element{}}
}

func (h *hotManifests) get(dgst digest.Digest) (ocispec.Descriptor, []byte, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	el, ok := h.byDgst[dgst]
	if !ok {
		return ocispec.Descriptor{}, nil, false
	}
	h.order.MoveToFront(el)
	e := el.Value.(*hotEntry)
	return e.desc, e.body, true
}

func (h *hotManifests) put(desc ocispec.Descriptor, body []byte) {
	if len(body) > h.max/4 {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, ok := h.byDgst[desc.Digest]; ok {
		return
	}
	h.byDgst[desc.Digest] = h.order.PushFront(&hotEntry{desc: desc, body: body})
	h.size += len(body)
	for h.size > h.max {
		el := h.order.Back()
		e := h.order.Remove(el).(*hotEntry)
		delete(h.byDgst, e.desc.Digest)
		h.size -= len(e.body)
	}
}
