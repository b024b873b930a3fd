// Package quorum is the "quorum" driver: it keeps the same data on several
// children and votes on what it reads.
//
//	       quorum (vote-threshold 2)
//	children.0 │ children.1 │ children.2      (role: data)
//	    c0           c1           c2
//
// Quorum is registered as a format, not a filter: it presents none of its
// children 1:1, and QEMU gives them the data role (BDRV_CHILD_DATA), so
// the chain functions do not walk through it.
//
// Options (BlockdevOptionsQuorum): "children" (at least one; the edges are
// named children.0, children.1, ...), "vote-threshold" (1 to the number of
// children: "threshold may not exceed children count", "Parameter
// 'vote-threshold' expects a value >= 1"), "read-pattern" (quorum, the
// default, or fifo), "rewrite-corrupted" and "blkverify". The last two
// apply to read-pattern quorum only and are ignored with fifo, as in qsd;
// blkverify needs exactly two children and threshold 2, and excludes
// rewrite-corrupted. The children must all have the same size.
//
// Reads, read-pattern quorum: every child is read. A child that fails is
// reported with QUORUM_REPORT_BAD (type read, with its error); if fewer
// than the threshold succeed, QUORUM_FAILURE is emitted and the read fails
// with the errno most children failed with. If the successful reads agree
// the data is returned. Otherwise they are grouped by content (SHA-256)
// and the largest group wins (a tie goes to the group seen last, as in
// QEMU); if it has fewer members than the threshold, QUORUM_FAILURE and
// EIO. Otherwise its data is returned, every child outside it is reported
// with QUORUM_REPORT_BAD (type read, no error), and with rewrite-corrupted
// those children are overwritten with the winning data (errors ignored).
// With blkverify the two children must agree: a difference fails the read
// with EIO and logs "quorum: offset=... bytes=... contents mismatch at
// offset ..."; qsd prints that and exits the whole process instead.
//
// Reads, read-pattern fifo: children.0 is read, then the next child if it
// fails (each failure reported), and so on.
//
// Writes and write-zeroes go to every child at once. Each failure is
// reported (QUORUM_REPORT_BAD type write, with the error); the request
// succeeds if at least the threshold succeeded, else QUORUM_FAILURE and
// the most common errno. Flush goes to every child; failures are reported
// (type flush, sector-num and sectors-count 0) and it fails only if fewer
// than the threshold succeed (no QUORUM_FAILURE, as in qsd). Discards are
// not passed on (Caps.Discard is false), nor is FUA; truncation is refused
// ("Image format driver does not support resize").
//
// Events go through the node's graph (block.Graph.Emit) with the schema's
// members; sector-num and sectors-count cover the request in 512-byte
// sectors, reference is the quorum's node name, and "error" is present
// only when there is one (strerror's text).
//
// Block status reports zeroes only where every child reads as zeroes
// (down its own backing chain), and data elsewhere, as QEMU's quorum does
// (children can hold the same data with different allocation); both are
// reported as allocated in the quorum node.
//
// Children can be added and removed at run time (x-blockdev-change,
// block.ChildHotplugger; hotplug.go): a new child is named children.N
// with N one past the highest index given so far (it goes back by one
// only when the child with that index is removed, as in QEMU, so names
// in the middle are not reused), takes the permissions of the other
// children, and votes from the next request on; removal is refused when
// it would leave fewer children than the threshold, and a quorum with
// blkverify takes no new child. The node is drained while its set of
// children changes; each request uses the set it started with. Sizes are
// not checked and the quorum keeps its size, as in QEMU.
//
// Permissions (QEMU's): on each child the quorum takes what its parents
// take, plus write with rewrite-corrupted, and shares only consistent-read
// and write-unchanged: no other user may write or resize a child behind
// its back. Capabilities: the largest request alignment and optimal
// transfer and the smallest maximum transfer of the children;
// write-zeroes is native only if it is for every child.
package quorum
