package qcow2

import (
	"context"
	"encoding/binary"

	"github.com/blockd/blockd/pkg/block"
)

// Cluster mapping: the L1 table (in memory) points at L2 tables (cached
// in slices of sliceBytes); an L2 entry describes one guest cluster, and,
// with extended L2 entries, the 32 subclusters of it. Everything here
// runs with q.mu held.

type ctype uint8

const (
	ctUnalloc    ctype = iota // no host cluster (subclusters may read as zero)
	ctNormal                  // a host cluster (all or some subclusters allocated)
	ctZero                    // standard L2: reads as zeroes, host cluster optional
	ctCompressed              // compressed data
)

// cstate is a decoded L2 entry.
type cstate struct {
	typ    ctype
	host   int64 // normal and zero: cluster-aligned host offset (0: none); compressed: byte offset
	csize  int64 // compressed: bytes of compressed data
	copied bool  // the refcount of host is exactly one
	alloc  uint32
	zero   uint32
}

// subKind is what a subcluster reads as.
type subKind uint8

const (
	subUnalloc    subKind = iota // from the backing file, or zeroes
	subZero                      // zeroes
	subData                      // host data
	subCompressed                // the compressed cluster
)

// sub says what subcluster i of the cluster reads as.
func (s *cstate) sub(i uint) subKind {
	switch {
	case s.typ == ctCompressed:
		return subCompressed
	case s.alloc&(1<<i) != 0:
		return subData
	case s.zero&(1<<i) != 0:
		return subZero
	}
	return subUnalloc
}

// allSubs is the bitmap with every subcluster set.
func (q *image) allSubs() uint32 {
	if q.subBits == 0 {
		return 1
	}
	return ^uint32(0)
}

// decode decodes an L2 entry; problem is set for an entry that cannot be
// valid.
func (q *image) decode(w0, w1 uint64) (s cstate, problem string) {
	if w0&oflagCompressed != 0 {
		coff := w0 & q.coffsetMask
		nsec := (w0>>q.csizeShift)&q.csizeMask + 1
		return cstate{typ: ctCompressed, host: int64(coff), csize: int64(nsec*512 - coff&511)}, ""
	}
	host := int64(w0 & l2OffsetMask)
	s.copied = w0&oflagCopied != 0
	s.host = host
	if host&(q.clusterSize-1) != 0 {
		return s, "unaligned"
	}
	if !q.extL2 {
		switch {
		case w0&oflagZero != 0:
			s.typ, s.zero = ctZero, 1
		case host != 0:
			s.typ, s.alloc = ctNormal, 1
		default:
			s.typ = ctUnalloc
		}
		return s, ""
	}
	s.alloc, s.zero = uint32(w1), uint32(w1>>32)
	if s.alloc&s.zero != 0 {
		return s, "invalid subcluster bitmap"
	}
	if host == 0 {
		if s.alloc != 0 {
			return s, "allocated subclusters without a host cluster"
		}
		s.typ = ctUnalloc
		return s, ""
	}
	s.typ = ctNormal
	return s, ""
}

// encode builds the L2 entry words of a state.
func (q *image) encode(s cstate) (w0, w1 uint64) {
	if s.typ == ctCompressed {
		// The size field holds the sectors the data touches, minus one;
		// the entry never has the COPIED flag, nor subcluster bits.
		nsec := uint64((s.host+s.csize-1)/512 - s.host/512)
		return oflagCompressed | uint64(s.host)&q.coffsetMask | nsec<<q.csizeShift, 0
	}
	if q.extL2 {
		w0 = uint64(s.host)
		if s.host != 0 && s.copied {
			w0 |= oflagCopied
		}
		return w0, uint64(s.alloc) | uint64(s.zero)<<32
	}
	switch s.typ {
	case ctNormal:
		w0 = uint64(s.host)
		if s.copied {
			w0 |= oflagCopied
		}
	case ctZero:
		w0 = uint64(s.host) | oflagZero
		if s.host != 0 && s.copied {
			w0 |= oflagCopied
		}
	}
	return w0, 0
}

// l2OffsetLocked returns the L2 table of L1 entry l1i (0: none), checked
// against the file.
func (q *image) l2OffsetLocked(ctx context.Context, l1i int64) (int64, error) {
	if l1i >= int64(len(q.l1)) {
		return 0, nil
	}
	off := int64(q.l1[l1i] & l1OffsetMask)
	if off == 0 {
		return 0, nil
	}
	if off&(q.clusterSize-1) != 0 {
		return 0, q.corruptLocked(ctx, -1, -1, "L2 table offset %s unaligned (L1 index: %s)", cHex(off), cHex(l1i))
	}
	if off >= q.fileEnd {
		return 0, q.corruptLocked(ctx, off, -1, "L2 table offset %s beyond the end of the image file (L1 index: %s)", cHex(off), cHex(l1i))
	}
	return off, nil
}

