package qcow2

import (
	"context"
	"encoding/binary"
	"fmt"
	"syscall"

	"github.com/blockd/blockd/pkg/block"
)

// Refcounts: a two-level structure, the refcount table (kept in memory
// whole) pointing at refcount blocks (cached). Everything here runs with
// q.mu held.

// refcountIn reads entry i of a refcount block.
func (q *image) refcountIn(b []byte, i int64) uint64 {
	switch q.refBits {
	case 64:
		return binary.BigEndian.Uint64(b[i*8:])
	case 32:
		return uint64(binary.BigEndian.Uint32(b[i*4:]))
	case 16:
		return uint64(binary.BigEndian.Uint16(b[i*2:]))
	case 8:
		return uint64(b[i])
	}
	bit := i * int64(q.refBits)
	return uint64(b[bit/8]>>(bit%8)) & q.refMax
}

// setRefcountIn writes entry i of a refcount block.
func (q *image) setRefcountIn(b []byte, i int64, v uint64) {
	switch q.refBits {
	case 64:
		binary.BigEndian.PutUint64(b[i*8:], v)
	case 32:
		binary.BigEndian.PutUint32(b[i*4:], uint32(v))
	case 16:
		binary.BigEndian.PutUint16(b[i*2:], uint16(v))
	case 8:
		b[i] = byte(v)
	default:
		bit := i * int64(q.refBits)
		shift := bit % 8
		b[bit/8] = b[bit/8]&^byte(q.refMax<<shift) | byte(v<<shift)
	}
}

// rbOffsetLocked is the offset of refcount block rt (0: none), checked.
func (q *image) rbOffsetLocked(ctx context.Context, rt int64) (int64, error) {
	if rt >= int64(len(q.reftable)) {
		return 0, nil
	}
	off := int64(q.reftable[rt] & refOffsetMask)
	if off&(q.clusterSize-1) != 0 {
		return 0, q.corruptLocked(ctx, -1, -1, "Refblock offset %s unaligned (reftable index: %s)", cHex(off), cHex(rt))
	}
	return off, nil
}

// rbEntryLocked returns the cached refcount block rt, which must exist.
func (q *image) rbEntryLocked(ctx context.Context, rt int64) (*centry, error) {
	off, err := q.rbOffsetLocked(ctx, rt)
	if err != nil {
		return nil, err
	}
	if off == 0 {
		return nil, fmt.Errorf("qcow2 image '%s': refcount block %d missing: %w", q.name, rt, block.ErrInternal)
	}
	return q.cacheGetLocked(ctx, q.rbc, off)
}

// refcountLocked is the refcount of host cluster c.
func (q *image) refcountLocked(ctx context.Context, c int64) (uint64, error) {
	rt := c >> q.rbBits
	off, err := q.rbOffsetLocked(ctx, rt)
	if err != nil || off == 0 {
		return 0, err
	}
	e, err := q.cacheGetLocked(ctx, q.rbc, off)
	if err != nil {
		return 0, err
	}
	return q.refcountIn(e.buf, c&(1<<q.rbBits-1)), nil
}

// setRefcountLocked sets the refcount of host cluster c, whose refcount
// block exists.
func (q *image) setRefcountLocked(ctx context.Context, c int64, v uint64) error {
	e, err := q.rbEntryLocked(ctx, c>>q.rbBits)
	if err != nil {
		return err
	}
	q.setRefcountIn(e.buf, c&(1<<q.rbBits-1), v)
	q.rbc.markDirty(e)
	return nil
}

// allocClustersLocked allocates up to n contiguous host clusters (at least
// one) with refcount 1 and returns the first cluster index and how many.
// Callers that need exactly n pass exact.
func (q *image) allocClustersLocked(ctx context.Context, n int64, exact bool) (int64, int64, error) {
	start, got, _, err := q.allocFreshLocked(ctx, n, exact)
	return start, got, err
}

