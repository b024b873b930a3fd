package block

import (
	"context"
	"fmt"
)

// Replace points edge c at node to. Permissions are checked at Commit.
func (t *Txn) Replace(c *Child, to *Node) error {
	from := c.Node()
	if from == to {
		return nil
	}
	if err := canReplace(c, to); err != nil {
		return err
	}
	t.replace(c, to)
	return nil
}

// replace points c at to once canReplace allowed it; the node c leaves
// is freed at commit if nothing else holds it.
func (t *Txn) replace(c *Child, to *Node) {
	from := c.Node()
	t.OnUndo(t.retarget(c, from, to))
	t.OnCommit(func() { t.g.freeIfUnused(from) })
}

// canReplace says why edge c may not point at to instead, or nil.
func canReplace(c *Child, to *Node) error {
	if c.frozen > 0 {
		return frozenError(c)
	}
	if p := c.ParentNode(); p != nil && reaches(to, p) {
		return Errorf(ErrInvalid, "Making '%s' a %s child of '%s' would create a cycle", to.name, c.name, p.name)
	}
	return nil
}

// freeIfUnused removes a node that neither a parent nor the monitor holds
// (an implicitly opened child whose last user moved away).
func (g *Graph) freeIfUnused(n *Node) {
	if !n.closed && len(n.parents) == 0 && !n.monitorOwned {
		g.removeNode(n)
	}
}

// frozenError is qsd's message for changing a frozen edge: it names the
// parent and the child the edge points at now.
func frozenError(c *Child) error {
	// compat(qsd-7.2): "Cannot change frozen 'backing' link from 'top' to 'mid'".
	return Errorf(ErrFrozen, "Cannot change frozen '%s' link from '%s' to '%s'", c.name, parentName(c), c.Node().name)
}

func parentName(c *Child) string {
	_, name := c.parent.ParentInfo()
	return name
}

// retarget points edge c, now at from, at to instead, and returns its
// undo: c goes back to its place among from's parents, with the blocker
// it had.
func (t *Txn) retarget(c *Child, from, to *Node) (undo func()) {
	i := from.removeParent(c)
	to.parents = append(to.parents, c)
	c.node.Store(to)
	old := c.blocker
	if c.role&RoleCOW != 0 {
		if p := c.ParentNode(); p != nil {
			c.blocker = backingBlocker(p)
		}
	}
	return func() {
		to.removeParent(c)
		from.insertParent(i, c)
		c.node.Store(from)
		c.blocker = old
	}
}

// ReplaceNode moves the parents of from to to, except those for which
// keep returns true (for example, the edge from a new overlay to from).
// Every edge is checked before any moves.
func (t *Txn) ReplaceNode(from, to *Node, keep func(c *Child) bool) error {
	if from == to {
		return nil
	}
	var move []*Child
	for _, c := range from.parents {
		if keep != nil && keep(c) {
			continue
		}
		if err := canReplace(c, to); err != nil {
			return err
		}
		move = append(move, c)
	}
	for _, c := range move {
		t.replace(c, to)
	}
	return nil
}

// RemoveChild detaches child edge c of node p. A node left without users
// is closed when the change commits... or at once, when it is not
// monitor-owned; undo re-attaches only nodes that are still open.
func (t *Txn) RemoveChild(c *Child) error {
	if c.frozen > 0 {
		return Errorf(ErrFrozen, "Cannot remove frozen '%s' link of '%s'", c.name, parentName(c))
	}
	p := c.ParentNode()
	cn := c.Node()
	if p == nil {
		return fmt.Errorf("edge '%s' has no parent node: %w", c.name, ErrInternal)
	}
	// Keep the child alive until commit: it may come back on abort.
	wasOwned := cn.monitorOwned
	cn.monitorOwned = true
	ci := p.removeChild(c)
	pi := cn.removeParent(c)
	t.OnUndo(func() {
		cn.monitorOwned = wasOwned
		cn.insertParent(pi, c)
		p.insertChild(ci, c)
	})
	t.OnCommit(func() {
		cn.monitorOwned = wasOwned
		t.g.freeIfUnused(cn)
	})
	return nil
}

