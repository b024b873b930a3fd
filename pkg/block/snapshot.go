package block

import (
	"context"
	"fmt"
)

// Flush writes a node's cached data to stable storage; for management
// steps (snapshot, reopen) that need a node clean before it changes.
func (n *Node) Flush(ctx context.Context) error {
	n.inflight.Add(1)
	defer n.inflight.Add(-1)
	return n.impl.Flush(ctx)
}

// SetBacking makes b the COW child of n (nil: none), telling n's driver.
// Permissions are checked at Commit.
func (t *Txn) SetBacking(n, b *Node) error {
	if !n.drv.SupportsBacking {
		return Errorf(ErrNotSupported, "Driver '%s' of node '%s' does not support backing files", n.drv.Name, n.name)
	}
	old := COWChild(n)
	if old != nil && b != nil && old.Node() == b {
		return nil
	}
	if old != nil && old.frozen > 0 {
		return frozenError(old)
	}
	if b != nil && reaches(b, n) {
		return Errorf(ErrInvalid, "Making '%s' a backing child of '%s' would create a cycle", b.name, n.name)
	}
	bs, _ := n.impl.(BackingSetter)
	if old != nil {
		if err := t.RemoveChild(old); err != nil {
			return err
		}
	}
	var c *Child
	if b != nil {
		c = &Child{name: "backing", role: RoleCOW, parent: n}
		c.node.Store(b)
		c.blocker = fmt.Sprintf("node is used as backing hd of '%s'", n.name)
		n.setChildren(append(n.Children(), c))
		b.parents = append(b.parents, c)
		t.OnUndo(func() { t.undoAttach(n, c) })
	}
	if bs != nil {
		bs.SetBacking(c)
		t.OnUndo(func() { bs.SetBacking(old) })
	}
	return nil
}

// Append puts overlay on top of n: n becomes overlay's COW child and every
// other user of n moves to overlay (QEMU's bdrv_append).
func (t *Txn) Append(overlay, n *Node) error {
	if err := t.SetBacking(overlay, n); err != nil {
		return err
	}
	return t.ReplaceNode(n, overlay, func(c *Child) bool { return c.ParentNode() == overlay })
}
