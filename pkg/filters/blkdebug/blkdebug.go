package blkdebug

import (
	"context"
	"fmt"
	"math"
	"slices"

	"github.com/blockd/blockd/pkg/block"
)

// Filter is an open blkdebug node.
type Filter struct {
	block.Forward
	rules *rules

	// Limits the node claims; 0: the child's. Immutable after open.
	align, maxTransfer         int64
	optWriteZero, maxWriteZero int64
	optDiscard, maxDiscard     int64
}

var _ block.DebugEventer = (*Filter)(nil)

// intMax is C's INT_MAX, QEMU's bound on the limits.
const intMax = math.MaxInt32

func sizeOption(name string, v *int64) (int64, error) {
	if v == nil {
		return 0, nil
	}
	if *v < 0 {
		return 0, block.Errorf(block.ErrInvalid, "Parameter '%s' expects a non-negative number below 2^64", name)
	}
	return *v, nil
}

func open(ctx context.Context, o *block.Opener, opts *Options) (block.Impl, error) {
	f := &Filter{rules: newRules()}
	// Rules first, as QEMU reads them before opening the image.
	for _, r := range opts.InjectError {
		if err := checkInject(r); err != nil {
			return nil, err
		}
	}
	for _, r := range opts.SetState {
		if !slices.Contains(events, string(r.Event)) {
			return nil, enumError("event", string(r.Event))
		}
	}
	var adj block.PermAdjust
	for _, p := range opts.TakeChildPerms {
		x, ok := p.perm()
		if !ok {
			return nil, enumError("null", string(p)) // a list element: QEMU names it "null"
		}
		adj.Need |= x
	}
	for _, p := range opts.UnshareChildPerms {
		x, ok := p.perm()
		if !ok {
			return nil, enumError("null", string(p))
		}
		adj.Unshare |= x
	}
	var sizes [6]int64
	for i, s := range []struct {
		name string
		v    *int64
	}{{"align", opts.Align}, {"max-transfer", opts.MaxTransfer}, {"opt-write-zero", opts.OptWriteZero},
		{"max-write-zero", opts.MaxWriteZero}, {"opt-discard", opts.OptDiscard}, {"max-discard", opts.MaxDiscard}} {
		var err error
		if sizes[i], err = sizeOption(s.name, s.v); err != nil {
			return nil, err
		}
	}
	f.align, f.maxTransfer, f.optWriteZero, f.maxWriteZero, f.optDiscard, f.maxDiscard =
		sizes[0], sizes[1], sizes[2], sizes[3], sizes[4], sizes[5]

	if opts.Config != nil {
		rs, err := readConfig(*opts.Config)
		if err != nil {
			return nil, err
		}
		for _, r := range rs {
			f.rules.add(r)
		}
	}
	for _, r := range opts.InjectError {
		f.rules.add(injectRule(r))
	}
	for _, r := range opts.SetState {
		f.rules.add(setStateRule(r))
	}

	c, err := o.Attach(ctx, "image", opts.Image, block.RoleFilter, adj)
	if err != nil {
		return nil, err
	}
	f.Forward = block.Forward{C: c}
	if err := f.checkLimits(c.Node().Caps().Limits.RequestAlign); err != nil {
		return nil, err
	}
	f.rules.fire(EventNone)
	return f, nil
}

func checkInject(r InjectErrorOptions) error {
	if !slices.Contains(events, string(r.Event)) {
		return enumError("event", string(r.Event))
	}
	if r.IOType != nil && !slices.Contains(ioTypes, string(*r.IOType)) {
		return enumError("iotype", string(*r.IOType))
	}
	return nil
}

// checkLimits applies QEMU's rules: the alignment is a power of two, and
// every other limit a multiple of the alignment in force (the node's or
// its child's, whichever is larger).
func (f *Filter) checkLimits(childAlign int64) error {
	bad := func(name string, v int64) error {
		return block.Errorf(block.ErrInvalid, "Cannot meet constraints with %s %d", name, v)
	}
	if f.align != 0 && (f.align >= intMax || f.align&(f.align-1) != 0) {
		return bad("align", f.align)
	}
	a := max(f.align, childAlign, 1)
	for _, l := range []struct {
		name   string
		v, mul int64
	}{
		{"max-transfer", f.maxTransfer, a},
		{"opt-write-zero", f.optWriteZero, a},
		{"max-write-zero", f.maxWriteZero, max(f.optWriteZero, a)},
		{"opt-discard", f.optDiscard, a},
		{"max-discard", f.maxDiscard, max(f.optDiscard, a)},
	} {
		if l.v != 0 && (l.v >= intMax || l.v%l.mul != 0) {
			return bad(l.name, l.v)
		}
	}
	return nil
}

// Of returns the blkdebug filter behind node n, if it is one.
func Of(n *block.Node) (*Filter, bool) {
	f, ok := n.Impl().(*Filter)
	return f, ok
}

// Inject adds an inject-error rule to the blkdebug node n at run time
// (tests of other packages: "fail the first write to node X with
// ENOSPC"). Like the rules given at open, it arms when its event happens.
func Inject(n *block.Node, r InjectErrorOptions) error {
	f, ok := Of(n)
	if !ok {
		return fmt.Errorf("node '%s' is not a blkdebug node: %w", n.Name(), block.ErrInvalid)
	}
	return f.Inject(r)
}

// Inject adds an inject-error rule.
func (f *Filter) Inject(r InjectErrorOptions) error {
	if err := checkInject(r); err != nil {
		return err
	}
	f.rules.add(injectRule(r))
	return nil
}