// allocFreshLocked is allocClustersLocked that also says whether the
// clusters lie past everything ever written to the file: they read as
// zeroes.
func (q *image) allocFreshLocked(ctx context.Context, n int64, exact bool) (int64, int64, bool, error) {
	if err := q.markDirtyLocked(ctx); err != nil {
		return 0, 0, false, err
	}
	q.event(block.DebugClusterAlloc)
	for round := 0; ; round++ {
		if round > 1<<16 {
			return 0, 0, false, fmt.Errorf("qcow2 image '%s': cluster allocation does not converge: %w", q.name, block.ErrInternal)
		}
		start, got, err := q.findFreeLocked(ctx, n, exact)
		if err != nil {
			return 0, 0, false, err
		}
		// Every refcount block the run needs must exist; a new block is
		// put inside the range it describes, in the run's place, and the
		// search starts again.
		made := false
		for c := start; c < start+got; c = (c>>q.rbBits + 1) << q.rbBits {
			rt := c >> q.rbBits
			if rt >= int64(len(q.reftable)) {
				q.event(block.DebugRefblockAlloc)
				if err := q.growRefTableLocked(ctx, rt); err != nil {
					return 0, 0, false, err
				}
				made = true
				break
			}
			if q.reftable[rt]&refOffsetMask == 0 {
				q.event(block.DebugRefblockAlloc)
				if err := q.newRefBlockLocked(ctx, rt, c); err != nil {
					return 0, 0, false, err
				}
				made = true
				break
			}
		}
		if made {
			continue
		}
		for c := start; c < start+got; c++ {
			if c == start || c&(1<<q.rbBits-1) == 0 {
				q.refblockEvents()
			}
			if err := q.setRefcountLocked(ctx, c, 1); err != nil {
				return 0, 0, false, err
			}
		}
		if start == q.freeHint {
			q.freeHint = start + got
		}
		q.topCluster = max(q.topCluster, start+got-1)
		fresh := start<<q.clusterBits >= q.fileEnd
		q.fileEnd = max(q.fileEnd, (start+got)<<q.clusterBits)
		q.extendFileLocked(ctx)
		return start, got, fresh, nil
	}
}

// extendFileLocked grows the file ahead of the allocations, in steps of
// an eighth of its size (8 MiB to 1 GiB): writes past the end of a file
// are much slower on common file systems than writes inside it. The
// unused tail is cut off again when the image is closed or drained.
func (q *image) extendFileLocked(ctx context.Context) {
	size := q.file.Size()
	if q.fileEnd <= size || q.readOnly {
		return
	}
	step := min(max(size/8, 8<<20), 1<<30)
	target := alignUp(q.fileEnd+step, q.clusterSize)
	// Advisory: without it, writes simply extend the file.
	_ = q.file.Truncate(ctx, target, true)
}

// trimFileLocked cuts the unused tail extendFileLocked left.
func (q *image) trimFileLocked(ctx context.Context) {
	if q.file.Size() > q.fileEnd && !q.readOnly {
		_ = q.file.Truncate(ctx, q.fileEnd, true)
	}
}

// findFreeLocked finds the first run of free clusters from the hint: n of
// them, or (unless exact) fewer if a shorter run comes first. It moves the
// hint up to the first free cluster it saw.
func (q *image) findFreeLocked(ctx context.Context, n int64, exact bool) (int64, int64, error) {
	start, got, firstFree := int64(-1), int64(0), int64(-1)
	perBlock := int64(1) << q.rbBits
	// Clusters past the end of the file were never written and nothing
	// valid points at them: they are free whatever their refcount says
	// (a nonzero one is a leak, which the allocation overwrites). This
	// also bounds the search by the file's size.
	fileEnd := q.fileEnd >> q.clusterBits
	for c := q.freeHint; ; {
		rt := c >> q.rbBits
		var e *centry
		if c < fileEnd {
			off, err := q.rbOffsetLocked(ctx, rt)
			if err != nil {
				return 0, 0, err
			}
			if off != 0 {
				if e, err = q.cacheGetLocked(ctx, q.rbc, off); err != nil {
					return 0, 0, err
				}
			}
		}
		end := (rt + 1) * perBlock
		if c < fileEnd {
			end = min(end, fileEnd)
		}
		for ; c < end; c++ {
			free := e == nil || q.refcountIn(e.buf, c&(perBlock-1)) == 0
			if free {
				if what := q.overlapLocked(c<<q.clusterBits, q.clusterSize); what != "" {
					return 0, 0, q.corruptLocked(ctx, c<<q.clusterBits, q.clusterSize, "Preventing invalid allocation of cluster at offset %#x: it has refcount 0 but holds the %s", c<<q.clusterBits, what)
				}
				if firstFree < 0 {
					firstFree = c
					q.freeHint = c
				}
			}
			switch {
			case free && start < 0:
				start, got = c, 1
			case free:
				got++
			case start >= 0 && !exact:
				return start, got, nil
			default:
				start, got = -1, 0
			}
			if got == n {
				return start, got, nil
			}
		}
		if c<<q.clusterBits > 1<<56 {
			return 0, 0, block.Errorf(block.ErrNoSpace, "qcow2 image '%s': no free cluster below 2^56", q.name)
		}
	}
}