// sliceLocked returns the cached slice holding entry l2i of the table at
// l2off, and the entry's byte position in it.
func (q *image) sliceLocked(ctx context.Context, l2off, l2i int64) (*centry, int64, error) {
	pos := l2i * q.l2EntryBytes
	key := l2off + pos - pos%q.sliceBytes
	e, err := q.cacheGetLocked(ctx, q.l2c, key)
	if err != nil {
		return nil, 0, err
	}
	return e, pos % q.sliceBytes, nil
}

// stateLocked decodes the L2 entry of guest cluster gc.
func (q *image) stateLocked(ctx context.Context, gc int64) (cstate, error) {
	l1i := gc >> q.l2Bits
	l2off, err := q.l2OffsetLocked(ctx, l1i)
	if err != nil || l2off == 0 {
		return cstate{}, err
	}
	l2i := gc & (1<<q.l2Bits - 1)
	e, pos, err := q.sliceLocked(ctx, l2off, l2i)
	if err != nil {
		return cstate{}, err
	}
	return q.decodeAtLocked(ctx, e.buf[pos:], l2off, l2i)
}

// decodeAtLocked decodes the entry at b and checks it against the file.
func (q *image) decodeAtLocked(ctx context.Context, b []byte, l2off, l2i int64) (cstate, error) {
	w0 := binary.BigEndian.Uint64(b)
	var w1 uint64
	if q.extL2 {
		w1 = binary.BigEndian.Uint64(b[8:])
	}
	s, problem := q.decode(w0, w1)
	switch {
	case problem == "unaligned":
		return s, q.corruptLocked(ctx, -1, -1, "Cluster allocation offset %s unaligned (L2 offset: %s, L2 index: %s)", cHex(s.host), cHex(l2off), cHex(l2i))
	case problem != "":
		return s, q.corruptLocked(ctx, l2off+l2i*q.l2EntryBytes, q.l2EntryBytes, "Invalid cluster entry %#016x %#016x: %s (L2 offset: %s, L2 index: %s)", w0, w1, problem, cHex(l2off), cHex(l2i))
	case s.typ != ctCompressed && s.host >= q.fileEnd:
		return s, q.corruptLocked(ctx, s.host, q.clusterSize, "Cluster offset %s beyond the end of the image file (L2 offset: %s, L2 index: %s)", cHex(s.host), cHex(l2off), cHex(l2i))
	case s.typ == ctCompressed && (s.host < q.clusterSize || s.host >= q.fileEnd):
		return s, q.corruptLocked(ctx, s.host, s.csize, "Compressed cluster offset %s outside the image file (L2 offset: %s, L2 index: %s)", cHex(s.host), cHex(l2off), cHex(l2i))
	}
	return s, nil
}

// setStateLocked writes the L2 entry of guest cluster gc, first giving
// the L1 entry a table of its own (new, or a copy of a shared one).
func (q *image) setStateLocked(ctx context.Context, gc int64, s cstate) error {
	l2off, err := q.l2ForWriteLocked(ctx, gc>>q.l2Bits)
	if err != nil {
		return err
	}
	l2i := gc & (1<<q.l2Bits - 1)
	e, pos, err := q.sliceLocked(ctx, l2off, l2i)
	if err != nil {
		return err
	}
	w0, w1 := q.encode(s)
	binary.BigEndian.PutUint64(e.buf[pos:], w0)
	if q.extL2 {
		binary.BigEndian.PutUint64(e.buf[pos+8:], w1)
	}
	q.l2c.markDirty(e)
	return nil
}

