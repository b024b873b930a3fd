package block

import (
	"context"
	"slices"
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
	held             []*Child // more edges the owner holds (Hold); graph lock
	hooks            DrainHooks

	mu       sync.Mutex
	cond     sync.Cond
	quiesced int // drain nesting; guarded by mu
	inflight int // requests inside; guarded by mu

	// Stats count the requests sent through this root only, as QEMU
	// counts a BlockBackend's (its node's Stats count every user's).
	Stats RootStats
}

// RootStats are a root's own request counters.
type RootStats struct {
	RdBytes, WrBytes, UnmapBytes                 atomic.Int64
	RdOps, WrOps, FlushOps, UnmapOps             atomic.Int64
	FailedRd, FailedWr, FailedFlush, FailedUnmap atomic.Int64
	InvalidRd, InvalidWr, InvalidUnmap           atomic.Int64
	RdTimeNs, WrTimeNs, FlushTimeNs, UnmapTimeNs atomic.Int64
	// LastAccess is when the last request ended (UnixNano), 0 before any.
	LastAccess atomic.Int64
}

// The kinds of request RootStats counts.
const (
	acctRead = iota
	acctWrite
	acctFlush
	acctUnmap
)

// account counts one request of kind that moved n bytes and took the
// time since start, or failed with err.
func (s *RootStats) account(kind int, n int64, start time.Time, err error) {
	now := time.Now()
	s.LastAccess.Store(now.UnixNano())
	d := int64(now.Sub(start))
	type ctrs struct{ ops, bytes, failed, ns *atomic.Int64 }
	c := [...]ctrs{
		acctRead:  {&s.RdOps, &s.RdBytes, &s.FailedRd, &s.RdTimeNs},
		acctWrite: {&s.WrOps, &s.WrBytes, &s.FailedWr, &s.WrTimeNs},
		acctFlush: {&s.FlushOps, nil, &s.FailedFlush, &s.FlushTimeNs},
		acctUnmap: {&s.UnmapOps, &s.UnmapBytes, &s.FailedUnmap, &s.UnmapTimeNs},
	}[kind]
	if err != nil {
		c.failed.Add(1)
		return
	}
	c.ops.Add(1)
	if c.bytes != nil {
		c.bytes.Add(n)
	}
	c.ns.Add(d)
}

// invalid counts a request refused before it was sent.
func (s *RootStats) invalid(kind int) {
	switch kind {
	case acctRead:
		s.InvalidRd.Add(1)
	case acctWrite:
		s.InvalidWr.Add(1)
	case acctUnmap:
		s.InvalidUnmap.Add(1)
	}
}

// DrainHooks are how a root's owner that issues requests on its own (a
// job) takes part in drains. Requests through such a root are not held
// back while drained, because the owner may be in the middle of a step
// that needs several: instead DrainBegin asks the owner to stop at its
// next pause point, and DrainWait blocks until it has stopped there (or
// has no more work); the drain then also waits for the requests it had in
// flight. DrainEnd lets it go on. Begin and End are called once per
// outermost drain, outside the root's lock, with the graph lock held: the
// owner must not need the graph lock to reach its pause point.
type DrainHooks interface {
	DrainBegin()
	DrainWait()
	DrainEnd()
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
	// Hooks, if set, make the root's owner a drain participant (see
	// DrainHooks) instead of having its requests held back.
	Hooks DrainHooks
}

