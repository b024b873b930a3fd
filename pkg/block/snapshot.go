package block

import (
	"context"
	"encoding/json"
	"fmt"
)

// Flush writes a node's cached data to stable storage; for management
// steps (snapshot, reopen) that need a node clean before it changes.
func (n *Node) Flush(ctx context.Context) error {
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
		c.blocker = backingBlocker(n)
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
	return t.atomic(func() error {
		if err := t.SetBacking(overlay, n); err != nil {
			return err
		}
		return t.ReplaceNode(n, overlay, func(c *Child) bool { return c.ParentNode() == overlay })
	})
}

// InsertFilter opens a filter node above n from options raw (its filtered
// child must be given as n's name) and moves n's users to it. Jobs insert
// their filters (mirror_top, commit_top, the copy-on-read of a stream) this
// way, and may use drivers users cannot name (Driver.Implicit). With
// implicit set the node is skipped by queries of a device's chain; it is
// never monitor-owned, and goes away when the job removes it.
func (t *Txn) InsertFilter(ctx context.Context, n *Node, raw json.RawMessage, implicit bool) (*Node, error) {
	t.Drain(n)
	var f *Node
	err := t.atomic(func() (err error) {
		if f, err = t.open(ctx, raw, "", false, nil, true); err != nil {
			return err
		}
		if !f.IsFilter() || FilteredChild(f) == nil || FilteredChild(f).Node() != n {
			return fmt.Errorf("node '%s' is not a filter of '%s': %w", f.name, n.name, ErrInternal)
		}
		f.implicit = implicit
		// Links from f's own subtree stay on n, as QEMU's node
		// replacement leaves them: a fleecing target backed by n stays
		// backed by n, not by the filter that writes it.
		return t.ReplaceNode(n, f, func(c *Child) bool {
			p := c.ParentNode()
			return p == f || p != nil && reaches(f, p)
		})
	})
	if err != nil {
		return nil, err
	}
	return f, nil
}

// RemoveFilter undoes InsertFilter: f's users go back to its child and f
// is closed when nothing else holds it. The links f froze for its
// lifetime are released at once, so that the same change may go on to
// retarget them (a stream removes its copy-on-read filter, then points
// the top at its new backing).
func (t *Txn) RemoveFilter(f *Node) error {
	c := FilteredChild(f)
	if c == nil {
		return fmt.Errorf("node '%s' is not a filter: %w", f.name, ErrInternal)
	}
	t.Drain(f)
	if err := t.ReplaceNode(f, c.Node(), nil); err != nil {
		return err
	}
	if own := f.ownFrozen; len(own) > 0 {
		t.Unfreeze(own...)
		f.ownFrozen = nil
		t.OnUndo(func() { f.ownFrozen = own })
	}
	t.OnCommit(func() { t.g.freeIfUnused(f) })
	return nil
}