// l2ForWriteLocked returns the L2 table of L1 entry l1i, allocating one
// when there is none and copying it when it is shared with a snapshot.
//
// Order: the table's refcount reaches the disk (flush), then the table
// (flush), then the L1 entry points at it. A crash in between leaks the
// cluster, nothing worse.
func (q *image) l2ForWriteLocked(ctx context.Context, l1i int64) (int64, error) {
	old, err := q.l2OffsetLocked(ctx, l1i)
	if err != nil {
		return 0, err
	}
	if old != 0 && q.l1[l1i]&oflagCopied != 0 {
		return old, nil
	}
	if err := q.markDirtyLocked(ctx); err != nil {
		return 0, err
	}
	c, _, err := q.allocClustersLocked(ctx, 1, true)
	if err != nil {
		return 0, err
	}
	off := c << q.clusterBits
	table := make([]byte, q.clusterSize)
	if old != 0 {
		// A shared table is never changed in place, so the file holds it.
		q.event(block.DebugL2AllocCOWRead)
		if err := q.file.ReadAt(ctx, table, old, 0); err != nil {
			return 0, q.ioError("read", err)
		}
	}
	if !q.lazy {
		if err := q.writeDirtyLocked(ctx, q.rbc); err != nil {
			return 0, err
		}
		if err := q.file.Flush(ctx); err != nil {
			return 0, q.ioError("flush", err)
		}
	}
	q.event(block.DebugL2AllocWrite)
	if err := q.file.WriteAt(ctx, table, off, 0); err != nil {
		return 0, q.ioError("write", err)
	}
	if err := q.file.Flush(ctx); err != nil {
		return 0, q.ioError("flush", err)
	}
	if err := q.writeL1Locked(ctx, l1i, uint64(off)|oflagCopied); err != nil {
		return 0, err
	}
	q.l2Set[off] = struct{}{}
	q.fileEnd = max(q.fileEnd, off+q.clusterSize)
	if old != 0 {
		q.deferFreeLocked(old, q.clusterSize, freeOther, true)
	}
	// The new table is in memory: cache it rather than read it back, as
	// QEMU does (so no l2_load either).
	for s := int64(0); s < q.clusterSize; s += q.sliceBytes {
		if e := q.l2c.lookup(off + s); e != nil {
			copy(e.buf, table[s:])
			continue
		}
		if err := q.makeRoomLocked(ctx, q.l2c); err != nil {
			return 0, err
		}
		buf := q.l2c.newBuf()
		copy(buf, table[s:])
		q.l2c.insert(off+s, buf, false)
	}
	return off, nil
}

// writeL1Locked sets and writes one L1 entry.
func (q *image) writeL1Locked(ctx context.Context, l1i int64, v uint64) error {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], v)
	q.event(block.DebugL1Update)
	if err := q.file.WriteAt(ctx, b[:], int64(q.hdr.l1Offset)+l1i*8, 0); err != nil {
		return q.ioError("write", err)
	}
	q.l1[l1i] = v
	return nil
}

// Cache access and write-back. The ordering rule lives here: an L2 slice
// goes to disk only after every dirty refcount block did and, without
// lazy refcounts, after a flush, so that no L2 entry on disk points at a
// cluster whose refcount on disk is 0.

// cacheGetLocked returns the entry for the slice at key, reading it.
func (q *image) cacheGetLocked(ctx context.Context, c *tableCache, key int64) (*centry, error) {
	if e := c.lookup(key); e != nil {
		return e, nil
	}
	if err := q.makeRoomLocked(ctx, c); err != nil {
		return nil, err
	}
	buf := c.newBuf()
	if c == q.l2c {
		q.event(block.DebugL2Load)
	}
	if err := q.file.ReadAt(ctx, buf, key, 0); err != nil {
		return nil, q.ioError("read", err)
	}
	return c.insert(key, buf, false), nil
}

// makeRoomLocked evicts entries until one more fits.
func (q *image) makeRoomLocked(ctx context.Context, c *tableCache) error {
	for c.full() {
		v := c.victim()
		if v.dirty {
			if err := q.writeEntryLocked(ctx, c, v); err != nil {
				return err
			}
		}
		c.remove(v)
	}
	return nil
}

func (q *image) writeEntryLocked(ctx context.Context, c *tableCache, e *centry) error {
	if err := q.usable(); err != nil {
		return err
	}
	if c == q.l2c && q.rbc.dirty > 0 {
		if err := q.writeDirtyLocked(ctx, q.rbc); err != nil {
			return err
		}
		if !q.lazy {
			if err := q.file.Flush(ctx); err != nil {
				return q.ioError("flush", err)
			}
		}
	}
	q.writeBackEvent(c)
	if err := q.file.WriteAt(ctx, e.buf, e.key, 0); err != nil {
		return q.ioError("write", err)
	}
	c.markClean(e)
	return nil
}

// writeDirtyLocked writes every dirty entry of c (refcount blocks, or L2
// slices whose refcounts are already on disk).
func (q *image) writeDirtyLocked(ctx context.Context, c *tableCache) error {
	if err := q.usable(); err != nil {
		return err
	}
	for _, e := range c.dirtyEntries() {
		q.writeBackEvent(c)
		if err := q.file.WriteAt(ctx, e.buf, e.key, 0); err != nil {
			return q.ioError("write", err)
		}
		c.markClean(e)
	}
	return nil
}

// flushMetaLocked writes all dirty metadata in a crash-safe order:
// refcount blocks, a flush, then L2 slices. The caller flushes the file
// afterwards when it needs the result durable.
func (q *image) flushMetaLocked(ctx context.Context) error {
	if q.rbc.dirty > 0 {
		if err := q.writeDirtyLocked(ctx, q.rbc); err != nil {
			return err
		}
		if !q.lazy && q.l2c.dirty > 0 {
			if err := q.file.Flush(ctx); err != nil {
				return q.ioError("flush", err)
			}
		}
	}
	return q.writeDirtyLocked(ctx, q.l2c)
}
