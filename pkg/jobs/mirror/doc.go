// Package mirror is the blockdev-mirror and drive-mirror job, and the
// mirror engine it shares with an active block-commit.
//
//	users (exports) ─▶ mirror_top ── backing ──▶ source ──▶ ...
//	                   (implicit filter)            │ dirty bitmap
//	                                                ▼ copies
//	                                              target
//
// The mirror_top filter goes above the source, so every write of the
// source's users passes it and marks the dirty bitmap on the source; with
// copy-mode write-blocking the filter also writes the target before the
// write completes. The Engine marks what must be copied first (sync full:
// what the chain allocates; top: what the top image holds; none: nothing),
// copies dirty ranges several at once but never one range twice at the
// same time, and is READY once nothing is dirty. It keeps copying what is
// written; on job-complete the job's graph step, with the source drained,
// copies the last writes and moves every user of the replaced node (the
// source, or what 'replaces' names) to the target. A cancel before READY
// leaves the source untouched; a soft cancel in READY leaves the target
// in sync and moves nothing.
package mirror