// NewRoot attaches a root user to n with fixed permissions.
func (t *Txn) NewRoot(n *Node, o RootOptions) (*Root, error) {
	if o.Name == "" {
		o.Name = "root"
	}
	if o.Kind == "" {
		o.Kind = "block-backend"
	}
	r := &Root{kind: o.Kind, name: o.ID, desc: o.Desc, hooks: o.Hooks}
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

// Hold makes the root's owner a user of n too, through an edge called
// name that takes perm and shares shared, without I/O through it (a job
// holds the nodes it works on this way: "active node", "intermediate
// node"). The edge goes away with Detach.
func (t *Txn) Hold(r *Root, n *Node, name string, perm, shared Perm) (*Child, error) {
	c := &Child{name: name, parent: r, fixed: true}
	c.node.Store(n)
	c.setPerm(perm, shared)
	n.parents = append(n.parents, c)
	r.held = append(r.held, c)
	if err := t.g.refreshPerms(); err != nil {
		r.held = r.held[:len(r.held)-1]
		t.g.detachLocked(c)
		return nil, err
	}
	t.OnUndo(func() {
		r.held = slices.DeleteFunc(r.held, func(x *Child) bool { return x == c })
		t.g.detachLocked(c)
	})
	return c, nil
}

// Detach removes the root's edges (the root is no longer usable). Nodes
// left without users that the monitor does not own are closed.
func (t *Txn) Detach(r *Root) {
	held := r.held
	r.held = nil
	edges := append([]*Child{r.child}, held...)
	at := make([]int, len(edges))
	for i, c := range edges {
		at[i] = t.g.detachLocked(c)
	}
	t.OnUndo(func() {
		// Undoing a detach re-links the edges where they were, last
		// first; a node may have been closed meanwhile only if nothing
		// else held it, which Abort cannot restore: callers detach last.
		r.held = held
		for i := len(edges) - 1; i >= 0; i-- {
			if n := edges[i].Node(); !n.closed {
				n.insertParent(at[i], edges[i])
			}
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

// Edges are the root's edge and those it holds (Hold). Call under the
// graph lock.
func (r *Root) Edges() []*Child { return append([]*Child{r.child}, r.held...) }

// Node is the node the root uses now (it follows graph changes).
func (r *Root) Node() *Node { return r.child.Node() }

// Size is the size of the node the root uses.
func (r *Root) Size() int64 { return r.child.Node().Size() }

func (r *Root) enter() {
	r.mu.Lock()
	for r.quiesced > 0 && r.hooks == nil {
		r.cond.Wait()
	}
	r.inflight++
	r.mu.Unlock()
}

// tryEnter is enter for a caller that must not wait: it fails while the
// root is quiesced.
func (r *Root) tryEnter() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.quiesced > 0 && r.hooks == nil {
		return false
	}
	r.inflight++
	return true
}

func (r *Root) exit() {
	r.mu.Lock()
	r.inflight--
	if r.inflight == 0 {
		r.cond.Broadcast()
	}
	r.mu.Unlock()
}

// quiesce stops new requests (or asks the owner to stop issuing them);
// wait blocks until none are in flight.
func (r *Root) quiesce() {
	r.mu.Lock()
	r.quiesced++
	first := r.quiesced == 1
	r.mu.Unlock()
	if first && r.hooks != nil {
		r.hooks.DrainBegin()
	}
}

func (r *Root) wait() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for {
		for r.inflight > 0 {
			r.cond.Wait()
		}
		if r.hooks == nil {
			return
		}
		// The owner may still issue requests until it reaches its pause
		// point; once it is there, wait for what it left in flight.
		r.mu.Unlock()
		r.hooks.DrainWait()
		r.mu.Lock()
		if r.inflight == 0 {
			return
		}
	}
}

func (r *Root) resume() {
	r.mu.Lock()
	r.quiesced--
	last := r.quiesced == 0
	if last {
		r.cond.Broadcast()
	}
	r.mu.Unlock()
	if last && r.hooks != nil {
		r.hooks.DrainEnd()
	}
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
func timed(c *atomic.Int64, h *Latency, start time.Time) {
	d := time.Since(start)
	c.Add(int64(d))
	h.Observe(d)
}

// ReadAt reads through the root.
func (r *Root) ReadAt(ctx context.Context, p []byte, off int64, f Flags) error {
	if err := r.check(off, int64(len(p))); err != nil {
		r.Stats.invalid(acctRead)
		return err
	}
	r.enter()
	defer r.exit()
	start := time.Now()
	defer timed(&r.child.Node().Stats.RdTimeNs, &r.child.Node().Stats.RdLatency, start)
	err := r.child.ReadAt(ctx, p, off, f)
	r.Stats.account(acctRead, int64(len(p)), start, err)
	return err
}

// WriteAt writes through the root.
func (r *Root) WriteAt(ctx context.Context, p []byte, off int64, f Flags) error {
	if err := r.check(off, int64(len(p))); err != nil {
		r.Stats.invalid(acctWrite)
		return err
	}
	r.enter()
	defer r.exit()
	start := time.Now()
	defer timed(&r.child.Node().Stats.WrTimeNs, &r.child.Node().Stats.WrLatency, start)
	err := r.child.WriteAt(ctx, p, off, f)
	r.Stats.account(acctWrite, int64(len(p)), start, err)
	return err
}

// Zero writes zeroes through the root.
func (r *Root) Zero(ctx context.Context, off, n int64, f Flags) error {
	if err := r.check(off, n); err != nil {
		r.Stats.invalid(acctWrite)
		return err
	}
	r.enter()
	defer r.exit()
	start := time.Now()
	defer timed(&r.child.Node().Stats.WrTimeNs, &r.child.Node().Stats.WrLatency, start)
	err := r.child.Zero(ctx, off, n, f)
	r.Stats.account(acctWrite, n, start, err)
	return err
}

// Discard discards through the root.
func (r *Root) Discard(ctx context.Context, off, n int64) error {
	if err := r.check(off, n); err != nil {
		r.Stats.invalid(acctUnmap)
		return err
	}
	r.enter()
	defer r.exit()
	start := time.Now()
	defer timed(&r.child.Node().Stats.UnmapTimeNs, &r.child.Node().Stats.UnmapLatency, start)
	err := r.child.Discard(ctx, off, n)
	r.Stats.account(acctUnmap, n, start, err)
	return err
}

// Flush flushes the root's node.
func (r *Root) Flush(ctx context.Context) error {
	r.enter()
	defer r.exit()
	start := time.Now()
	defer timed(&r.child.Node().Stats.FlushTimeNs, &r.child.Node().Stats.FlushLatency, start)
	err := r.child.Flush(ctx)
	r.Stats.account(acctFlush, 0, start, err)
	return err
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