// SetReadOnly changes a node's read-only state; checked at Commit.
func (t *Txn) SetReadOnly(n *Node, ro bool) {
	old := n.ReadOnly()
	n.readOnly.Store(ro)
	t.OnUndo(func() { n.readOnly.Store(old) })
}

// SetMonitorOwned changes whether blockdev-del may remove n.
func (t *Txn) SetMonitorOwned(n *Node, owned bool) {
	old := n.monitorOwned
	n.monitorOwned = owned
	t.OnUndo(func() { n.monitorOwned = old })
	if !owned {
		t.OnCommit(func() { t.g.freeIfUnused(n) })
	}
}

// Freeze freezes the edges so that nothing can detach or retarget them
// until Unfreeze. All are checked before any is changed: an edge that is
// already frozen (another job holds it) is refused with qsd's message.
func (t *Txn) Freeze(cs ...*Child) error {
	for _, c := range cs {
		if c.frozen > 0 {
			// compat(qsd-7.2): bdrv_freeze_backing_chain's wording.
			return Errorf(ErrFrozen, "Cannot freeze '%s' link to '%s'", c.name, c.Node().name)
		}
	}
	for _, c := range cs {
		c.frozen++
	}
	t.OnUndo(func() {
		for _, c := range cs {
			c.frozen--
		}
	})
	return nil
}

// Unfreeze undoes Freeze. A link that is not frozen is left alone: a
// count below zero would make the next Freeze a no-op.
func (t *Txn) Unfreeze(cs ...*Child) {
	var done []*Child
	for _, c := range cs {
		if c.frozen > 0 {
			c.frozen--
			done = append(done, c)
		}
	}
	t.OnUndo(func() {
		for _, c := range done {
			c.frozen++
		}
	})
}

// ChainLinks lists the filtered and COW links from top down to base, the
// link that points at base included (none when top is base). base nil
// means the whole chain. It fails if base is not below top.
func ChainLinks(top, base *Node) ([]*Child, error) {
	var cs []*Child
	for x := top; x != base; {
		c := FilteredOrCOWChild(x)
		if c == nil {
			if base == nil {
				break
			}
			return nil, Errorf(ErrInvalid, "'%s' is not in the backing chain of '%s'", base.name, top.name)
		}
		cs = append(cs, c)
		x = c.Node()
	}
	return cs, nil
}

// FreezeChain freezes the links from top down to base (see ChainLinks)
// and returns them, for the caller to Unfreeze when it is done.
func (t *Txn) FreezeChain(top, base *Node) ([]*Child, error) {
	cs, err := ChainLinks(top, base)
	if err != nil {
		return nil, err
	}
	if err := t.Freeze(cs...); err != nil {
		return nil, err
	}
	return cs, nil
}

// Delete removes a monitor-owned node that nobody uses (blockdev-del),
// with qsd's messages for each reason it cannot.
func (t *Txn) Delete(name string) error {
	n := t.g.nodes[name]
	if n == nil {
		return Errorf(ErrNotFound, "Failed to find node with node-name='%s'", name)
	}
	for _, c := range n.parents {
		if _, ok := c.parent.(*Root); ok && c.blocker.reason == "" {
			// compat(qsd-7.2): no quotes around the name here.
			return Errorf(ErrBusy, "Node %s is in use", name)
		}
	}
	if err := n.Blocked(OpDelete); err != nil {
		return err
	}
	if !n.monitorOwned {
		return Errorf(ErrBusy, "Node %s is not owned by the monitor", name)
	}
	if len(n.parents) > 0 {
		return Errorf(ErrBusy, "Block device %s is in use", name)
	}
	t.Drain(n)
	n.monitorOwned = false
	t.OnCommit(func() { t.g.removeNode(n) })
	t.OnUndo(func() { n.monitorOwned = true })
	return nil
}

