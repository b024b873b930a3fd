package block_test

import (
	"testing"

	"github.com/blockd/blockd/pkg/block"
	"github.com/blockd/blockd/pkg/block/blocktest"
)

// txnFailure is a graph change that is refused: by the step itself (a
// frozen link, a permission conflict, a cycle) or at Commit.
type txnFailure struct {
	name  string
	setup func(t *testing.T, f *txnFixture) // committed first
	// before, if set, is a step of the same change that succeeds first.
	before func(f *txnFixture, tx *block.Txn) error
	do     func(f *txnFixture, tx *block.Txn) error
	want   string // the error
	// atCommit: do succeeds and Commit refuses the change.
	atCommit bool
}

// TestTxnFailedStep: a step that fails leaves the graph as the step
// found it, so that the change may go on or be aborted; aborting then
// gives back the graph as it was before the change. A change that Commit
// refuses is undone whole.
func TestTxnFailedStep(t *testing.T) {
	for _, tc := range txnFailures {
		t.Run(tc.name, func(t *testing.T) {
			f := newTxnFixture(t)
			if tc.setup != nil {
				tc.setup(t, f)
			}
			was := f.s.snap()
			tx := f.g.Begin()
			defer tx.Abort()
			if tc.before != nil {
				if err := tc.before(f, tx); err != nil {
					t.Fatal(err)
				}
			}
			// Steps such as Replace leave permissions to Commit: bring
			// them up to date, so that the picture shows the graph the
			// failing step starts from.
			if err := tx.Graph().RefreshPerms(); err != nil {
				t.Fatal(err)
			}
			mid := f.s.take()
			err := tc.do(f, tx)
			if tc.atCommit {
				if err != nil {
					t.Fatalf("the step failed before Commit: %v", err)
				}
				err = tx.Commit()
			} else {
				sameGraph(t, "the failed step", mid, f.s.take())
				tx.Abort()
			}
			if err == nil || err.Error() != tc.want {
				t.Errorf("err = %v, want %q", err, tc.want)
			}
			sameGraph(t, "the failed change", was, f.s.snap())
			f.noneDrained(t)
		})
	}
}

// attachExtra2 gives top a fourth child, spare, in the change.
func attachExtra2(f *txnFixture, tx *block.Txn) error {
	_, err := tx.AttachChild(f.top, "extra2", f.spare, block.RoleData, block.PermAdjust{})
	return err
}

// freezeTopToMid freezes top's backing link, as a job on top would.
func freezeTopToMid(t *testing.T, f *txnFixture) {
	change(t, f.g, func(tx *block.Txn) error {
		_, err := tx.FreezeChain(f.top, f.mid)
		return err
	})
}

// freezeMidToBase freezes mid's backing link.
func freezeMidToBase(t *testing.T, f *txnFixture) {
	change(t, f.g, func(tx *block.Txn) error {
		_, err := tx.FreezeChain(f.mid, f.base)
		return err
	})
}

// freezeR2 freezes r2's edge to mid: the second of mid's parents.
func freezeR2(t *testing.T, f *txnFixture) {
	change(t, f.g, func(tx *block.Txn) error { return tx.Freeze(f.r2.Child()) })
}

// insertF puts filter "f" above mid in the change.
func insertF(f *txnFixture, tx *block.Txn) error {
	_, err := tx.InsertFilter(txnCtx, f.mid, []byte(`{"driver":"blocktest-filter","node-name":"f","file":"mid"}`), true)
	return err
}

