// Package qcow2 is the qcow2 format driver. It reads and writes qcow2
// version 2 (compat 0.10) and version 3 (compat 1.1) images as qemu-img
// 7.2 makes them, and creates them for blockdev-create.
//
// # On-disk model
//
// An image file is a sequence of clusters (512 B to 2 MiB). Cluster 0
// holds the header, its extensions (backing format, feature names,
// bitmaps...) and the backing file name. Guest clusters are mapped by a
// two-level table:
//
//	L1 table (contiguous, in memory) ──▶ L2 tables (one cluster each, cached)
//	                                        │ one entry per guest cluster
//	                                        ▼
//	        normal: host cluster (COPIED bit: refcount is exactly 1)
//	        zero:   reads as zeroes (v3), host cluster kept or not
//	        compressed: byte offset + sectors of zlib/zstd data
//	        unallocated: reads from the backing file, or zeroes
//
// With extended L2 entries an entry is 128 bits and each of the 32
// subclusters of a cluster is allocated, zero or unallocated on its own.
//
// Host clusters are reference counted by another two-level table: the
// refcount table (contiguous, in memory) points at refcount blocks (one
// cluster each, cached) of 1 to 64-bit entries. A cluster is free when
// its refcount is 0. Internal snapshots share clusters: a refcount above
// one (no COPIED bit) means a write must copy the cluster (or the L2
// table) first.
//
// # Locks
//
// One metadata mutex (image.mu) per image guards the in-memory tables,
// both caches, the allocator and the list of pending frees. It is held for
// lookups and updates and for metadata I/O (table reads, write-back,
// flushes), never across guest-data I/O.
//
//   - Reads and in-place writes (an allocated cluster of refcount one) take
//     the mutex only to map the range, then do the I/O without it.
//   - An allocating write reserves host clusters and marks the guest
//     clusters busy under the mutex, writes the guest data and the parts
//     of the clusters it must keep (copy-on-write from the backing file,
//     the old shared or compressed cluster, or zeroes) without it, and
//     links the new L2 entries under it again. Other writers of a busy
//     cluster wait for the link, so two writes never allocate the same
//     cluster twice; zero, discard and truncate wait too.
//   - ioGate is a read-write lock held shared by every request from its
//     mapping lookup to the end of its data I/O. Freed clusters become
//     reusable only after the gate was taken exclusively once (in Flush),
//     so no request still writes to a cluster that got a new owner.
//
// # Write ordering (crash safety)
//
// A crash may leak clusters (refcount without reference), but no table
// on disk ever points at a cluster whose refcount on disk is 0, and no
// cluster is referenced twice:
//
//   - Allocation: the refcount update reaches the disk before any L2 entry
//     that points at the new cluster. Dirty L2 slices are written only
//     after every dirty refcount block was written and the file flushed
//     (cache eviction and Flush both follow this rule).
//   - New tables: a new L2 table is written and flushed before the L1
//     entry points at it; a new refcount block is written and flushed
//     before the refcount table entry; a grown L1 or refcount table is
//     written and flushed before the header switches to it.
//   - Frees: a refcount is decremented only after the metadata that
//     dropped the reference was written and flushed (pending frees,
//     applied by Flush), and after no request uses the cluster (ioGate).
//   - Backing file name (ChangeBackingFile, for stream and commit):
//     everything cached is written back and the file flushed before the
//     one write of the header that names the new backing, which is
//     flushed too; the extension area is rebuilt from the cluster on
//     disk, so extensions of other tools survive.
//   - Compressed writes (block.FlagCompressed; wcompressed.go): whole
//     clusters into clusters without host data, compressed data packed
//     byte-wise into host clusters, each touched host cluster gaining a
//     reference. The refcounts change in the cache first, the data is
//     written, then the L2 entry changes in the cache; the cache writes
//     the refcount blocks and flushes before any L2 slice.
//   - Internal snapshots (create, delete): the refcounts, the COPIED flags
//     of the active tables and the snapshot table must change together,
//     since qemu-img check counts any disagreement of a COPIED flag with
//     its refcount as corruption. The changed refcount blocks, a new
//     refcount table, the L2 tables whose flags change, a new active L1
//     table and a new snapshot table are written as copies past the end of
//     the file and flushed; one write of the header fields from l1_size to
//     snapshots_offset switches to them (see snapshot_txn.go). The old
//     copies become free only in the new version: a crash leaks them at
//     most.
//
// With lazy refcounts the dirty bit is set (and flushed) before the first
// metadata change; refcount blocks and L2 tables are then written without
// ordering between them, and the next read-write open of a dirty image
// rebuilds all refcounts from the tables. A clean close (or a drain before
// the node is removed) writes everything back and clears the bit.
//
// # Corruption
//
// Metadata that cannot be valid (unaligned or out-of-file offsets, a data
// write that would hit metadata, a refcount that would drop below 0)
// fails the request with block.ErrCorrupt and emits BLOCK_IMAGE_CORRUPTED
// once. A writable image is then marked corrupt in its header and refuses
// all further requests; nothing else is written to it.
package qcow2
