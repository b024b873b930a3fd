package quorum

import (
	"slices"

	"github.com/blockd/blockd/pkg/block"
)

// AddChild implements block.ChildHotplugger (x-blockdev-change with
// node): cn becomes children.N, N being q.next, and votes from the next
// request on. It takes the permissions the quorum takes of every child;
// its size is not checked, nor is the quorum's size refreshed (as in
// QEMU).
func (q *Quorum) AddChild(t *block.Txn, cn *block.Node) error {
	if q.blkverify {
		// compat(qsd-7.2)
		return block.Errorf(block.ErrInvalid, "Cannot add a child to a quorum in blkverify mode")
	}
	t.Drain(q.node)
	c, err := t.AttachChild(q.node, childName(q.next), cn, block.RoleData, block.PermAdjust{})
	if err != nil {
		return err
	}
	q.setChildren(t, append(slices.Clone(q.kids()), c), q.next+1)
	return nil
}

// DeleteChild implements block.ChildHotplugger (x-blockdev-change with
// child): c stops voting, and the node it points at is closed if nothing
// else holds it. Fewer children than the vote threshold are refused. The
// next child added takes c's index only if c had the highest one (QEMU's
// rule: names are not reused from the middle).
func (q *Quorum) DeleteChild(t *block.Txn, c *block.Child) error {
	cs := q.kids()
	i := slices.Index(cs, c)
	if i < 0 {
		return block.Errorf(block.ErrInvalid, "'%s' is not a child of quorum '%s'", c.Name(), q.node.Name())
	}
	if len(cs) <= q.threshold {
		// compat(qsd-7.2)
		return block.Errorf(block.ErrInvalid, "The number of children cannot be lower than the vote threshold %d", q.threshold)
	}
	next := q.next
	if c.Name() == childName(next-1) {
		next--
	}
	t.Drain(q.node)
	if err := t.RemoveChild(c); err != nil {
		return err
	}
	q.setChildren(t, slices.Delete(slices.Clone(cs), i, i+1), next)
	return nil
}

// setChildren replaces the set of children and the next index as part of
// t, which must have drained the node.
func (q *Quorum) setChildren(t *block.Txn, cs []*block.Child, next int) {
	old, oldNext := q.children.Load(), q.next
	q.children.Store(&cs)
	q.next = next
	t.OnUndo(func() {
		q.children.Store(old)
		q.next = oldNext
	})
}
