// Package snapshotaccess is the snapshot-access driver: a read-only node
// that presents the point-in-time view its "file" child keeps (a
// copy-before-write filter, see block.SnapshotAccess). Pull-mode backup
// exports it over NBD: the client reads the disk as it was when the
// filter was inserted while the guest goes on writing through the
// filter. Discards tell the filter that the client is done with a range,
// so the filter stops saving its old data. Writes fail with ENOTSUP, as
// QEMU's driver does; so does every read when the child keeps no view.
package snapshotaccess

import (
	"context"
	"syscall"

	"github.com/blockd/blockd/pkg/block"
)

// Options are BlockdevOptionsGenericFormat's members.
type Options struct {
	File block.NodeRef `json:"file"`
}

type access struct{ file *block.Child }

func open(ctx context.Context, o *block.Opener, opts *Options) (block.Impl, error) {
	c, err := o.Attach(ctx, "file", opts.File, block.RoleData|block.RolePrimary)
	if err != nil {
		return nil, err
	}
	return &access{file: c}, nil
}

var errNotSupported = block.ErrnoError(syscall.ENOTSUP)

func (a *access) Caps() block.Caps {
	return block.Caps{BlockStatus: true, Discard: true}
}

func (a *access) Size(ctx context.Context) (int64, error) { return a.file.Size(), nil }

func (a *access) ReadAt(ctx context.Context, p []byte, off int64, f block.Flags) error {
	return a.file.SnapshotRead(ctx, p, off)
}

func (a *access) WriteAt(ctx context.Context, p []byte, off int64, f block.Flags) error {
	return errNotSupported
}

func (a *access) Zero(ctx context.Context, off, n int64, f block.Flags) error {
	return errNotSupported
}

func (a *access) Discard(ctx context.Context, off, n int64) error {
	return a.file.SnapshotDiscard(ctx, off, n)
}

// Flush has nothing to write back: the view is written by the filter.
func (a *access) Flush(ctx context.Context) error { return nil }

func (a *access) BlockStatus(ctx context.Context, off, n int64) (block.Extent, error) {
	return a.file.SnapshotBlockStatus(ctx, off, n)
}

func (a *access) Truncate(ctx context.Context, size int64, exact bool) error {
	return errNotSupported
}

func (a *access) Close() error { return nil }

// ChildPerm implements block.ChildPermer: the node needs nothing of its
// child, whose view does not change whoever writes the live data.
func (a *access) ChildPerm(c *block.Child, perm, shared block.Perm) (block.Perm, block.Perm) {
	return 0, block.PermAll
}

func init() {
	block.Register("snapshot-access", block.KindFormat, open)
}
