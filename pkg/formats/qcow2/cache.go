package qcow2

import (
	"sort"
)

// tableCache keeps slices of metadata tables (L2 tables or refcount
// blocks) in memory, least recently used first out. It knows nothing of
// write ordering: the image decides when and in which order dirty entries
// are written (see doc.go). Every method runs with the image's mu held.
type tableCache struct {
	entrySize int64
	max       int
	m         map[int64]*centry
	lru       centry // sentinel of the list; lru.next is the most recent
	tick      uint64 // bumped on every use
	cleanMark uint64 // tick at the previous clean pass
	dirty     int    // number of dirty entries
	spare     [][]byte
}

type centry struct {
	key        int64 // file offset of the slice
	buf        []byte
	dirty      bool
	used       uint64
	prev, next *centry
}

func newTableCache(entrySize int64, max int) *tableCache {
	c := &tableCache{entrySize: entrySize, max: max, m: map[int64]*centry{}}
	c.lru.next, c.lru.prev = &c.lru, &c.lru
	return c
}

func (c *tableCache) unlink(e *centry) {
	e.prev.next, e.next.prev = e.next, e.prev
}

func (c *tableCache) pushFront(e *centry) {
	e.next, e.prev = c.lru.next, &c.lru
	c.lru.next.prev = e
	c.lru.next = e
}

// lookup returns the cached entry for key, or nil, and marks it used.
func (c *tableCache) lookup(key int64) *centry {
	e := c.m[key]
	if e == nil {
		return nil
	}
	c.tick++
	e.used = c.tick
	if c.lru.next != e {
		c.unlink(e)
		c.pushFront(e)
	}
	return e
}

// full reports whether an insert needs an eviction first.
func (c *tableCache) full() bool { return len(c.m) >= c.max }

// victim is the least recently used entry (nil if empty).
func (c *tableCache) victim() *centry {
	if c.lru.prev == &c.lru {
		return nil
	}
	return c.lru.prev
}

// newBuf returns a zeroed buffer of one entry.
func (c *tableCache) newBuf() []byte {
	if n := len(c.spare); n > 0 {
		b := c.spare[n-1]
		c.spare = c.spare[:n-1]
		clear(b)
		return b
	}
	return make([]byte, c.entrySize)
}

// insert adds an entry; the caller has made room.
func (c *tableCache) insert(key int64, buf []byte, dirty bool) *centry {
	c.tick++
	e := &centry{key: key, buf: buf, dirty: dirty, used: c.tick}
	c.m[key] = e
	c.pushFront(e)
	if dirty {
		c.dirty++
	}
	return e
}

// remove drops an entry whatever its state.
func (c *tableCache) remove(e *centry) {
	if e.dirty {
		c.dirty--
	}
	c.unlink(e)
	delete(c.m, e.key)
	if len(c.spare) < 8 {
		c.spare = append(c.spare, e.buf)
	}
	e.buf = nil
}

func (c *tableCache) markDirty(e *centry) {
	if !e.dirty {
		e.dirty = true
		c.dirty++
	}
}

func (c *tableCache) markClean(e *centry) {
	if e.dirty {
		e.dirty = false
		c.dirty--
	}
}

// dirtyEntries lists the dirty entries in file order.
func (c *tableCache) dirtyEntries() []*centry {
	if c.dirty == 0 {
		return nil
	}
	es := make([]*centry, 0, c.dirty)
	for _, e := range c.m {
		if e.dirty {
			es = append(es, e)
		}
	}
	sort.Slice(es, func(i, j int) bool { return es[i].key < es[j].key })
	return es
}

// dropRange forgets every entry of [off, off+n), dirty or not: the
// clusters were freed and their old contents no longer matter.
func (c *tableCache) dropRange(off, n int64) {
	for k := off - off%c.entrySize; k < off+n; k += c.entrySize {
		if e := c.m[k]; e != nil {
			c.remove(e)
		}
	}
}

// clean drops the clean entries nobody used since the previous pass
// (cache-clean-interval).
func (c *tableCache) clean() {
	for e := c.lru.prev; e != &c.lru; {
		prev := e.prev
		if !e.dirty && e.used <= c.cleanMark {
			c.remove(e)
		}
		e = prev
	}
	c.spare = nil
	c.cleanMark = c.tick
}

// len is the number of cached entries.
func (c *tableCache) len() int { return len(c.m) }
