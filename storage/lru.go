package storage

import (
	"container/list"
	"sync"
)

// lru is a bounded, least-recently-used map in front of the index and of
// small blobs. Everything it holds is written through, so a hit is always
// what Badger or the disk would have said.
type lru[K comparable, V any] struct {
	mu    sync.Mutex
	max   int // total cost
	cost  func(V) int
	size  int
	order *list.List // front: most recent; values are *entry[K, V]
	items map[K]*list.Element
}

type entry[K comparable, V any] struct {
	key K
	val V
}

func newLRU[K comparable, V any](max int, cost func(V) int) *lru[K, V] {
	return &lru[K, V]{max: max, cost: cost, order: list.New(), items: map[K]*list.Element{}}
}

func (c *lru[K, V]) get(k K) (V, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	el, ok := c.items[k]
	if !ok {
		var zero V
		return zero, false
	}
	c.order.MoveToFront(el)
	return el.Value.(*entry[K, V]).val, true
}

func (c *lru[K, V]) put(k K, v V) {
	n := c.cost(v)
	if n > c.max/4 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.items[k]; ok {
		e := el.Value.(*entry[K, V])
		c.size += n - c.cost(e.val)
		e.val = v
		c.order.MoveToFront(el)
	} else {
		c.items[k] = c.order.PushFront(&entry[K, V]{key: k, val: v})
		c.size += n
	}
	for c.size > c.max {
		e := c.order.Remove(c.order.Back()).(*entry[K, V])
		delete(c.items, e.key)
		c.size -= c.cost(e.val)
	}
}

func (c *lru[K, V]) remove(k K) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.items[k]; ok {
		c.order.Remove(el)
		delete(c.items, k)
		c.size -= c.cost(el.Value.(*entry[K, V]).val)
	}
}
