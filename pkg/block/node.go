package block

import (
	"context"
	"encoding/json"
	"slices"
	"sync"
	"sync/atomic"
)

// Node is one open driver instance in the graph.
type Node struct {
	g        *Graph
	name     string // node-name, given or generated; immutable
	autoName bool   // name was generated (#blockNNN); immutable
	drv      *Driver
	impl     Impl
	common   CommonOptions   // immutable after open, except by reopen (drained)
	opts     any             // the driver's decoded options
	raw      json.RawMessage // the options the node was opened with
	seq      uint64          // when its open finished; guarded by g.mu

	// implicit marks filters that jobs insert (mirror_top, commit_top,
	// the stream's copy-on-read); queries of a device's chain skip them.
	implicit bool
	// monitorOwned: created by a top-level blockdev-add, so blockdev-del
	// may remove it. Guarded by g.mu.
	monitorOwned bool

	readOnly atomic.Bool
	caps     atomic.Pointer[Caps]
	size     atomic.Int64

	writeThreshold atomic.Uint64 // see SetWriteThreshold

	children atomic.Pointer[[]*Child] // copy-on-write; replaced under g.mu
	parents  []*Child                 // edges that point at n; guarded by g.mu

	perm, shared Perm         // what n's parents need of it, cumulated; guarded by g.mu
	ownFrozen    []*Child     // links n froze for its lifetime; guarded by g.mu
	permSet      bool         // perm/shared were applied once; guarded by g.mu
	drained      atomic.Int32 // drain nesting

	// rmw serialises unaligned read-modify-write against aligned writes on
	// nodes whose RequestAlign > 1.
	rmw sync.RWMutex

	bitmaps nodeBitmaps // dirty bitmaps; bitmap.go

	Stats  Stats
	closed bool // guarded by g.mu
}

// Name is the node-name.
func (n *Node) Name() string { return n.name }

// AutoNamed reports whether the name was generated.
func (n *Node) AutoNamed() bool { return n.autoName }

// Driver is the node's driver.
func (n *Node) Driver() *Driver { return n.drv }

// Impl is the node's driver instance. Use it only to ask the optional
// management interfaces of this very node; I/O goes through a Child.
func (n *Node) Impl() Impl { return n.impl }

// Options are the node's own decoded driver options.
func (n *Node) Options() any { return n.opts }

// Common are the options every driver shares.
func (n *Node) Common() CommonOptions { return n.common }

// RawOptions are the options the node was opened with, as JSON.
func (n *Node) RawOptions() json.RawMessage { return n.raw }

// IsFilter reports whether the node's driver is a filter.
func (n *Node) IsFilter() bool { return n.drv.Kind == KindFilter }

// Implicit reports whether a job inserted the node.
func (n *Node) Implicit() bool { return n.implicit }

// ReadOnly reports whether the node refuses writes.
func (n *Node) ReadOnly() bool { return n.readOnly.Load() }

// MonitorOwned reports whether blockdev-del may remove the node.
func (n *Node) MonitorOwned() bool { return n.monitorOwned }

// Caps are the node's cached capabilities.
func (n *Node) Caps() Caps { return *n.caps.Load() }

// Size is the node's virtual size: cached for drivers that store data, the
// filtered child's for filters (so that a resize below shows at once).
func (n *Node) Size() int64 {
	if c := FilteredChild(n); c != nil {
		return c.Node().Size()
	}
	return n.size.Load()
}

// Graph is the graph the node belongs to.
func (n *Node) Graph() *Graph { return n.g }

// Children lists n's child edges in the order they were attached. The
// slice must not be modified.
func (n *Node) Children() []*Child {
	if p := n.children.Load(); p != nil {
		return *p
	}
	return nil
}

// Parents lists the edges pointing at n. Call under the graph lock.
func (n *Node) Parents() []*Child { return append([]*Child(nil), n.parents...) }

// Perm returns what n's parents need of it and what they share.
func (n *Node) Perm() (perm, shared Perm) { return n.perm, n.shared }