// SetState adds a set-state rule.
func (f *Filter) SetState(r SetStateOptions) error {
	if !slices.Contains(events, string(r.Event)) {
		return enumError("event", string(r.Event))
	}
	f.rules.add(setStateRule(r))
	return nil
}

// DebugEvent implements block.DebugEventer: a driver above fired ev into
// the node (or the generic layer did, on a write to it or a flush of its
// parent).
func (f *Filter) DebugEvent(ev string) { f.rules.fire(Event(ev)) }

// Fire makes event ev happen, as a format driver above would; unlike
// DebugEvent it refuses names that are not BlkdebugEvent values.
func (f *Filter) Fire(ev Event) error {
	if !slices.Contains(events, string(ev)) {
		return enumError("event", string(ev))
	}
	f.rules.fire(ev)
	return nil
}

// State is the state of the node's state machine (1 after open).
func (f *Filter) State() int64 {
	f.rules.mu.Lock()
	defer f.rules.mu.Unlock()
	return f.rules.state
}

// Injected counts the requests the node failed.
func (f *Filter) Injected() int64 {
	f.rules.mu.Lock()
	defer f.rules.mu.Unlock()
	return f.rules.injected
}

// Caps are the child's with the limits the options override.
func (f *Filter) Caps() block.Caps {
	c := f.C.Node().Caps()
	if f.align != 0 {
		c.Limits.RequestAlign = f.align
	}
	if f.maxTransfer != 0 {
		c.Limits.MaxTransfer = f.maxTransfer
	}
	return c
}

func (f *Filter) ReadAt(ctx context.Context, p []byte, off int64, fl block.Flags) error {
	if err := f.rules.check(IORead, off, int64(len(p))); err != nil {
		return err
	}
	return f.C.ReadAt(ctx, p, off, fl)
}

func (f *Filter) WriteAt(ctx context.Context, p []byte, off int64, fl block.Flags) error {
	if err := f.rules.check(IOWrite, off, int64(len(p))); err != nil {
		return err
	}
	return f.C.WriteAt(ctx, p, off, fl)
}

var zeroes = make([]byte, 64<<10)

// Zero passes on the part aligned to opt-write-zero, in pieces of at most
// max-write-zero; the unaligned head and tail are written as zeroes (the
// fallback QEMU's generic layer takes), unless the caller forbids that.
func (f *Filter) Zero(ctx context.Context, off, n int64, fl block.Flags) error {
	a := max(f.Caps().Limits.RequestAlign, f.optWriteZero, 1)
	end := off + n
	lo, hi := min(alignUp(off, a), end), max(alignDown(end, a), off)
	if lo >= hi {
		lo, hi = end, end // nothing aligned: all of it is head
	}
	for _, r := range [][2]int64{{off, lo}, {hi, end}} {
		if r[0] >= r[1] {
			continue
		}
		if fl&block.FlagNoFallback != 0 {
			return fmt.Errorf("blkdebug: %d bytes at %d are not aligned for write-zeroes: %w", r[1]-r[0], r[0], block.ErrNotSupported)
		}
		for o := r[0]; o < r[1]; {
			k := min(r[1]-o, int64(len(zeroes)))
			if err := f.WriteAt(ctx, zeroes[:k], o, fl&^(block.FlagMayUnmap|block.FlagNoFallback)); err != nil {
				return err
			}
			o += k
		}
	}
	return splitAligned(lo, hi, f.maxWriteZero, a, func(o, k int64) error {
		if err := f.rules.check(IOWriteZeroes, o, k); err != nil {
			return err
		}
		return f.C.Zero(ctx, o, k, fl)
	})
}

// Discard passes on the part aligned to opt-discard (and the request
// alignment), in pieces of at most max-discard; discards are advisory, so
// the unaligned rest is dropped.
func (f *Filter) Discard(ctx context.Context, off, n int64) error {
	a := max(f.Caps().Limits.RequestAlign, f.optDiscard, 1)
	lo, hi := alignUp(off, a), alignDown(off+n, a)
	return splitAligned(lo, hi, f.maxDiscard, a, func(o, k int64) error {
		if err := f.rules.check(IODiscard, o, k); err != nil {
			return err
		}
		return f.C.Discard(ctx, o, k)
	})
}

func (f *Filter) Flush(ctx context.Context) error {
	if err := f.rules.check(IOFlush, 0, 0); err != nil {
		return err
	}
	return f.C.Flush(ctx)
}

func (f *Filter) BlockStatus(ctx context.Context, off, n int64) (block.Extent, error) {
	if err := f.rules.check(IOBlockStatus, off, n); err != nil {
		return block.Extent{}, err
	}
	return f.Forward.BlockStatus(ctx, off, n)
}

func alignDown(x, a int64) int64 { return x - x%a }
func alignUp(x, a int64) int64   { return alignDown(x+a-1, a) }

// splitAligned calls fn on [lo, hi) in pieces of at most limit (rounded
// down to a multiple of a); limit 0: one piece.
func splitAligned(lo, hi, limit, a int64, fn func(o, k int64) error) error {
	if limit > 0 {
		limit = max(alignDown(limit, a), a)
	}
	for o := lo; o < hi; {
		k := hi - o
		if limit > 0 {
			k = min(k, limit)
		}
		if err := fn(o, k); err != nil {
			return err
		}
		o += k
	}
	return nil
}

// AllocatedSize implements block.AllocatedSizer: qsd's blkdebug is opened
// like a protocol and reports no allocated size (no actual-size in
// query-named-block-nodes).
func (f *Filter) AllocatedSize() (int64, error) { return 0, block.ErrNotSupported }