// newRefBlockLocked creates refcount block rt at cluster c, which lies in
// the range the block describes, so that the block counts itself.
func (q *image) newRefBlockLocked(ctx context.Context, rt, c int64) error {
	off := c << q.clusterBits
	buf := q.rbc.newBuf()
	q.setRefcountIn(buf, c&(1<<q.rbBits-1), 1)
	q.event(block.DebugRefblockAllocWrite)
	if err := q.file.WriteAt(ctx, buf, off, 0); err != nil {
		return q.ioError("write", err)
	}
	// The block must be on disk before the table points at it.
	if !q.lazy {
		if err := q.file.Flush(ctx); err != nil {
			return q.ioError("flush", err)
		}
	}
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], uint64(off))
	q.event(block.DebugRefblockAllocHookup)
	if err := q.file.WriteAt(ctx, b[:], int64(q.hdr.rtOffset)+rt*8, 0); err != nil {
		return q.ioError("write", err)
	}
	q.reftable[rt] = uint64(off)
	q.rbSet[off] = struct{}{}
	q.fileEnd = max(q.fileEnd, off+q.clusterSize)
	q.topCluster = max(q.topCluster, c)
	if err := q.makeRoomLocked(ctx, q.rbc); err != nil {
		return err
	}
	q.rbc.insert(off, buf, false)
	return nil
}

// endClusterLocked is the first cluster from which on everything is free
// and was never written.
func (q *image) endClusterLocked() int64 {
	return q.fileEnd >> q.clusterBits
}

// growRefTableLocked replaces the refcount table by a larger one that has
// an entry rt. The new table and the refcount blocks that count it are
// put at the end of the image, written, flushed, and only then the
// header is switched to them.
func (q *image) growRefTableLocked(ctx context.Context, rt int64) error {
	q.event(block.DebugReftableGrow)
	perCluster := q.clusterSize / 8
	old := int64(len(q.reftable))
	entries := max(rt+1, old+old/2, perCluster)
	entries = alignUp(entries, perCluster)
	perBlock := int64(1) << q.rbBits
	var start, tc, nb int64
	var missing []int64
	for {
		start = q.endClusterLocked()
		tc = entries / perCluster
		// Count the blocks needed to describe [start, start+tc+nb).
		for {
			missing = missing[:0]
			for r := start / perBlock; r <= (start+tc+nb-1)/perBlock; r++ {
				if r >= old || q.reftable[r]&refOffsetMask == 0 {
					missing = append(missing, r)
				}
			}
			if int64(len(missing)) == nb {
				break
			}
			nb = int64(len(missing))
		}
		if (start+tc+nb-1)/perBlock < entries {
			break
		}
		entries = alignUp((start+tc+nb)/perBlock+1, perCluster)
	}
	if tc<<q.clusterBits > maxRefTableBytes {
		return block.Errorf(block.ErrNoSpace, "qcow2 image '%s': refcount table too large: %s", q.name, syscall.EFBIG)
	}
	table := make([]uint64, entries)
	copy(table, q.reftable)
	blocks := make(map[int64][]byte, nb)
	for i, r := range missing {
		boff := (start + tc + int64(i)) << q.clusterBits
		table[r] = uint64(boff)
		blocks[r] = make([]byte, q.clusterSize)
	}
	// Refcount 1 for the new table and blocks, in new blocks or in
	// blocks that already exist.
	for c := start; c < start+tc+nb; c++ {
		r := c / perBlock
		if b := blocks[r]; b != nil {
			q.setRefcountIn(b, c&(perBlock-1), 1)
			continue
		}
		if err := q.setRefcountLocked(ctx, c, 1); err != nil {
			return err
		}
	}
	q.event(block.DebugRefblockAllocWriteBlocks)
	for i, r := range missing {
		if err := q.file.WriteAt(ctx, blocks[r], (start+tc+int64(i))<<q.clusterBits, 0); err != nil {
			return q.ioError("write", err)
		}
	}
	tbuf := make([]byte, tc<<q.clusterBits)
	for i, v := range table {
		binary.BigEndian.PutUint64(tbuf[i*8:], v)
	}
	q.event(block.DebugRefblockAllocWriteTable)
	if err := q.file.WriteAt(ctx, tbuf, start<<q.clusterBits, 0); err != nil {
		return q.ioError("write", err)
	}
	if err := q.writeDirtyLocked(ctx, q.rbc); err != nil {
		return err
	}
	if err := q.file.Flush(ctx); err != nil {
		return q.ioError("flush", err)
	}
	q.event(block.DebugRefblockAllocSwitchTable)
	if err := q.switchRefTableLocked(ctx, start, tc); err != nil {
		return err
	}
	oldOff, oldClusters := int64(q.hdr.rtOffset), int64(q.hdr.rtClusters)
	q.hdr.rtOffset, q.hdr.rtClusters = uint64(start<<q.clusterBits), uint32(tc)
	q.reftable = table
	for i, r := range missing {
		boff := (start + tc + int64(i)) << q.clusterBits
		q.rbSet[boff] = struct{}{}
		if !q.rbc.full() {
			q.rbc.insert(boff, blocks[r], false)
		}
	}
	for i := range q.spans {
		if q.spans[i].what == "refcount table" {
			q.spans[i] = span{start << q.clusterBits, (start + tc) << q.clusterBits, "refcount table"}
		}
	}
	q.sortSpans()
	q.fileEnd = max(q.fileEnd, (start+tc+nb)<<q.clusterBits)
	q.topCluster = max(q.topCluster, start+tc+nb-1)
	// The old table is referenced by nothing on disk any more.
	return q.freeRangeLocked(ctx, oldOff, oldClusters<<q.clusterBits, freeOther)
}

