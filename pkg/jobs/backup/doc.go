// Package backup is the blockdev-backup job and the copy-before-write
// filter it inserts above its source.
//
//	users (exports) ─▶ copy-before-write ── file ──▶ source
//	                   (implicit unless           │
//	                    filter-node-name)  target ▼
//	                                            target ◀── the job's copies
//
// The filter and the job share one copy state (blockcopy.go): a bitmap
// of the clusters still to copy and a range lock. A user's write through
// the filter first copies the clusters it touches that are still dirty,
// then goes down; the job walks the bitmap with the shared copy loop
// (jobs.Copy) and copies what is left, several chunks in flight, ranges
// the source reads as zeroes written as zeroes without a read. So the
// target ends with the source as it was when the job started.
//
// What is to be copied is set in Setup, while the source is drained: all
// of it (full, top, none), or the sync bitmap's dirty clusters (bitmap,
// incremental = bitmap with on-success). With sync=top, Run first clears
// what the source's top image does not allocate; with sync=none it copies
// nothing itself and waits for a cancel while writes copy through the
// filter. The job's length is what it has to copy; its progress counts
// every cluster copied, by the job or by a write.
//
// The sync bitmap is busy while the job runs, and frozen: it keeps
// what it held at the start while an anonymous successor on the source
// records the writes from then on apart. At the end (Clean), if the
// copy succeeded and bitmap-mode is not never, the bitmap becomes the
// successor (what was written since) and takes its place in the node's
// list; with always after a failure, the successor plus what was not
// copied; else what it held plus the successor's writes. Clean also
// removes the filter, whose users go back to the source.
package backup
