package mirror

import (
	"context"
	"sync/atomic"

	"github.com/blockd/blockd/pkg/block"
)

// TopOptions are the options of the mirror_top filter. Users cannot name
// the driver; a mirroring job opens it above its source.
type TopOptions struct {
	Backing block.NodeRef `json:"backing"`
	// Commit makes the filter take the permissions of an active commit
	// (QEMU's is_commit): it does not pass consistent read down (the
	// images being committed may not be read so) and lets others write
	// below it (the job writes base, under them).
	Commit bool `json:"x-commit,omitempty"`
}

// top is the mirror_top filter: like QEMU's, its filtered child is
// called "backing". Every write to the source passes through it, so the
// dirty bitmap the job puts on it records them all.
type top struct {
	block.Forward
	commit bool
	// active is the engine of a write-blocking mirror: writes through the
	// filter reach the target before they complete. nil: background.
	active atomic.Pointer[Engine]
}

// setActive makes the filter on node n mirror its writes synchronously
// through e.
func setActive(n *block.Node, e *Engine) {
	if t, ok := n.Impl().(*top); ok {
		t.active.Store(e)
	}
}

// WriteAt implements block.Impl.
func (t *top) WriteAt(ctx context.Context, p []byte, off int64, fl block.Flags) error {
	e := t.active.Load()
	if e == nil {
		return t.C.WriteAt(ctx, p, off, fl)
	}
	return e.activeWrite(ctx, off, int64(len(p)),
		func() error { return t.C.WriteAt(ctx, p, off, fl) },
		func() error { return e.Target.WriteAt(ctx, p, off, 0) })
}

// Zero implements block.Impl.
func (t *top) Zero(ctx context.Context, off, n int64, fl block.Flags) error {
	e := t.active.Load()
	if e == nil {
		return t.C.Zero(ctx, off, n, fl)
	}
	return e.activeWrite(ctx, off, n,
		func() error { return t.C.Zero(ctx, off, n, fl) },
		func() error { return e.Target.Zero(ctx, off, n, fl&block.FlagMayUnmap) })
}

// Discard implements block.Impl: the target forgets the range too.
func (t *top) Discard(ctx context.Context, off, n int64) error {
	e := t.active.Load()
	if e == nil {
		return t.C.Discard(ctx, off, n)
	}
	return e.activeWrite(ctx, off, n,
		func() error { return t.C.Discard(ctx, off, n) },
		func() error { return e.Target.Discard(ctx, off, n) })
}

func openTop(ctx context.Context, o *block.Opener, opts *TopOptions) (block.Impl, error) {
	c, err := o.Attach(ctx, "backing", opts.Backing, block.RoleFilter)
	if err != nil {
		return nil, err
	}
	return &top{Forward: block.Forward{C: c}, commit: opts.Commit}, nil
}

// ChildPerm implements block.ChildPermer: a filter's, adjusted for
// commit.
func (t *top) ChildPerm(c *block.Child, perm, shared block.Perm) (block.Perm, block.Perm) {
	if t.commit {
		return perm &^ block.PermConsistentRead, shared | block.PermWrite
	}
	return perm, shared
}

func init() {
	d := block.Register("mirror_top", block.KindFilter, openTop)
	d.Implicit = true
}

// SpliceRead implements block.Splicer: reads pass through unseen, so a
// copy may move the source's pages by reference (see Engine).
func (t *top) SpliceRead(ctx context.Context, pipe int, off int64, n int) (int, error) {
	return t.C.SpliceRead(ctx, pipe, off, n)
}
