package block

import "fmt"

// Op is an operation that a user of a node may block: jobs, deletion,
// resize, snapshots. A blocker sits on an edge and names the ops it
// still allows (QEMU's op blockers, one per edge instead of a list per
// node and op).
type Op uint32

const (
	OpBackupSource Op = 1 << iota
	OpBackupTarget
	OpChange // change-backing-file
	OpCommitSource
	OpCommitTarget
	OpDelete // blockdev-del
	OpExternalSnapshot
	OpInternalSnapshot
	OpInternalSnapshotDelete
	OpMirrorSource
	OpMirrorTarget
	OpReplace // the node a mirror's 'replaces' names
	OpResize
	OpStream

	OpNone Op = 0
)

// backingAllows is what a node used as a COW backing may still be: the
// target of a commit and part of a stream (the chain jobs exist for),
// and a backup's source or target (QEMU's internal backups run on
// backing files). Mirroring into it, replacing it, deleting, resizing or
// snapshotting it are blocked.
const backingAllows = OpCommitTarget | OpStream | OpBackupSource | OpBackupTarget

// blocker is why an edge blocks operations on the node it points at.
type blocker struct {
	reason string // "node is used as backing hd of 'top'"; "": no blocker
	allows Op     // the ops this blocker lets through
}

func backingBlocker(parent *Node) blocker {
	return blocker{reason: fmt.Sprintf("node is used as backing hd of '%s'", parent.name), allows: backingAllows}
}

// Blocked returns why op may not run on n now: the newest blocker of
// n's users that does not allow op, with qsd's message, or nil.
func (n *Node) Blocked(op Op) error {
	for i := len(n.parents) - 1; i >= 0; i-- {
		b := n.parents[i].blocker
		if b.reason != "" && b.allows&op == 0 {
			// compat(qsd-7.2): "Node 'mid' is busy: node is used as backing hd of 'top'".
			return Errorf(ErrBusy, "Node '%s' is busy: %s", n.name, b.reason)
		}
	}
	return nil
}

// SetBlocker makes edge c block every operation on its node but those in
// allows, with reason (jobs: "block device is in use by block job:
// stream"). An empty reason removes the blocker.
func (t *Txn) SetBlocker(c *Child, reason string, allows Op) {
	old := c.blocker
	c.blocker = blocker{reason: reason, allows: allows}
	t.OnUndo(func() { c.blocker = old })
}
