// Package compress is the "compress" filter driver: every write through
// it is stored compressed by the node below.
//
//	compress ──file (filtered, primary)──▶ qcow2 ──file──▶ file
//
// A write through the filter goes down with block.FlagCompressed, so the
// format below stores each cluster compressed (qcow2: zlib or zstd, as
// its header says; a cluster that does not shrink is stored plain).
// Compressed clusters are written once: a write into a cluster that
// holds data already fails with EIO, as in qsd. The filter is for
// filling new images (a backup or an NBD copy into a fresh qcow2), not
// for guests that rewrite their data.
//
// Options (BlockdevOptionsGenericFormat): "file", the child. Opening
// fails when the child cannot write compressed data, with qsd's message
// "Compression is not supported for underlying format: <driver>" (raw,
// file, ...).
//
// The filter's request alignment is the child's cluster size (its
// OptimalTransfer), so the generic layer turns a partial write into a
// read and a whole-cluster write; a write past the end of the last,
// short cluster is cut at the image's end. Reads, write-zeroes, discard,
// flush, block status and truncate pass through; the other capabilities
// and limits are the child's. Permissions are a filter's defaults.
// Like qsd's, the node cannot be reopened (blockdev-reopen fails with
// "Block format 'compress' used by node 'x' does not support reopening
// files").
package compress
