package block

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// Root is a user of the graph from outside it: an NBD export, a job, a
// command doing I/O. It holds one edge to a node and is a drain source:
// while drained, new requests through it wait, so that graph changes see
// no I/O in flight. QEMU calls this a BlockBackend.
type Root struct {
	kind, name, desc string
	child            *Child

	mu       sync.Mutex
	cond     sync.Cond
	quiesced int // drain nesting; guarded by mu
	inflight int // requests inside; guarded by mu
}

// RootOptions describe a new root edge.
type RootOptions struct {
	// Name is the edge name shown by x-debug-query-block-graph ("root").
	Name string
	// Desc is how the root is named in messages; "" gives qsd's "an
	// unnamed block device".
	Desc string
	// Kind and ID are how x-debug-query-block-graph shows the parent:
	// "block-backend" and "" for exports; "block-job" and the job id for jobs.
	Kind, ID     string
	Perm, Shared Perm
}

// NewRoot attaches a root user to n with fixed permissions.
func (t *Txn) NewRoot(n *Node, o RootOptions) (*Root, error) {
	if o.Name == "" {
		o.Name = "root"
	}
	if o.Kind == "" {
		o.Kind = "block-backend"
	}
	r := &Root{kind: o.Kind, name: o.ID, desc: o.Desc}
	r.cond.L = &r.mu
	c := &Child{name: o.Name, parent: r, fixed: true}
	c.node.Store(n)
	c.setPerm(o.Perm, o.Shared)
	r.child = c
	n.parents = append(n.parents, c)
	if err := t.g.refreshPerms(); err != nil {
		t.g.detachLocked(c)
		return nil, err
	}
	t.OnUndo(func() { t.g.detachLocked(c) })
	return r, nil
}

// Detach removes the root's edge (the root is no longer usable). Nodes
// left without users that the monitor does not own are closed.
func (t *Txn) Detach(r *Root) {
	c := r.child
	t.g.detachLocked(c)
	t.OnUndo(func() {
		// Undoing a detach re-links the edge; the node may have been
		// closed meanwhile only if nothing else held it, which Abort
		// cannot restore: callers detach last.
		n := c.Node()
		if !n.closed {
			n.parents = append(n.parents, c)
		}
	})
}

// SetPerm changes what the root takes and shares; checked at Commit.
func (t *Txn) SetRootPerm(r *Root, perm, shared Perm) {
	op, os := r.child.Perm()
	r.child.setPerm(perm, shared)
	t.OnUndo(func() { r.child.setPerm(op, os) })
}

// Describe implements Parent.
func (r *Root) Describe() string {
	if r.desc != "" {
		return r.desc
	}
	return "an unnamed block device"
}

// ConflictDesc is how permission conflict messages name the root.
func (r *Root) ConflictDesc() string { return r.Describe() }

// ParentInfo implements Parent.
func (r *Root) ParentInfo() (kind, name string) { return r.kind, r.name }

// Child is the root's edge.
func (r *Root) Child() *Child { return r.child }

// Node is the node the root uses now (it follows graph changes).
func (r *Root) Node() *Node { return r.child.Node() }

// Size is the size of the node the root uses.
func (r *Root) Size() int64 { return r.child.Node().Size() }

func (r *Root) enter() {
	r.mu.Lock()
	for r.quiesced > 0 {
		r.cond.Wait()
	}
	r.inflight++
	r.mu.Unlock()
}

func (r *Root) exit() {
	r.mu.Lock()
	r.inflight--
	if r.inflight == 0 {
		r.cond.Broadcast()
	}
	r.mu.Unlock()
}

// quiesce stops new requests; wait blocks until none are in flight.
func (r *Root) quiesce() {
	r.mu.Lock()
	r.quiesced++
	r.mu.Unlock()
}

func (r *Root) wait() {
	r.mu.Lock()
	for r.inflight > 0 {
		r.cond.Wait()
	}
	r.mu.Unlock()
}

func (r *Root) resume() {
	r.mu.Lock()
	r.quiesced--
	if r.quiesced == 0 {
		r.cond.Broadcast()
	}
	r.mu.Unlock()
}

// checkRoot bounds a request by the node's size: users outside the graph
// never go past the end.
func (r *Root) check(off, n int64) error {
	if err := checkRange(off, n); err != nil {
		return err
	}
	if size := r.Size(); off+n > size {
		return Errorf(ErrOutOfRange, "request at offset %d length %d is beyond the end of the device (%d bytes)", off, n, size)
	}
	return nil
}

// timed adds the time since start to the counter of the node the root
// uses: the node's *_total_time_ns are what its users waited.
func timed(c *atomic.Int64, start time.Time) { c.Add(int64(time.Since(start))) }

// ReadAt reads through the root.
func (r *Root) ReadAt(ctx context.Context, p []byte, off int64, f Flags) error {
	if err := r.check(off, int64(len(p))); err != nil {
		return err
	}
	r.enter()
	defer r.exit()
	defer timed(&r.child.Node().Stats.RdTimeNs, time.Now())
	return r.child.ReadAt(ctx, p, off, f)
}

// WriteAt writes through the root.
func (r *Root) WriteAt(ctx context.Context, p []byte, off int64, f Flags) error {
	if err := r.check(off, int64(len(p))); err != nil {
		return err
	}
	r.enter()
	defer r.exit()
	defer timed(&r.child.Node().Stats.WrTimeNs, time.Now())
	return r.child.WriteAt(ctx, p, off, f)
}

// Zero writes zeroes through the root.
func (r *Root) Zero(ctx context.Context, off, n int64, f Flags) error {
	if err := r.check(off, n); err != nil {
		return err
	}
	r.enter()
	defer r.exit()
	defer timed(&r.child.Node().Stats.WrTimeNs, time.Now())
	return r.child.Zero(ctx, off, n, f)
}

// Discard discards through the root.
func (r *Root) Discard(ctx context.Context, off, n int64) error {
	if err := r.check(off, n); err != nil {
		return err
	}
	r.enter()
	defer r.exit()
	defer timed(&r.child.Node().Stats.UnmapTimeNs, time.Now())
	return r.child.Discard(ctx, off, n)
}

// Flush flushes the root's node.
func (r *Root) Flush(ctx context.Context) error {
	r.enter()
	defer r.exit()
	defer timed(&r.child.Node().Stats.FlushTimeNs, time.Now())
	return r.child.Flush(ctx)
}

// Truncate resizes the root's node.
func (r *Root) Truncate(ctx context.Context, size int64, exact bool) error {
	r.enter()
	defer r.exit()
	return r.child.Truncate(ctx, size, exact)
}

// Do runs fn as one request through the root: a drain waits for it, and
// it waits for a drain to end. Use it for work that needs the node to stay
// put across several calls (block status walks, copy loops).
func (r *Root) Do(fn func(c *Child) error) error {
	r.enter()
	defer r.exit()
	return fn(r.child)
}
