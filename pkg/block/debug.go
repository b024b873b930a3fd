package block

import "context"

// Debug events are QEMU's BLKDBG_EVENT points: a driver announces, just
// before it does a step, which step it is ("read_aio": a format reads
// guest data from its file; "l2_load": qcow2 reads an L2 table), by
// firing the step's name into the child the step's I/O goes to. blkdebug
// arms its rules on them. The names are those of QMP's BlkdebugEvent.
//
// An event reaches only the node the child points at, and only if its
// driver implements DebugEventer; it does not travel further down.
// compat(qsd-7.2): so does QEMU's; a rule on l2_load of a blkdebug node
// under a raw format under qcow2 never arms, while raw's own read_aio
// does (tests/iotests/blkdebug_test.go).
//
// Formats fire their events themselves (see each driver's list). The
// gate fires, as QEMU's generic layer does:
//
//	pwritev, pwritev_done        on the node written, around a write
//	pwritev_zero, pwritev_done   on the node written, around a
//	                             write-zeroes (and a write that
//	                             detect-zeroes turns into one)
//	flush_to_os, flush_to_disk   into the primary child of a writable
//	                             node being flushed, before its driver
//	                             flushes (flush_to_disk not with
//	                             cache.no-flush)
//
// QEMU fires flush_to_disk only when the node was written since its last
// flush; blockd does not count write generations and fires it on every
// flush. The read-modify-write events of unaligned writes
// (pwritev_rmw_*) and cor_write are not fired.

// DebugEventer is implemented by drivers that act on debug events
// (blkdebug). It is found by type assertion on the node's own Impl.
type DebugEventer interface {
	// DebugEvent records that event ev happened. It is called from I/O
	// paths, from many goroutines at once, and with the caller's locks
	// held (qcow2 fires l2_load under its metadata mutex): it must be
	// quick, must not block on I/O and must not call into the graph.
	// ev is a BlkdebugEvent name; unknown names are ignored.
	DebugEvent(ev string)
}

// The events blockd fires (BlkdebugEvent names).
const (
	DebugL1Update                 = "l1_update"
	DebugL1GrowAllocTable         = "l1_grow_alloc_table"
	DebugL1GrowWriteTable         = "l1_grow_write_table"
	DebugL1GrowActivateTable      = "l1_grow_activate_table"
	DebugL2Load                   = "l2_load"
	DebugL2Update                 = "l2_update"
	DebugL2UpdateCompressed       = "l2_update_compressed"
	DebugL2AllocCOWRead           = "l2_alloc_cow_read"
	DebugL2AllocWrite             = "l2_alloc_write"
	DebugReadAIO                  = "read_aio"
	DebugReadBackingAIO           = "read_backing_aio"
	DebugReadCompressed           = "read_compressed"
	DebugWriteAIO                 = "write_aio"
	DebugWriteCompressed          = "write_compressed"
	DebugCOWRead                  = "cow_read"
	DebugCOWWrite                 = "cow_write"
	DebugReftableLoad             = "reftable_load"
	DebugReftableGrow             = "reftable_grow"
	DebugRefblockLoad             = "refblock_load"
	DebugRefblockUpdatePart       = "refblock_update_part"
	DebugRefblockAlloc            = "refblock_alloc"
	DebugRefblockAllocHookup      = "refblock_alloc_hookup"
	DebugRefblockAllocWrite       = "refblock_alloc_write"
	DebugRefblockAllocWriteBlocks = "refblock_alloc_write_blocks"
	DebugRefblockAllocWriteTable  = "refblock_alloc_write_table"
	DebugRefblockAllocSwitchTable = "refblock_alloc_switch_table"
	DebugClusterAlloc             = "cluster_alloc"
	DebugClusterFree              = "cluster_free"
	DebugFlushToOS                = "flush_to_os"
	DebugFlushToDisk              = "flush_to_disk"
	DebugPwritev                  = "pwritev"
	DebugPwritevZero              = "pwritev_zero"
	DebugPwritevDone              = "pwritev_done"
)

// DebugEvent fires ev into child c: the node c points at gets it if its
// driver is a DebugEventer. c may be nil. It costs a type assertion when
// nobody listens, so drivers call it on every request.
func DebugEvent(c *Child, ev string) {
	if c == nil {
		return
	}
	if d, ok := c.Node().impl.(DebugEventer); ok {
		d.DebugEvent(ev)
	}
}

// writeAtEvents is writeAt between the events QEMU's generic layer fires
// on the node written.
func (n *Node) writeAtEvents(ctx context.Context, p []byte, off int64, f Flags) error {
	d, ok := n.impl.(DebugEventer)
	if !ok || len(p) == 0 {
		return n.writeAt(ctx, p, off, f)
	}
	ev := DebugPwritev
	if dz := n.common.DetectZeroes; dz != "" && dz != DetectZeroesOff && isZero(p) {
		ev = DebugPwritevZero // writeAt turns it into a write-zeroes
	}
	d.DebugEvent(ev)
	err := n.writeAt(ctx, p, off, f)
	d.DebugEvent(DebugPwritevDone)
	return err
}

// zeroEvents is zero between the events QEMU's generic layer fires on the
// node written.
func (n *Node) zeroEvents(ctx context.Context, off, length int64, f Flags) error {
	d, ok := n.impl.(DebugEventer)
	if !ok || length == 0 {
		return n.zero(ctx, off, length, f)
	}
	d.DebugEvent(DebugPwritevZero)
	err := n.zero(ctx, off, length, f)
	d.DebugEvent(DebugPwritevDone)
	return err
}

// flushEvents is the driver's Flush after the events QEMU's generic layer
// fires into the primary child of a node it flushes. QEMU does nothing at
// all for a read-only node.
func (n *Node) flushEvents(ctx context.Context) error {
	if !n.ReadOnly() {
		if c := PrimaryChild(n); c != nil {
			DebugEvent(c, DebugFlushToOS)
			if !n.common.NoFlush() {
				DebugEvent(c, DebugFlushToDisk)
			}
		}
	}
	return n.impl.Flush(ctx)
}