// decrefLocked drops one reference to host cluster c. A refcount that is
// already 0 means the metadata was corrupt.
func (q *image) decrefLocked(ctx context.Context, c int64, kind freeKind) error {
	rc, err := q.refcountLocked(ctx, c)
	if err != nil {
		return err
	}
	if rc == 0 {
		return q.corruptLocked(ctx, c<<q.clusterBits, q.clusterSize, "Cannot free cluster at offset %#x: its refcount is already 0", c<<q.clusterBits)
	}
	if err := q.setRefcountLocked(ctx, c, rc-1); err != nil {
		return err
	}
	if rc == 1 {
		off := c << q.clusterBits
		q.freeHint = min(q.freeHint, c)
		if q.freeByte>>q.clusterBits == c {
			q.freeByte = 0 // no more compressed data packed into it
		}
		if _, ok := q.l2Set[off]; ok {
			delete(q.l2Set, off)
			q.l2c.dropRange(off, q.clusterSize)
		}
		if q.passDiscard[kind] {
			// Advisory: a failure only leaves the data in place.
			_ = q.file.Discard(ctx, off, q.clusterSize)
		}
	}
	return nil
}

// deferFreeLocked queues a refcount decrement of [off, off+n), to be
// applied once the metadata that dropped the reference is on disk and
// no request still uses the range (see applyPending).
func (q *image) deferFreeLocked(off, n int64, kind freeKind, l2 bool) {
	q.pending = append(q.pending, pendingFree{off: off, n: n, kind: kind, l2: l2})
}

// freeRangeLocked drops one reference to every cluster of [off, off+n).
func (q *image) freeRangeLocked(ctx context.Context, off, n int64, kind freeKind) error {
	q.event(block.DebugClusterFree)
	for c := off >> q.clusterBits; c<<q.clusterBits < off+n; c++ {
		if c == off>>q.clusterBits || c&(1<<q.rbBits-1) == 0 {
			q.refblockEvents()
		}
		if err := q.decrefLocked(ctx, c, kind); err != nil {
			return err
		}
	}
	return nil
}

// switchRefTableLocked points the header at a refcount table of tc
// clusters that starts at cluster start, already written and flushed, and
// flushes that: from now on the image uses the new table.
func (q *image) switchRefTableLocked(ctx context.Context, start, tc int64) error {
	var hb [12]byte
	binary.BigEndian.PutUint64(hb[0:], uint64(start<<q.clusterBits))
	binary.BigEndian.PutUint32(hb[8:], uint32(tc))
	if err := q.file.WriteAt(ctx, hb[:], offRefTable, 0); err != nil {
		return q.ioError("write", err)
	}
	if err := q.file.Flush(ctx); err != nil {
		return q.ioError("flush", err)
	}
	return nil
}
