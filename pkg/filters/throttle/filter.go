package throttle

import (
	"context"

	"github.com/blockd/blockd/pkg/block"
)

// Options are BlockdevOptionsThrottle's members.
type Options struct {
	ThrottleGroup string        `json:"throttle-group"`
	File          block.NodeRef `json:"file"`
}

// Filter is an open throttle node. It passes every request to its file
// child; reads, and writes, write-zeroes and discards (all three count as
// writes, of their length), first wait for room in the group's buckets.
// Flushes, block status and truncation are not throttled.
type Filter struct {
	block.Forward
	node  *block.Node
	group *Group
	m     *member
}

func open(ctx context.Context, o *block.Opener, opts *Options) (block.Impl, error) {
	c, err := o.Attach(ctx, "file", opts.File, block.RoleFilter)
	if err != nil {
		return nil, err
	}
	if opts.ThrottleGroup == "" {
		return nil, block.Errorf(block.ErrInvalid, "Please specify a throttle group")
	}
	g, ok := o.Txn().Graph().Object(opts.ThrottleGroup).(*Group)
	if !ok {
		// compat(qsd-7.2): the same message for an object of another type.
		return nil, block.Errorf(block.ErrNotFound, "Throttle group '%s' does not exist", opts.ThrottleGroup)
	}
	// Joining is the last step: a failed open leaves the group unused,
	// and once the node exists its Close leaves the group again.
	f := &Filter{Forward: block.Forward{C: c}, node: o.Node(), group: g}
	f.m = g.join(o.Node().Name())
	return f, nil
}

// Of returns the throttle filter behind node n, if n is a throttle node.
func Of(n *block.Node) (*Filter, bool) {
	f, ok := n.Impl().(*Filter)
	return f, ok
}

// Group is the throttle group the node is a member of.
func (f *Filter) Group() *Group { return f.group }

// GroupName is the id of the node's throttle group.
func (f *Filter) GroupName() string { return f.group.id }

func (f *Filter) ReadAt(ctx context.Context, p []byte, off int64, fl block.Flags) error {
	if err := f.m.intercept(ctx, dirRead, int64(len(p))); err != nil {
		return err
	}
	return f.C.ReadAt(ctx, p, off, fl)
}

func (f *Filter) WriteAt(ctx context.Context, p []byte, off int64, fl block.Flags) error {
	if err := f.m.intercept(ctx, dirWrite, int64(len(p))); err != nil {
		return err
	}
	return f.C.WriteAt(ctx, p, off, fl)
}

func (f *Filter) Zero(ctx context.Context, off, n int64, fl block.Flags) error {
	if err := f.m.intercept(ctx, dirWrite, n); err != nil {
		return err
	}
	return f.C.Zero(ctx, off, n, fl)
}

func (f *Filter) Discard(ctx context.Context, off, n int64) error {
	if err := f.m.intercept(ctx, dirWrite, n); err != nil {
		return err
	}
	return f.C.Discard(ctx, off, n)
}

// DrainBegin implements block.Drainer: held requests go at once, and new
// ones are not throttled until DrainEnd.
func (f *Filter) DrainBegin() { f.group.drainBegin(f.m) }

// DrainEnd implements block.Drainer.
func (f *Filter) DrainEnd() { f.group.drainEnd(f.m) }

// Close leaves the group, so that object-del may delete it.
func (f *Filter) Close() error {
	f.group.leave(f.m)
	return nil
}

// PrepareReopen implements block.Reopener: blockdev-reopen may move the
// node to another throttle group. The node is drained, so no request waits
// in the old group when it switches.
func (f *Filter) PrepareReopen(ctx context.Context, opts any) (commit, abort func(), err error) {
	o := opts.(*Options)
	if o.ThrottleGroup == "" {
		return nil, nil, block.Errorf(block.ErrInvalid, "Please specify a throttle group")
	}
	g, ok := f.node.Graph().Object(o.ThrottleGroup).(*Group)
	if !ok {
		return nil, nil, block.Errorf(block.ErrNotFound, "Throttle group '%s' does not exist", o.ThrottleGroup)
	}
	commit = func() {
		if g == f.group {
			return
		}
		drained := f.node.Drained()
		f.group.leave(f.m)
		f.group, f.m = g, g.join(f.node.Name())
		if drained {
			// DrainEnd will come for the new membership.
			g.drainBegin(f.m)
		}
	}
	return commit, func() {}, nil
}