// ChildNamed returns the child edge called name, or nil. Only for queries
// and option handling that are about names (blockdev-reopen, graph
// queries): code that means a role uses the chain functions.
func (n *Node) ChildNamed(name string) *Child {
	for _, c := range n.Children() {
		if c.name == name {
			return c
		}
	}
	return nil
}

// Describe implements Parent.
func (n *Node) Describe() string { return "node '" + n.name + "'" }

// ParentInfo implements Parent.
func (n *Node) ParentInfo() (kind, name string) { return "block-driver", n.name }

// Filename is what QMP reports as the node's file name: a protocol's own
// name, or, for formats and filters, that of their primary child.
func (n *Node) Filename() string {
	if f, ok := n.impl.(Filenamer); ok {
		return f.Filename()
	}
	if c := PrimaryChild(n); c != nil {
		return c.Node().Filename()
	}
	return ""
}

// RefreshSize asks the driver for its size and caches it.
func (n *Node) RefreshSize(ctx context.Context) error {
	s, err := n.impl.Size(ctx)
	if err != nil {
		return err
	}
	n.size.Store(s)
	return nil
}

// RefreshCaps asks the driver for its capabilities and caches them.
func (n *Node) RefreshCaps() {
	c := n.impl.Caps()
	if c.Limits.RequestAlign < 1 {
		c.Limits.RequestAlign = 1
	}
	n.caps.Store(&c)
}

func (n *Node) setChildren(cs []*Child) {
	cs = append([]*Child(nil), cs...)
	n.children.Store(&cs)
}

// The order of the edge lists is visible: queries list children and
// parents in order, the chain functions take the first child with a
// role, and Blocked names the newest blocker among the parents. So a
// change that takes an edge out notes where it was, and its undo puts it
// back at that place (the lists are then as they were when it was taken
// out, since undos run newest first). Call these under the graph lock.

// removeChild takes c out of n's children and returns where it was, or
// -1 if it was not there.
func (n *Node) removeChild(c *Child) int {
	cs := n.Children()
	i := slices.Index(cs, c)
	if i >= 0 {
		n.setChildren(slices.Delete(slices.Clone(cs), i, i+1))
	}
	return i
}

// insertChild puts c back among n's children at i, as removeChild
// reported it (nothing for -1).
func (n *Node) insertChild(i int, c *Child) {
	if i >= 0 {
		cs := n.Children()
		n.setChildren(slices.Insert(slices.Clone(cs), min(i, len(cs)), c))
	}
}

// removeParent takes c out of n's parents and returns where it was, or
// -1 if it was not there.
func (n *Node) removeParent(c *Child) int {
	i := slices.Index(n.parents, c)
	if i >= 0 {
		n.parents = slices.Delete(n.parents, i, i+1)
	}
	return i
}

// insertParent puts c back among n's parents at i, as removeParent
// reported it (nothing for -1).
func (n *Node) insertParent(i int, c *Child) {
	if i >= 0 {
		n.parents = slices.Insert(n.parents, min(i, len(n.parents)), c)
	}
}

// Stats are per-node I/O counters for query-blockstats.
type Stats struct {
	RdBytes, WrBytes, UnmapBytes       atomic.Int64
	RdOps, WrOps, FlushOps, UnmapOps   atomic.Int64
	FailedRd, FailedWr, FailedFlush    atomic.Int64
	FailedUnmap                        atomic.Int64
	InvalidRd, InvalidWr, InvalidUnmap atomic.Int64
	RdTimeNs, WrTimeNs, FlushTimeNs    atomic.Int64
	UnmapTimeNs                        atomic.Int64
	WrHighestOffset                    atomic.Int64
	DiscardNbOK, DiscardNbFailed       atomic.Int64
	DiscardBytesOK                     atomic.Int64

	// Latency of the requests through roots, as the *TimeNs sums.
	RdLatency, WrLatency, FlushLatency, UnmapLatency Latency
}