// FreezeChain freezes the chain links from the node being opened down to
// base (the link that points at base included) for as long as the node
// exists, as a filter with a bottom (copy-on-read) needs. Every link is
// checked before any is frozen.
func (o *Opener) FreezeChain(base *Node) error {
	cs, err := o.tx.FreezeChain(o.node, base)
	if err != nil {
		return err
	}
	n := o.node
	n.ownFrozen = append(n.ownFrozen, cs...)
	o.tx.OnUndo(func() { n.ownFrozen = nil })
	return nil
}

// CloseAll removes every node, users before what they use, flushing and
// closing each (daemon shutdown). Roots still attached are left pointing
// at closed nodes: their owners stop first.
func (t *Txn) CloseAll() {
	order, err := t.g.topoOrder()
	if err != nil {
		order = t.g.Nodes()
	}
	t.Drain(order...)
	for _, n := range order {
		n.monitorOwned = false
		t.g.removeNode(n)
	}
}

// ChangeReadOnly makes n read-only or read-write, telling its driver
// when it must act (ReadOnlyChanger). Going read-only is refused while a
// user writes through n; the permissions are brought up to date at once
// either way, so that what comes next in the change (a parent's driver
// writing through n, a child becoming read-only) sees the new state. A
// change that flips a parent and its children goes parents first to
// read-only and children first to read-write (see Reopen).
func (t *Txn) ChangeReadOnly(ctx context.Context, n *Node, ro bool) error {
	return t.atomic(func() error { return t.changeReadOnly(ctx, n, ro) })
}

func (t *Txn) changeReadOnly(ctx context.Context, n *Node, ro bool) error {
	if ro && n.ReadOnly() != ro && n.perm&(PermWrite|PermWriteUnchanged) != 0 {
		// compat(qsd-7.2)
		return Errorf(ErrReadOnly, "Read-only block node '%s' cannot support read-write users", n.name)
	}
	if n.ReadOnly() == ro {
		return nil
	}
	t.Drain(n)
	if ro {
		t.SetReadOnly(n, true)
		if err := t.readOnlyHook(ctx, n, true); err != nil {
			return err
		}
		return t.g.refreshPerms()
	}
	t.SetReadOnly(n, false)
	if err := t.g.refreshPerms(); err != nil {
		return err
	}
	return t.readOnlyHook(ctx, n, false)
}

func (t *Txn) readOnlyHook(ctx context.Context, n *Node, ro bool) error {
	rc, ok := n.impl.(ReadOnlyChanger)
	if !ok {
		return nil
	}
	undo, err := rc.ChangeReadOnly(ctx, ro)
	if err != nil {
		return err
	}
	t.OnUndo(undo)
	return nil
}

// ReopenReadOnly changes n's read-only state as a reopen that changes
// nothing else does (QEMU's bdrv_reopen_set_read_only, which jobs use to
// write into a read-only image and to make it read-only again): the
// children n opened itself, COW backing excepted, follow it; children go
// first when becoming writable and last when becoming read-only. If one
// of them refuses, none changes.
func (t *Txn) ReopenReadOnly(ctx context.Context, n *Node, ro bool) error {
	return t.atomic(func() error { return t.reopenReadOnly(ctx, n, ro) })
}

func (t *Txn) reopenReadOnly(ctx context.Context, n *Node, ro bool) error {
	t.Drain(n)
	if ro {
		if err := t.ChangeReadOnly(ctx, n, true); err != nil {
			return err
		}
	}
	for _, c := range n.Children() {
		if c.role&RoleCOW != 0 || c.Node().monitorOwned {
			continue
		}
		if err := t.reopenReadOnly(ctx, c.Node(), ro); err != nil {
			return err
		}
	}
	if !ro {
		return t.ChangeReadOnly(ctx, n, false)
	}
	return nil
}
