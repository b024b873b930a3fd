// Package cor is the "copy-on-read" filter driver.
//
//	copy-on-read ──file (filtered, primary)──▶ top (e.g. qcow2)
//	                                            │ backing
//	                                           mid
//	                                            │ backing
//	                                           base ("bottom" may stop here)
//
// A read through the filter returns the data of its child, as any filter
// does. In addition, each part of the read that the child's top layer does
// not allocate itself, but that is read from further down, is written into
// the top layer (with block.FlagWriteUnchanged: readers see no change),
// so that later reads, block status and qemu-img map find it there. This
// is how block-stream pulls data up, and how a user fills an overlay
// lazily.
//
// Options (BlockdevOptionsCor):
//
//   - "file": the child.
//   - "bottom" (optional): the name of a non-filter node in the child's
//     backing chain. Only data allocated from the child's backing down to
//     bottom, bottom included, is copied up; data below bottom, and areas
//     no layer down to bottom allocates, are read but not copied. Without
//     bottom, everything the top does not allocate is copied, holes
//     included (written as zeroes), as QEMU does. Errors: "Bottom node 'x'
//     not found", "Bottom node 'x' is a filter" (qsd's), and "Bottom node
//     'x' is not in the backing chain of 'top'" (blockd's: qsd does not
//     check, and hangs). Like qsd, the filter freezes the links from
//     itself down to bottom while it exists: a reopen that would change
//     one is refused ("Cannot change frozen 'backing' link ...").
//
// Copies are made in whole clusters of the top layer: a read is widened
// to the top's OptimalTransfer (its cluster size) or request alignment,
// and at least a 512-byte sector, so the top never gets a partial cluster
// and the backing chain is not read twice for one. Overlapping copy-ups
// are serialised with a range lock, so concurrent readers copy each
// cluster once; writes, write-zeroes and discards through the filter take
// the same lock, so a copy can never put old data over a new write made
// through the filter. A read of data the top allocates entirely takes no
// lock. A failed copy fails the read.
//
// Everything else passes through: writes, write-zeroes, discard, flush,
// block status, truncate; capabilities and limits are the child's.
//
// Permissions (QEMU's): on its child the filter takes the consistent-read,
// write and resize permissions its parents take, and write-unchanged for
// its copies; it shares what its parents share of those three, and always
// shares write-unchanged. So it never stops other writers of the child on
// its own, and it cannot be put over a read-only node ("Block node is
// read-only").
package cor
