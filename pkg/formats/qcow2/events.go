package qcow2

import "github.com/blockd/blockd/pkg/block"

// Debug events: qcow2 fires into its file, just before the step, the
// BlkdebugEvent that QEMU's qcow2 fires for the same step, so that the
// rules of a blkdebug node there arm as they do under qsd:
//
//	read_aio             a read of guest data from a data cluster
//	                     (readExtent; also the old data a copy-on-write
//	                     keeps, as QEMU reads it through its own read path)
//	read_backing_aio     a read of an unallocated range from the backing
//	                     file (readBacking)
//	read_compressed      a read of a compressed cluster (readCompressed)
//	write_aio            a write of guest data: in place (writeStep), or
//	                     into new clusters when nothing is copied (writeData)
//	cow_read             a piece of a cluster's old contents is read for a
//	                     copy-on-write (readOld)
//	cow_write            old contents are written into the new cluster,
//	                     or old contents and guest data together when they
//	                     go in one request (writeData)
//	l1_update            an L1 entry is written (writeL1Locked)
//	l1_grow_alloc_table, l1_grow_write_table, l1_grow_activate_table
//	                     growing the L1 table: allocation, writing the new
//	                     table, switching the header (growL1Locked)
//	l2_load              an L2 slice is read into the cache (cacheGetLocked)
//	l2_update            a dirty L2 slice is written back
//	l2_alloc_cow_read    a shared L2 table is read to be copied
//	l2_alloc_write       a new L2 table is written (l2ForWriteLocked)
//	reftable_load        the refcount table is read, at open
//	refblock_alloc, refblock_load
//	                     refcounts are changed in a refcount block (each
//	                     block an allocation or a free touches)
//	refblock_alloc       also: a missing refcount block is created
//	refblock_alloc_write, refblock_alloc_hookup
//	                     the new block is written, then the refcount
//	                     table entry that points at it (newRefBlockLocked)
//	reftable_grow, refblock_alloc_write_blocks, refblock_alloc_write_table,
//	refblock_alloc_switch_table
//	                     growing the refcount table (growRefTableLocked)
//	refblock_update_part a dirty refcount block is written back
//	cluster_alloc        host clusters are allocated (allocFreshLocked)
//	cluster_free         references to host clusters are dropped
//	                     (freeRangeLocked)
//
// The generic layer fires flush_to_os and flush_to_disk into the file when
// the qcow2 node is flushed. Not fired, because blockd's qcow2 has no such
// step: write_compressed, cluster_alloc_bytes, l2_update_compressed (it
// never writes compressed clusters), cluster_alloc_space (it never writes
// zeroes into fresh clusters), l1_shrink_write_table,
// l1_shrink_free_l2_clusters (shrinking keeps the L1 table),
// empty_image_prepare, vmstate_load, vmstate_save, reftable_update and
// refblock_update.
//
// Where blockd's steps differ from QEMU's, the events follow blockd's
// order: a write into a range without an L2 table allocates the data
// cluster before the table (QEMU: the table first); an allocating write
// that copies old contents reads them (cow_read) before it writes the
// guest data (write_aio), where QEMU writes the data first; and a free is
// applied, and cluster_free fired, when the metadata that dropped the
// reference is on disk (at the next flush), where QEMU frees at once.

// event fires ev into the file.
func (q *image) event(ev string) { block.DebugEvent(q.file, ev) }

// writeBackEvent is the event of writing back a dirty entry of cache c.
func (q *image) writeBackEvent(c *tableCache) {
	if c == q.l2c {
		q.event(block.DebugL2Update)
	} else {
		q.event(block.DebugRefblockUpdatePart)
	}
}

// refblockEvents are the events of QEMU's update_refcount moving on to a
// refcount block.
func (q *image) refblockEvents() {
	q.event(block.DebugRefblockAlloc)
	q.event(block.DebugRefblockLoad)
}
