package block

// ChildHotplugger is implemented by drivers whose set of children can
// change while the node is open (quorum), for x-blockdev-change. Both
// methods run inside t: they drain the node before they touch it, record
// an undo for what they change, and leave the graph as they found it when
// they fail.
type ChildHotplugger interface {
	// AddChild links cn as a new child, named as the driver names its
	// children.
	AddChild(t *Txn, cn *Node) error
	// DeleteChild unlinks c, one of the node's children.
	DeleteChild(t *Txn, c *Child) error
}

// AddChild adds cn as a new child of p, as QEMU's bdrv_add_child: p's
// driver must support it, and cn must not be used by anyone yet (a node,
// an export or a job), so that the new child's data is the parent's own
// business.
func (t *Txn) AddChild(p, cn *Node) error {
	h, ok := p.impl.(ChildHotplugger)
	if !ok {
		// compat(qsd-7.2)
		return Errorf(ErrNotSupported, "The node %s does not support adding a child", p.name)
	}
	if len(cn.parents) > 0 {
		// compat(qsd-7.2)
		return Errorf(ErrBusy, "The node %s already has a parent", cn.name)
	}
	return t.hotplug(p, func() error { return h.AddChild(t, cn) })
}

// DeleteChild removes child edge c of p, as QEMU's bdrv_del_child; the
// node c pointed at is closed when the change commits unless something
// else holds it (the monitor, another parent).
func (t *Txn) DeleteChild(p *Node, c *Child) error {
	h, ok := p.impl.(ChildHotplugger)
	if !ok {
		// compat(qsd-7.2)
		return Errorf(ErrNotSupported, "The node %s does not support removing a child", p.name)
	}
	if c.ParentNode() != p {
		return Errorf(ErrInvalid, "The node %s does not have a child named %s", p.name, c.Node().name)
	}
	return t.hotplug(p, func() error { return h.DeleteChild(t, c) })
}

// hotplug runs a driver's change of p's children as one step and brings
// the cached capabilities of p and every node above it up to date, after
// the change and again after its undo (limits and write-zeroes support
// follow the children).
func (t *Txn) hotplug(p *Node, change func() error) error {
	// Registered first so that it runs last on undo, once the driver
	// has put its children back.
	t.OnUndo(func() { refreshCapsUp(p) })
	return t.atomic(func() error {
		if err := change(); err != nil {
			return err
		}
		refreshCapsUp(p)
		return nil
	})
}

// refreshCapsUp refreshes the cached capabilities of n and of the nodes
// above it, children before their parents (filters and formats derive
// theirs from their children's).
func refreshCapsUp(n *Node) {
	above := map[*Node]bool{}
	var up func(n *Node)
	up = func(n *Node) {
		if above[n] {
			return
		}
		above[n] = true
		for _, c := range n.parents {
			if p := c.ParentNode(); p != nil {
				up(p)
			}
		}
	}
	up(n)
	order, err := n.g.topoOrder()
	if err != nil {
		return
	}
	for i := len(order) - 1; i >= 0; i-- {
		if x := order[i]; above[x] && x.impl != nil {
			x.RefreshCaps()
		}
	}
}