var txnFailures = []txnFailure{
	{name: "Replace/frozen", setup: freezeTopToMid, do: func(f *txnFixture, tx *block.Txn) error {
		return tx.Replace(block.COWChild(f.top), f.base)
	}, want: "Cannot change frozen 'backing' link from 'top' to 'mid'"},
	{name: "Replace/cycle", do: func(f *txnFixture, tx *block.Txn) error {
		return tx.Replace(block.COWChild(f.mid), f.top)
	}, want: "Making 'top' a backing child of 'mid' would create a cycle"},
	{name: "ReplaceNode/second edge frozen", setup: freezeR2, do: func(f *txnFixture, tx *block.Txn) error {
		return tx.ReplaceNode(f.mid, f.spare, nil)
	}, want: "Cannot change frozen 'root' link from 'r2' to 'mid'"},
	{name: "Append/frozen user", setup: freezeR2, do: func(f *txnFixture, tx *block.Txn) error {
		return tx.Append(f.spare, f.mid)
	}, want: "Cannot change frozen 'root' link from 'r2' to 'mid'"},
	{name: "RemoveChild/frozen", setup: freezeTopToMid, do: func(f *txnFixture, tx *block.Txn) error {
		return tx.RemoveChild(block.COWChild(f.top))
	}, want: "Cannot remove frozen 'backing' link of 'top'"},
	{name: "SetBacking/frozen", setup: freezeTopToMid, before: attachExtra2, do: func(f *txnFixture, tx *block.Txn) error {
		return tx.SetBacking(f.top, f.base)
	}, want: "Cannot change frozen 'backing' link from 'top' to 'mid'"},
	{name: "FreezeChain/overlap", setup: freezeMidToBase, do: func(f *txnFixture, tx *block.Txn) error {
		_, err := tx.FreezeChain(f.top, f.base)
		return err
	}, want: "Cannot freeze 'backing' link to 'base'"},
	{name: "InsertFilter/its freeze refused", setup: freezeMidToBase, do: func(f *txnFixture, tx *block.Txn) error {
		_, err := tx.InsertFilter(txnCtx, f.top, []byte(`{"driver":"blocktest-filter","node-name":"f","file":"top","freeze-to":"base"}`), true)
		return err
	}, want: "Cannot freeze 'backing' link to 'base'"},
	{name: "AttachChild/cycle", do: func(f *txnFixture, tx *block.Txn) error {
		_, err := tx.AttachChild(f.base, "x", f.top, block.RoleData, block.PermAdjust{})
		return err
	}, want: "Making 'top' a x child of 'base' would create a cycle"},
	{name: "AttachChild/permissions", before: insertF, do: func(f *txnFixture, tx *block.Txn) error {
		_, err := tx.AttachChild(f.spare, "x", f.extra, block.RoleData, block.PermAdjust{})
		return err
	}, want: "Permission conflict on node 'extra': permissions 'resize' are both required by node 'top' (uses node 'extra' as 'extra' child) and unshared by node 'spare' (uses node 'extra' as 'x' child)."},
	{name: "Hold/permissions", do: func(f *txnFixture, tx *block.Txn) error {
		_, err := tx.Hold(f.r2, f.top, "active node", permR, permR)
		return err
	}, want: "Permission conflict on node 'top': permissions 'write' are both required by an unnamed block device (uses node 'top' as 'root' child) and unshared by an unnamed block device (uses node 'top' as 'active node' child)."},
	{name: "NewRoot/permissions", do: func(f *txnFixture, tx *block.Txn) error {
		_, err := tx.NewRoot(f.top, block.RootOptions{Perm: permR, Shared: permR})
		return err
	}, want: "Permission conflict on node 'top': permissions 'write' are both required by an unnamed block device (uses node 'top' as 'root' child) and unshared by an unnamed block device (uses node 'top' as 'root' child)."},
	{name: "ChangeReadOnly/writer", do: func(f *txnFixture, tx *block.Txn) error {
		return tx.ChangeReadOnly(txnCtx, f.top, true)
	}, want: "Read-only block node 'top' cannot support read-write users"},
	{name: "ReopenReadOnly/child has a writer", setup: filterWithWriter, do: func(f *txnFixture, tx *block.Txn) error {
		return tx.ReopenReadOnly(txnCtx, tx.Graph().Lookup("flt"), true)
	}, want: "Read-only block node 'flt-file' cannot support read-write users"},
	{name: "Reopen/frozen backing", setup: freezeMidToBase, do: func(f *txnFixture, tx *block.Txn) error {
		return reopenJSON(tx, `{"driver":"blocktest-cow","node-name":"mid","file":"mid-file","backing":null,"read-only":true}`)
	}, want: "Cannot change frozen 'backing' link from 'mid' to 'base'"},
	{name: "Delete/in use", do: func(f *txnFixture, tx *block.Txn) error {
		return tx.Delete("mid")
	}, want: "Node mid is in use"},
	{name: "Open/no such backing", before: insertF, do: func(f *txnFixture, tx *block.Txn) error {
		_, err := tx.Open(txnCtx, []byte(cowNode("new", `"nosuch"`)), true)
		return err
	}, want: "Cannot find device='nosuch' nor node-name='nosuch'"},
	{name: "Commit/read-only under a writer", atCommit: true, do: func(f *txnFixture, tx *block.Txn) error {
		tx.SetReadOnly(f.top, true)
		return nil
	}, want: "Block node is read-only"},
	{name: "Commit/permissions after several steps", atCommit: true, before: func(f *txnFixture, tx *block.Txn) error {
		tx.Detach(f.r0)
		return tx.Replace(block.COWChild(f.top), f.base)
	}, do: func(f *txnFixture, tx *block.Txn) error {
		tx.SetRootPerm(f.r2, permR, 0) // top will read mid again: a conflict
		return tx.Replace(block.COWChild(f.top), f.mid)
	}, want: "Permission conflict on node 'mid': permissions 'consistent read' are both required by node 'top' (uses node 'mid' as 'backing' child) and unshared by an unnamed block device (uses node 'mid' as 'root' child)."},
}

// filterWithWriter adds filter flt over its own memory node flt-file,
// which a root writes: flt may become read-only, flt-file may not.
func filterWithWriter(t *testing.T, f *txnFixture) {
	n := blocktest.Open(t, f.g, `{"driver":"blocktest-filter","node-name":"flt","file":{"driver":"blocktest-mem","node-name":"flt-file","size":65536}}`)
	newRoot(t, block.FilteredChild(n).Node(), "w", permRW, block.PermAll)
}
