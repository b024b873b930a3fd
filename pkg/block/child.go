package block

import (
	"sync/atomic"
)

// Parent is whatever owns a Child: a node, an export, a job.
type Parent interface {
	// Describe names the parent in messages: "node 'top'", "export 'exp0'".
	Describe() string
	// ParentInfo is how x-debug-query-block-graph shows the parent:
	// kind is "block-driver", "block-backend" or "block-job".
	ParentInfo() (kind, name string)
}

// Child is an edge from a parent to a node. I/O goes through it so that
// the checks of the gate and the in-flight accounting cannot be skipped.
type Child struct {
	name   string
	role   Role
	parent Parent
	node   atomic.Pointer[Node] // swapped only while drained, under the graph lock

	// perms packs what the parent takes (low byte) and shares (next
	// byte); written under the graph lock, read by the gate.
	perms atomic.Uint32
	adj   PermAdjust // fixed adjustments to the role's default perms
	// fixed is set for edges whose permissions do not derive from a node
	// parent (exports, jobs): they stay as given.
	fixed bool

	frozen int // > 0: may not be detached or retargeted; guarded by the graph lock
	// blocker is why this edge blocks operations on its node; guarded
	// by the graph lock.
	blocker blocker
}

// PermAdjust changes the role's default permissions of a child: Need is
// added to what the parent takes, Unshare removed from what it shares and
// Share added to it.
type PermAdjust struct {
	Need, Unshare, Share Perm
}

// Name is the edge's name: "file", "backing", "children.0", "root".
func (c *Child) Name() string { return c.name }

// Role is what the edge means.
func (c *Child) Role() Role { return c.role }

// Parent is the edge's owner.
func (c *Child) Parent() Parent { return c.parent }

// ParentNode is the parent if it is a node, else nil.
func (c *Child) ParentNode() *Node {
	n, _ := c.parent.(*Node)
	return n
}

// Node is the node the edge points at.
func (c *Child) Node() *Node { return c.node.Load() }

// Perm is what the parent takes on the child and what it shares.
func (c *Child) Perm() (perm, shared Perm) {
	v := c.perms.Load()
	return Perm(v), Perm(v >> 8)
}

func (c *Child) setPerm(perm, shared Perm) {
	c.perms.Store(uint32(perm) | uint32(shared)<<8)
}

// Frozen reports whether a job froze the edge.
func (c *Child) Frozen() bool { return c.frozen > 0 }
