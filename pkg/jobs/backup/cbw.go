package backup

import (
	"context"

	"github.com/blockd/blockd/pkg/block"
)

// CBWOptions are the copy-before-write filter's options (QEMU 7.2's
// BlockdevOptionsCbw without bitmap, on-cbw-error and cbw-timeout).
type CBWOptions struct {
	File   block.NodeRef `json:"file"`
	Target block.NodeRef `json:"target"`
}

// cbw is the copy-before-write filter: reads pass through; a write,
// write-zeroes or discard first copies the clusters it touches that are
// still to be copied from the filtered node ("file") to "target", so
// that the target keeps the data as it was when the filter was made. A
// copy that fails fails the guest's request (QEMU's default
// on-cbw-error, break-guest-write).
type cbw struct {
	block.Forward
	bc *blockCopy
}

func openCBW(ctx context.Context, o *block.Opener, opts *CBWOptions) (block.Impl, error) {
	file, err := o.Attach(ctx, "file", opts.File, block.RoleFilter)
	if err != nil {
		return nil, err
	}
	target, err := o.Attach(ctx, "target", opts.Target, block.RoleData)
	if err != nil {
		return nil, err
	}
	bc, err := newBlockCopy(file, target)
	if err != nil {
		return nil, err
	}
	return &cbw{Forward: block.Forward{C: file}, bc: bc}, nil
}

// copyOf returns the copy state of the filter on node n, if it is one.
func copyOf(n *block.Node) (*blockCopy, bool) {
	f, ok := n.Impl().(*cbw)
	if !ok {
		return nil, false
	}
	return f.bc, true
}

// before copies what [off, off+n) would overwrite.
func (f *cbw) before(ctx context.Context, off, n int64) error {
	buf := make([]byte, min((n+2*f.bc.cluster-1)/f.bc.cluster*f.bc.cluster, maxCopy))
	return f.bc.copyRange(ctx, off, n, buf)
}

// WriteAt implements block.Impl.
func (f *cbw) WriteAt(ctx context.Context, p []byte, off int64, fl block.Flags) error {
	if err := f.before(ctx, off, int64(len(p))); err != nil {
		return err
	}
	return f.C.WriteAt(ctx, p, off, fl)
}

// Zero implements block.Impl.
func (f *cbw) Zero(ctx context.Context, off, n int64, fl block.Flags) error {
	if err := f.before(ctx, off, n); err != nil {
		return err
	}
	return f.C.Zero(ctx, off, n, fl)
}

// Discard implements block.Impl.
func (f *cbw) Discard(ctx context.Context, off, n int64) error {
	if err := f.before(ctx, off, n); err != nil {
		return err
	}
	return f.C.Discard(ctx, off, n)
}

// ChildPerm implements block.ChildPermer: the filter reads its file for
// the copies and lets nobody resize it (the copy bitmap covers its size;
// its users all write through the filter, which took them over); it
// writes the target, which others may read and write (a fleecing
// export), but not resize.
func (f *cbw) ChildPerm(c *block.Child, perm, shared block.Perm) (block.Perm, block.Perm) {
	if c.Role()&block.RoleFiltered == 0 {
		return block.PermWrite, block.PermAll &^ block.PermResize
	}
	return perm | block.PermConsistentRead, shared &^ block.PermResize
}

func init() {
	block.Register("copy-before-write", block.KindFilter, openCBW)
}
