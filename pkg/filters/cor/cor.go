package cor

import (
	"context"
	"sync"

	"github.com/blockd/blockd/pkg/block"
)

// Options are BlockdevOptionsCor's members.
type Options struct {
	File   block.NodeRef `json:"file"`
	Bottom *string       `json:"bottom,omitempty"`
}

// Filter is an open copy-on-read node.
type Filter struct {
	block.Forward
	// bottom limits what is copied: only data allocated in the chain
	// from the filtered node's backing down to bottom (inclusive) is
	// copied up. nil: everything the top does not allocate is.
	bottom *block.Node
	locks  block.RangeLock
}

func open(ctx context.Context, o *block.Opener, opts *Options) (block.Impl, error) {
	c, err := o.Attach(ctx, "file", opts.File, block.RoleFilter)
	if err != nil {
		return nil, err
	}
	f := &Filter{Forward: block.Forward{C: c}}
	if opts.Bottom != nil {
		name := *opts.Bottom
		b := o.Txn().Graph().Lookup(name)
		switch {
		case b == nil:
			return nil, block.Errorf(block.ErrNotFound, "Bottom node '%s' not found", name)
		case b.IsFilter():
			return nil, block.Errorf(block.ErrInvalid, "Bottom node '%s' is a filter", name)
		case !block.InChain(c.Node(), b):
			// compat(qsd-7.2): qsd has no message here (it does not check,
			// and hangs freezing the chain); this one is ours.
			return nil, block.Errorf(block.ErrInvalid, "Bottom node '%s' is not in the backing chain of '%s'", name, c.Node().Name())
		}
		f.bottom = b
		// Copies come from the links down to bottom: nobody may change
		// them while the filter exists (as qsd freezes them).
		if err := o.FreezeChain(b); err != nil {
			return nil, err
		}
	}
	return f, nil
}

// Of returns the copy-on-read filter behind node n, if it is one.
func Of(n *block.Node) (*Filter, bool) {
	f, ok := n.Impl().(*Filter)
	return f, ok
}

// Bottom is the node given as "bottom", or nil.
func (f *Filter) Bottom() *block.Node { return f.bottom }

// ChildPerm implements block.ChildPermer: the parents' consistent-read,
// write and resize pass through, and the filter always takes
// write-unchanged for its copies and shares it, so other writers are
// never stopped (QEMU's copy-on-read permissions).
func (f *Filter) ChildPerm(c *block.Child, perm, shared block.Perm) (block.Perm, block.Perm) {
	const pass = block.PermConsistentRead | block.PermWrite | block.PermResize
	return perm&pass | block.PermWriteUnchanged, shared&pass | block.PermWriteUnchanged
}

// granularity is the unit copied up: the top's cluster (OptimalTransfer)
// or request alignment, and never less than a sector, the allocation
// granularity of every format.
func granularity(top *block.Node) int64 {
	l := top.Caps().Limits
	return max(l.OptimalTransfer, l.RequestAlign, 512)
}

// nothingToCopy reports whether top can never need a copy: a protocol
// node (file, null-co, nbd) allocates all of itself.
func nothingToCopy(top *block.Node) bool {
	return block.SkipFilters(top).Driver().Kind == block.KindProtocol
}

func alignDown(x, a int64) int64 { return x - x%a }
func alignUp(x, a int64) int64   { return alignDown(x+a-1, a) }

// ReadAt reads through the child; what the child's top layer does not
// allocate itself is read from further down and also written into the
// top, in whole clusters, so that later reads (and qemu-img map) find it
// there. Overlapping copy-ups are serialised.
func (f *Filter) ReadAt(ctx context.Context, p []byte, off int64, fl block.Flags) error {
	top := f.C.Node()
	end := off + int64(len(p))
	// Fast paths: nothing to copy into a protocol node; otherwise ask
	// whether the top has the whole range already.
	if nothingToCopy(top) {
		return f.C.ReadAt(ctx, p, off, fl)
	}
	if e, err := block.ResolveStatus(ctx, top, off, int64(len(p))); err == nil && e.Status&block.StatusAllocated != 0 && e.Len >= int64(len(p)) {
		return f.C.ReadAt(ctx, p, off, fl)
	}
	g := granularity(top)
	lo, hi := alignDown(off, g), min(alignUp(end, g), max(top.Size(), end))
	lk, err := f.locks.Lock(ctx, lo, hi)
	if err != nil {
		return err
	}
	defer f.locks.Unlock(lk)
	for pos := lo; pos < hi; {
		n, err := f.copyUp(ctx, top, pos, hi-pos, p, off, fl)
		if err != nil {
			return err
		}
		pos += n
	}
	return nil
}

