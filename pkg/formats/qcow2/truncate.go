package qcow2

import (
	"context"
	"encoding/binary"
	"errors"

	"github.com/blockd/blockd/pkg/block"
)

// Truncate implements block.Impl. Growing extends the L1 table if needed
// and makes the new area read as zeroes even where a larger backing file
// would show through. Shrinking frees every cluster past the new end and
// shortens the file to its last used cluster, as qemu 7.2 does; images
// with internal snapshots cannot be resized.
func (q *image) Truncate(ctx context.Context, size int64, exact bool) error {
	if err := q.usable(); err != nil {
		return err
	}
	if size%512 != 0 {
		return block.Errorf(block.ErrInvalid, "The new size must be a multiple of 512")
	}
	q.mu.Lock()
	snaps := q.hdr.nbSnapshots
	q.mu.Unlock()
	if snaps > 0 {
		return block.Errorf(block.ErrNotSupported, "Can't resize an image which has snapshots")
	}
	if name := q.inconsistentBitmap(); name != "" {
		return block.Errorf(block.ErrNotSupported, "Cannot resize: bitmap '%s' is inconsistent (remove it with block-dirty-bitmap-remove)", name)
	}
	old := q.size.Load()
	switch {
	case size > old:
		return q.grow(ctx, old, size)
	case size < old:
		return q.shrink(ctx, old, size)
	}
	return nil
}

func (q *image) grow(ctx context.Context, old, size int64) error {
	q.ioGate.Lock()
	q.mu.Lock()
	err := q.growL1Locked(ctx, q.l1Needed(size))
	q.mu.Unlock()
	q.ioGate.Unlock()
	if err != nil {
		return err
	}
	// What the new area must not show: a larger backing file's data, and
	// stale data in the rest of the old last cluster.
	end := min(size, alignUp(old, q.clusterSize))
	if q.backing != nil {
		end = max(end, min(size, q.backing.Size()))
	}
	if end > old {
		if err := q.zeroInternal(ctx, old, end-old); err != nil {
			return err
		}
	}
	q.ioGate.Lock()
	defer q.ioGate.Unlock()
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.setSizeLocked(ctx, size)
}

// zeroInternal makes a range read as zeroes, whatever the version.
func (q *image) zeroInternal(ctx context.Context, off, n int64) error {
	err := q.Zero(ctx, off, n, 0)
	if !errors.Is(err, block.ErrNotSupported) {
		return err
	}
	for n > 0 {
		k := min(n, int64(len(zeroes)))
		if err := q.WriteAt(ctx, zeroes[:k], off, 0); err != nil {
			return err
		}
		off += k
		n -= k
	}
	return nil
}

func (q *image) setSizeLocked(ctx context.Context, size int64) error {
	if err := q.markDirtyLocked(ctx); err != nil {
		return err
	}
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], uint64(size))
	if err := q.file.WriteAt(ctx, b[:], offSize, 0); err != nil {
		return q.ioError("write", err)
	}
	if err := q.file.Flush(ctx); err != nil {
		return q.ioError("flush", err)
	}
	q.hdr.size = uint64(size)
	q.size.Store(size)
	return nil
}

// growL1Locked replaces the L1 table by one of at least need entries:
// the new table is written and flushed before the header points at it.
func (q *image) growL1Locked(ctx context.Context, need int64) error {
	cur := int64(len(q.l1))
	if need <= cur {
		return nil
	}
	if need*8 > maxL1Bytes {
		return block.Errorf(block.ErrNoSpace, "Failed to grow the L1 table: File too large")
	}
	clusters := alignUp(need*8, q.clusterSize) >> q.clusterBits
	q.event(block.DebugL1GrowAllocTable)
	c, _, err := q.allocClustersLocked(ctx, clusters, true)
	if err != nil {
		return err
	}
	off := c << q.clusterBits
	buf := make([]byte, clusters<<q.clusterBits)
	for i, v := range q.l1 {
		binary.BigEndian.PutUint64(buf[i*8:], v)
	}
	if !q.lazy {
		if err := q.writeDirtyLocked(ctx, q.rbc); err != nil {
			return err
		}
	}
	q.event(block.DebugL1GrowWriteTable)
	if err := q.file.WriteAt(ctx, buf, off, 0); err != nil {
		return q.ioError("write", err)
	}
	if err := q.file.Flush(ctx); err != nil {
		return q.ioError("flush", err)
	}
	q.event(block.DebugL1GrowActivateTable)
	var hb [12]byte
	binary.BigEndian.PutUint32(hb[0:], uint32(need))
	binary.BigEndian.PutUint64(hb[4:], uint64(off))
	if err := q.file.WriteAt(ctx, hb[:], offL1, 0); err != nil {
		return q.ioError("write", err)
	}
	if err := q.file.Flush(ctx); err != nil {
		return q.ioError("flush", err)
	}
	oldOff, oldLen := int64(q.hdr.l1Offset), cur*8
	q.hdr.l1Offset, q.hdr.l1Size = uint64(off), uint32(need)
	l1 := make([]uint64, need)
	copy(l1, q.l1)
	q.l1 = l1
	q.fileEnd = max(q.fileEnd, off+clusters<<q.clusterBits)
	found := false
	for i := range q.spans {
		if q.spans[i].what == "active L1 table" {
			q.spans[i] = span{off, off + need*8, "active L1 table"}
			found = true
		}
	}
	if !found {
		q.spans = append(q.spans, span{off, off + need*8, "active L1 table"})
	}
	q.sortSpans()
	if oldLen > 0 {
		// Nothing on disk refers to the old table any more, and it is
		// only ever read under mu.
		return q.freeRangeLocked(ctx, oldOff, alignUp(oldLen, q.clusterSize), freeOther)
	}
	return nil
}

