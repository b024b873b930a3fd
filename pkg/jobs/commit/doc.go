// Package commit is the block-commit job: it merges the images from top
// down to base into base.
//
// Intermediate commit (top is below the active layer and nobody writes
// it):
//
//	overlay ── backing ──▶ commit_top ── backing ──▶ top ──▶ mid ──▶ base
//	                       (implicit filter)          └──── copied into ────┘
//
// The commit_top filter takes nothing on top and shares everything; the
// job holds every image from top down to base (nobody else may write
// them, nor read them consistently but through filters of base), freezes
// the links from the filter down to base, and copies what those images
// allocate into base. At the end base is made durable, every user of the
// filter (the overlay, filters above) points at base, the images among
// them name base in their headers, and the committed images leave the
// graph unless the monitor added them.
//
// Active commit (top is the active layer, or has a writer): a mirror of
// top into base on the engine of pkg/jobs/mirror, with QEMU's commit
// permissions on its mirror_top filter. READY once base holds everything
// above it; on job-complete every user of top moves to base.
//
// Job (New) is the body a block-commit command starts: its Check resolves
// the arguments with qsd's messages and picks Intermediate or Active.
package commit