// overlap is the part of [pos, pos+n) inside the request [off, off+len(p)).
func overlap(pos, n int64, p []byte, off int64) (dst []byte, at int64) {
	s, e := max(pos, off), min(pos+n, off+int64(len(p)))
	if s >= e {
		return nil, 0
	}
	return p[s-off : e-off], s
}

// copyUp handles the first extent of [pos, pos+n): it reads it into the
// caller's buffer where the request covers it and copies it into the top
// when it has to. It returns the extent's length.
func (f *Filter) copyUp(ctx context.Context, top *block.Node, pos, n int64, p []byte, off int64, fl block.Flags) (int64, error) {
	if pos >= top.Size() {
		// Past the end of the image (a read beyond it): zeroes, no copy.
		dst, _ := overlap(pos, n, p, off)
		clear(dst)
		return n, nil
	}
	n = min(n, top.Size()-pos)
	e, err := block.ResolveStatus(ctx, top, pos, n)
	copying := true
	if err == nil {
		n = e.Len
		if e.Status&block.StatusAllocated != 0 {
			copying = false
		}
	} // on error, copy anyway: the read below will tell
	if copying && f.bottom != nil {
		copying = false
		// With the top itself as bottom nothing below it is copied.
		if next := block.BackingChainNext(top); next != nil && block.SkipFilters(top) != f.bottom {
			alloc, m, err := block.IsAllocatedAbove(ctx, next, f.bottom, true, pos, n)
			if err != nil || alloc {
				copying = true
			}
			if err == nil {
				n = m
			}
		}
	}
	dst, at := overlap(pos, n, p, off)
	if !copying {
		if len(dst) == 0 {
			return n, nil
		}
		return n, f.C.ReadAt(ctx, dst, at, fl)
	}
	// A request that covers the whole extent (a stream's cluster-aligned
	// chunks always do) is read into and written from directly: no
	// allocation and no second copy. Otherwise a pooled scratch buffer.
	buf := dst
	if at != pos || int64(len(dst)) != n {
		bp := scratch(n)
		defer scratchPool.Put(bp)
		buf = (*bp)[:n]
	}
	if err := f.C.ReadAt(ctx, buf, pos, fl); err != nil {
		return 0, err
	}
	// The copy does not change what readers see: write-unchanged.
	if block.IsZero(buf) && top.Caps().Zero {
		err = f.C.Zero(ctx, pos, n, block.FlagWriteUnchanged)
	} else {
		err = f.C.WriteAt(ctx, buf, pos, block.FlagWriteUnchanged)
	}
	if err != nil {
		return 0, err
	}
	if len(dst) > 0 && &buf[0] != &dst[0] {
		copy(dst, buf[at-pos:])
	}
	return n, nil
}

// scratchPool holds buffers for copy-ups the request does not cover
// (partial clusters), so that reads through the filter do not allocate.
var scratchPool sync.Pool

func scratch(n int64) *[]byte {
	if bp, ok := scratchPool.Get().(*[]byte); ok && int64(cap(*bp)) >= n {
		return bp
	}
	b := make([]byte, n)
	return &b
}

// lockWrite takes the range lock for a request that changes data, so that
// it cannot interleave with a copy-up of the same clusters and be
// overwritten by the old data the copy read.
func (f *Filter) lockWrite(ctx context.Context, off, n int64) (func(), error) {
	top := f.C.Node()
	if nothingToCopy(top) {
		return func() {}, nil
	}
	g := granularity(top)
	lk, err := f.locks.Lock(ctx, alignDown(off, g), alignUp(off+n, g))
	if err != nil {
		return nil, err
	}
	return func() { f.locks.Unlock(lk) }, nil
}

func (f *Filter) WriteAt(ctx context.Context, p []byte, off int64, fl block.Flags) error {
	unlock, err := f.lockWrite(ctx, off, int64(len(p)))
	if err != nil {
		return err
	}
	defer unlock()
	return f.C.WriteAt(ctx, p, off, fl)
}

func (f *Filter) Zero(ctx context.Context, off, n int64, fl block.Flags) error {
	unlock, err := f.lockWrite(ctx, off, n)
	if err != nil {
		return err
	}
	defer unlock()
	return f.C.Zero(ctx, off, n, fl)
}

func (f *Filter) Discard(ctx context.Context, off, n int64) error {
	unlock, err := f.lockWrite(ctx, off, n)
	if err != nil {
		return err
	}
	defer unlock()
	return f.C.Discard(ctx, off, n)
}
