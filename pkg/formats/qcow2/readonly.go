package qcow2

import (
	"context"

	"github.com/blockd/blockd/pkg/block"
)

// ChangeReadOnly implements block.ReadOnlyChanger (blockdev-reopen and
// snapshots change a node's read-only state). Going read-only writes every
// cached table back first; going read-write refuses a corrupt image and
// prepares the image for writing as an open would. The graph calls it
// drained, with the file already writable when going read-write.
func (q *image) ChangeReadOnly(ctx context.Context, ro bool) (undo func(), err error) {
	if ro == q.readOnly {
		return func() {}, nil
	}
	if err := q.usable(); err != nil {
		return nil, err
	}
	if ro {
		if err := q.storeBitmaps(ctx); err != nil {
			return nil, err
		}
		if err := q.flushAll(ctx, true); err != nil {
			return nil, err
		}
		q.readOnly = true
		return func() { q.readOnly = false }, nil
	}
	if q.hdr.incompat&incompatCorrupt != 0 {
		return nil, errHeader(block.ErrCorrupt, "qcow2: Image is corrupt; cannot be opened read/write")
	}
	q.readOnly = false
	if err := q.prepareWrite(ctx); err != nil {
		q.readOnly = true
		return nil, err
	}
	return func() {
		if err := q.flushAll(context.Background(), true); err != nil {
			q.log.WithError(err).Warn("qcow2: writing back metadata when undoing a reopen")
		}
		q.readOnly = true
	}, nil
}
