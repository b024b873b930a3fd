package block

import (
	"context"
	"syscall"
)

// SnapshotAccess is implemented by drivers that keep a point-in-time view
// of their data beside the live one: the copy-before-write filter saves
// old data to its target before a write replaces it, so the view "as at
// the filter's start" stays readable while the guest writes. The
// snapshot-access driver presents that view as a node of its own (pull
// mode backup: an NBD export of it).
type SnapshotAccess interface {
	// SnapshotRead reads the view. Ranges the view does not keep (outside
	// its bitmap, dropped by SnapshotDiscard, or after the view broke)
	// fail with EACCES.
	SnapshotRead(ctx context.Context, p []byte, off int64) error
	// SnapshotBlockStatus is the view's status at off: always allocated,
	// data or zero as the place the view's data lives says.
	SnapshotBlockStatus(ctx context.Context, off, n int64) (Extent, error)
	// SnapshotDiscard says the reader needs [off, off+n) no more: the
	// view stops keeping it (whole clusters inside the range only).
	SnapshotDiscard(ctx context.Context, off, n int64) error
}

// snapshotAccess is c's node's view, or ENOTSUP for a node that keeps
// none (QEMU's answer to a snapshot read of such a node).
func (c *Child) snapshotAccess() (SnapshotAccess, error) {
	if s, ok := c.Node().impl.(SnapshotAccess); ok {
		return s, nil
	}
	return nil, ErrnoError(syscall.ENOTSUP)
}

// SnapshotRead reads c's node's point-in-time view (see SnapshotAccess).
func (c *Child) SnapshotRead(ctx context.Context, p []byte, off int64) error {
	s, err := c.snapshotAccess()
	if err != nil {
		return err
	}
	if err := checkRange(off, int64(len(p))); err != nil {
		return err
	}
	return s.SnapshotRead(ctx, p, off)
}

// SnapshotBlockStatus is the status of c's node's view at off.
func (c *Child) SnapshotBlockStatus(ctx context.Context, off, n int64) (Extent, error) {
	s, err := c.snapshotAccess()
	if err != nil {
		return Extent{}, err
	}
	if err := checkRange(off, n); err != nil {
		return Extent{}, err
	}
	return s.SnapshotBlockStatus(ctx, off, n)
}

// SnapshotDiscard drops [off, off+n) from c's node's view.
func (c *Child) SnapshotDiscard(ctx context.Context, off, n int64) error {
	s, err := c.snapshotAccess()
	if err != nil {
		return err
	}
	if err := checkRange(off, n); err != nil {
		return err
	}
	return s.SnapshotDiscard(ctx, off, n)
}
