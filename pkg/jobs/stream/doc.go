// Package stream is the block-stream job: it copies into an image the
// data its backing chain holds above a base, then drops the streamed
// images from the chain.
//
//	         job root ("main node")
//	             │
//	      copy-on-read (bottom = base overlay; implicit unless
//	             │       filter-node-name names it)
//	device ──────┘   (may be a filter; its unfiltered node is "top")
//	   │
//	  top ── backing ──▶ mid ── backing ──▶ [flt] ──▶ base
//	   ▲                  ▲        ▲
//	   │            base overlay   above base
//	links frozen from the filter down to above base
//
// Terms, as in QEMU: the base overlay is the COW overlay of base (the
// lowest image that stays); above base is the node directly above base,
// the overlay itself or a filter below it. With "bottom" both are the
// bottom node. Streaming copies every range that some image from top's
// backing down to the base overlay (inclusive) allocates; at the end top's
// COW link points at what lies below above base *then* (so a job below
// that changed base meanwhile is followed), and top's image header names
// that node (the backing-file argument overrides the name).
//
// Setup (under the graph lock, before the job is created) checks the
// chain, freezes the links from the base overlay down to above base (the
// copy-on-read filter freezes the rest, from itself down to the base
// overlay, as long as it exists), reopens the device read-write if it is
// read-only, inserts the copy-on-read filter above the device (exports and
// other users move onto it, so their reads help and their writes are
// serialised with the copies), and takes the job's nodes: the filter for
// I/O, the device ("active node", shared for writes) and every node down
// to base ("intermediate node", not writable by others).
//
// Run walks the device's range: what top allocates itself, or no image
// down to the base overlay does, is skipped (block status); the rest is
// read through the filter, which writes it into top. Several chunks are
// in flight at once (jobs.Copy).
//
// Prepare removes the filter, points top at its new backing and rewrites
// top's header (after making the copied data durable). Clean, on every
// path, removes the filter if it is still there and reopens the device
// read-only again if it was.
package stream