func (q *image) shrink(ctx context.Context, old, size int64) error {
	// The rest of the new last cluster must read as zeroes should the
	// image grow again.
	if tail := min(old, alignUp(size, q.clusterSize)); tail > size {
		if err := q.zeroInternal(ctx, size, tail-size); err != nil {
			return err
		}
	}
	q.ioGate.Lock()
	defer q.ioGate.Unlock()
	q.mu.Lock()
	defer q.mu.Unlock()
	if err := q.markDirtyLocked(ctx); err != nil {
		return err
	}
	from := alignUp(size, q.clusterSize)
	perTable := int64(1) << (q.l2Bits + q.clusterBits)
	for off := from; off < old; {
		gc := off >> q.clusterBits
		l1i := gc >> q.l2Bits
		l2off, err := q.l2OffsetLocked(ctx, l1i)
		if err != nil {
			return err
		}
		if l2off == 0 {
			off = (l1i + 1) * perTable
			continue
		}
		if off == l1i*perTable {
			// The whole table goes: free what it maps, then the table.
			if err := q.freeTableLocked(ctx, l1i, l2off); err != nil {
				return err
			}
			off = (l1i + 1) * perTable
			continue
		}
		s, err := q.stateLocked(ctx, gc)
		if err != nil {
			return err
		}
		if s != (cstate{}) {
			if err := q.setStateLocked(ctx, gc, cstate{}); err != nil {
				return err
			}
			q.deferStateFreeLocked(s)
		}
		off += q.clusterSize
	}
	if err := q.setSizeLocked(ctx, size); err != nil {
		return err
	}
	// No request is in flight (ioGate): the frees apply at once, after
	// the mapping changes are on disk.
	if err := q.flushMetaLocked(ctx); err != nil {
		return err
	}
	if err := q.file.Flush(ctx); err != nil {
		return q.ioError("flush", err)
	}
	pend := q.pending
	q.pending = nil
	for _, pf := range pend {
		if err := q.freeRangeLocked(ctx, pf.off, pf.n, pf.kind); err != nil {
			return err
		}
	}
	if err := q.flushMetaLocked(ctx); err != nil {
		return err
	}
	if err := q.findTopLocked(ctx); err != nil {
		return err
	}
	if end := (q.topCluster + 1) << q.clusterBits; end < q.file.Size() {
		if err := q.file.Truncate(ctx, end, true); err == nil {
			q.fileEnd = end
		}
	}
	return q.file.Flush(ctx)
}

// deferStateFreeLocked queues the release of what a mapping held.
func (q *image) deferStateFreeLocked(s cstate) {
	switch {
	case s.typ == ctCompressed:
		start := s.host &^ 511
		q.deferFreeLocked(start, alignUp(s.host+s.csize, 512)-start, freeOther, false)
	case s.host != 0:
		q.deferFreeLocked(s.host, q.clusterSize, freeOther, false)
	}
}

// freeTableLocked drops L2 table l1i: its entries' clusters and the table.
func (q *image) freeTableLocked(ctx context.Context, l1i, l2off int64) error {
	// A data cluster's refcount counts every L1 table that reaches it, so
	// the clusters lose a reference even when the table is shared.
	for i := int64(0); i < 1<<q.l2Bits; i++ {
		s, err := q.stateLocked(ctx, l1i<<q.l2Bits+i)
		if err != nil {
			return err
		}
		q.deferStateFreeLocked(s)
	}
	if err := q.writeL1Locked(ctx, l1i, 0); err != nil {
		return err
	}
	q.deferFreeLocked(l2off, q.clusterSize, freeOther, true)
	return nil
}
