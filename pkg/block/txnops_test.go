package block_test

import (
	"testing"

	"github.com/blockd/blockd/pkg/block"
)

// txnOp is one kind of graph change, applied to a fresh txnFixture.
type txnOp struct {
	name string
	// setup, if set, runs and commits before the change is pictured.
	setup func(t *testing.T, f *txnFixture)
	// do makes the change; it must succeed.
	do func(f *txnFixture, tx *block.Txn) error
	// want is how the nodes the change touches look once it commits,
	// edge numbers dropped; key "" is the node list and roots' edges.
	want map[string]string
}

// TestTxnCommit: each kind of change gives the expected graph when it
// commits (edges, roles, permissions, freezes, blockers), and touches no
// node it should not.
func TestTxnCommit(t *testing.T) {
	for _, op := range txnOps {
		t.Run(op.name, func(t *testing.T) {
			f := newTxnFixture(t)
			if op.setup != nil {
				op.setup(t, f)
			}
			was := f.s.snap()
			change(t, f.g, func(tx *block.Txn) error { return op.do(f, tx) })
			now := f.s.snap()
			checkCommitted(t, was, now, op.want)
			f.noneDrained(t)
		})
	}
}

// TestTxnAbort: each kind of change, aborted, leaves the graph exactly as
// it was, down to the order of every node's children and parents.
func TestTxnAbort(t *testing.T) {
	for _, op := range txnOps {
		t.Run(op.name, func(t *testing.T) {
			f := newTxnFixture(t)
			if op.setup != nil {
				op.setup(t, f)
			}
			was := f.s.snap()
			tx := f.g.Begin()
			if err := op.do(f, tx); err != nil {
				tx.Abort()
				t.Fatal(err)
			}
			tx.Abort()
			sameGraph(t, "an aborted "+op.name, was, f.s.snap())
			f.noneDrained(t)
		})
	}
}

var txnOps = []txnOp{
	{name: "AttachChild", do: func(f *txnFixture, tx *block.Txn) error {
		_, err := tx.AttachChild(f.top, "extra2", f.spare, block.RoleData, block.PermAdjust{})
		return err
	}, want: map[string]string{
		"top": `
ro=false owned=true implicit=false perm=cw shared=cwur ownfrozen=[]
child top.file->top-file data|metadata|primary cwr/cu
child top.backing->mid cow c/cwur blocker="node is used as backing hd of 'top'" allows=backing
child top.extra->extra data cwr/cwu
child top.extra2->spare data cwr/cwu
parent block-backend:r1.root->top - cw/cwur
`,
		"spare": `
ro=false owned=true implicit=false perm=cwr shared=cwu ownfrozen=[]
child spare.file->spare-file data|metadata|primary cwr/cu
parent top.extra2->spare data cwr/cwu
`,
	}},
	{name: "RemoveChild", do: func(f *txnFixture, tx *block.Txn) error {
		return tx.RemoveChild(block.COWChild(f.top))
	}, want: map[string]string{
		"top": `
ro=false owned=true implicit=false perm=cw shared=cwur ownfrozen=[]
child top.file->top-file data|metadata|primary cwr/cu
child top.extra->extra data cwr/cwu
parent block-backend:r1.root->top - cw/cwur
`,
		"mid": `
ro=false owned=true implicit=false perm=c shared=cwur ownfrozen=[]
child mid.file->mid-file data|metadata|primary cwr/cu
child mid.backing->base cow c/cwur blocker="node is used as backing hd of 'mid'" allows=backing
parent block-backend:r2.root->mid - c/cwur
`,
	}},
	{name: "Replace", do: func(f *txnFixture, tx *block.Txn) error {
		return tx.Replace(block.COWChild(f.top), f.base)
	}, want: map[string]string{
		"top": `
ro=false owned=true implicit=false perm=cw shared=cwur ownfrozen=[]
child top.file->top-file data|metadata|primary cwr/cu
child top.backing->base cow c/cwur blocker="node is used as backing hd of 'top'" allows=backing
child top.extra->extra data cwr/cwu
parent block-backend:r1.root->top - cw/cwur
`,
		"mid": `
ro=false owned=true implicit=false perm=c shared=cwur ownfrozen=[]
child mid.file->mid-file data|metadata|primary cwr/cu
child mid.backing->base cow c/cwur blocker="node is used as backing hd of 'mid'" allows=backing
parent block-backend:r2.root->mid - c/cwur
`,
		"base": `
ro=false owned=true implicit=false perm=c shared=cwur ownfrozen=[]
child base.file->base-file data|metadata|primary cwr/cu
parent block-backend:r0.root->base - c/cwur
parent mid.backing->base cow c/cwur blocker="node is used as backing hd of 'mid'" allows=backing
parent top.backing->base cow c/cwur blocker="node is used as backing hd of 'top'" allows=backing
`,
	}},
	{name: "ReplaceNode", do: func(f *txnFixture, tx *block.Txn) error {
		return tx.ReplaceNode(f.mid, f.spare, nil)
	}, want: map[string]string{
		"": `
nodes spare spare-file extra top top-file mid mid-file base base-file
root r0: root->base
root r1: root->top
root r2: root->spare
`,
		"top": `
ro=false owned=true implicit=false perm=cw shared=cwur ownfrozen=[]
child top.file->top-file data|metadata|primary cwr/cu
child top.backing->spare cow c/cwur blocker="node is used as backing hd of 'top'" allows=backing
child top.extra->extra data cwr/cwu
parent block-backend:r1.root->top - cw/cwur
`,
		"mid": `
ro=false owned=true implicit=false perm=- shared=cwur ownfrozen=[]
child mid.file->mid-file data|metadata|primary cwr/cu
child mid.backing->base cow -/cwur blocker="node is used as backing hd of 'mid'" allows=backing
`,
		"spare": `
ro=false owned=true implicit=false perm=c shared=cwur ownfrozen=[]
child spare.file->spare-file data|metadata|primary cwr/cu
parent top.backing->spare cow c/cwur blocker="node is used as backing hd of 'top'" allows=backing
parent block-backend:r2.root->spare - c/cwur
`,
		"base": `
ro=false owned=true implicit=false perm=c shared=cwur ownfrozen=[]
child base.file->base-file data|metadata|primary cwr/cu
parent block-backend:r0.root->base - c/cwur
parent mid.backing->base cow -/cwur blocker="node is used as backing hd of 'mid'" allows=backing
`,
	}},
	{name: "SetBacking", do: func(f *txnFixture, tx *block.Txn) error {
		return tx.SetBacking(f.top, f.base)
	}, want: map[string]string{
		"top": `
ro=false owned=true implicit=false perm=cw shared=cwur ownfrozen=[]
child top.file->top-file data|metadata|primary cwr/cu
child top.extra->extra data cwr/cwu
child top.backing->base cow c/cwur blocker="node is used as backing hd of 'top'" allows=backing
parent block-backend:r1.root->top - cw/cwur
`,
		"mid": `
ro=false owned=true implicit=false perm=c shared=cwur ownfrozen=[]
child mid.file->mid-file data|metadata|primary cwr/cu
child mid.backing->base cow c/cwur blocker="node is used as backing hd of 'mid'" allows=backing
parent block-backend:r2.root->mid - c/cwur
`,
		"base": `
ro=false owned=true implicit=false perm=c shared=cwur ownfrozen=[]
child base.file->base-file data|metadata|primary cwr/cu
parent block-backend:r0.root->base - c/cwur
parent mid.backing->base cow c/cwur blocker="node is used as backing hd of 'mid'" allows=backing
parent top.backing->base cow c/cwur blocker="node is used as backing hd of 'top'" allows=backing
`,
	}},
	{name: "SetBacking/none", do: func(f *txnFixture, tx *block.Txn) error {
		return tx.SetBacking(f.top, nil)
	}, want: map[string]string{
		"top": `
ro=false owned=true implicit=false perm=cw shared=cwur ownfrozen=[]
child top.file->top-file data|metadata|primary cwr/cu
child top.extra->extra data cwr/cwu
parent block-backend:r1.root->top - cw/cwur
`,
		"mid": `
ro=false owned=true implicit=false perm=c shared=cwur ownfrozen=[]
child mid.file->mid-file data|metadata|primary cwr/cu
child mid.backing->base cow c/cwur blocker="node is used as backing hd of 'mid'" allows=backing
parent block-backend:r2.root->mid - c/cwur
`,
	}},
	{name: "Append", do: func(f *txnFixture, tx *block.Txn) error {
		return tx.Append(f.spare, f.mid)
	}, want: map[string]string{
		"": `
nodes spare spare-file extra top top-file mid mid-file base base-file
root r0: root->base
root r1: root->top
root r2: root->spare
`,
		"top": `
ro=false owned=true implicit=false perm=cw shared=cwur ownfrozen=[]
child top.file->top-file data|metadata|primary cwr/cu
child top.backing->spare cow c/cwur blocker="node is used as backing hd of 'top'" allows=backing
child top.extra->extra data cwr/cwu
parent block-backend:r1.root->top - cw/cwur
`,
		"mid": `
ro=false owned=true implicit=false perm=c shared=cwur ownfrozen=[]
child mid.file->mid-file data|metadata|primary cwr/cu
child mid.backing->base cow c/cwur blocker="node is used as backing hd of 'mid'" allows=backing
parent spare.backing->mid cow c/cwur blocker="node is used as backing hd of 'spare'" allows=backing
`,
		"spare": `
ro=false owned=true implicit=false perm=c shared=cwur ownfrozen=[]
child spare.file->spare-file data|metadata|primary cwr/cu
child spare.backing->mid cow c/cwur blocker="node is used as backing hd of 'spare'" allows=backing
parent top.backing->spare cow c/cwur blocker="node is used as backing hd of 'top'" allows=backing
parent block-backend:r2.root->spare - c/cwur
`,
	}},
	{name: "InsertFilter", do: func(f *txnFixture, tx *block.Txn) error {
		_, err := tx.InsertFilter(txnCtx, f.mid, []byte(`{"driver":"blocktest-filter","node-name":"f","file":"mid"}`), true)
		return err
	}, want: map[string]string{
		"": `
nodes f spare spare-file extra top top-file mid mid-file base base-file
root r0: root->base
root r1: root->top
root r2: root->f
`,
		"f": `
ro=false owned=false implicit=true perm=c shared=cwur ownfrozen=[]
child f.file->mid filtered|primary c/cwur
parent top.backing->f cow c/cwur blocker="node is used as backing hd of 'top'" allows=backing
parent block-backend:r2.root->f - c/cwur
`,
		"top": `
ro=false owned=true implicit=false perm=cw shared=cwur ownfrozen=[]
child top.file->top-file data|metadata|primary cwr/cu
child top.backing->f cow c/cwur blocker="node is used as backing hd of 'top'" allows=backing
child top.extra->extra data cwr/cwu
parent block-backend:r1.root->top - cw/cwur
`,
		"mid": `
ro=false owned=true implicit=false perm=c shared=cwur ownfrozen=[]
child mid.file->mid-file data|metadata|primary cwr/cu
child mid.backing->base cow c/cwur blocker="node is used as backing hd of 'mid'" allows=backing
parent f.file->mid filtered|primary c/cwur
`,
	}},
	{name: "RemoveFilter", setup: func(t *testing.T, f *txnFixture) {
		change(t, f.g, func(tx *block.Txn) error {
			_, err := tx.InsertFilter(txnCtx, f.mid, []byte(`{"driver":"blocktest-filter","node-name":"f","file":"mid"}`), true)
			return err
		})
	}, do: func(f *txnFixture, tx *block.Txn) error {
		return tx.RemoveFilter(tx.Graph().Lookup("f"))
	}, want: map[string]string{
		"": `
nodes spare spare-file extra top top-file mid mid-file base base-file
root r0: root->base
root r1: root->top
root r2: root->mid
`,
		"f": ``,
		"top": `
ro=false owned=true implicit=false perm=cw shared=cwur ownfrozen=[]
child top.file->top-file data|metadata|primary cwr/cu
child top.backing->mid cow c/cwur blocker="node is used as backing hd of 'top'" allows=backing
child top.extra->extra data cwr/cwu
parent block-backend:r1.root->top - cw/cwur
`,
		"mid": `
ro=false owned=true implicit=false perm=c shared=cwur ownfrozen=[]
child mid.file->mid-file data|metadata|primary cwr/cu
child mid.backing->base cow c/cwur blocker="node is used as backing hd of 'mid'" allows=backing
parent top.backing->mid cow c/cwur blocker="node is used as backing hd of 'top'" allows=backing
parent block-backend:r2.root->mid - c/cwur
`,
	}},
	{name: "RemoveFilter/and relink", setup: func(t *testing.T, f *txnFixture) {
		// The filter freezes top's chain down to mid, as a stream's
		// copy-on-read does; the stream's end removes it and relinks.
		change(t, f.g, func(tx *block.Txn) error {
			_, err := tx.InsertFilter(txnCtx, f.top, []byte(`{"driver":"blocktest-filter","node-name":"f","file":"top","freeze-to":"mid"}`), true)
			return err
		})
	}, do: func(f *txnFixture, tx *block.Txn) error {
		if err := tx.RemoveFilter(tx.Graph().Lookup("f")); err != nil {
			return err
		}
		return tx.SetBacking(f.top, f.base)
	}, want: map[string]string{
		"": `
nodes spare spare-file extra top top-file mid mid-file base base-file
root r0: root->base
root r1: root->top
root r2: root->mid
`,
		"f": ``,
		"top": `
ro=false owned=true implicit=false perm=cw shared=cwur ownfrozen=[]
child top.file->top-file data|metadata|primary cwr/cu
child top.extra->extra data cwr/cwu
child top.backing->base cow c/cwur blocker="node is used as backing hd of 'top'" allows=backing
parent block-backend:r1.root->top - cw/cwur
`,
		"mid": `
ro=false owned=true implicit=false perm=c shared=cwur ownfrozen=[]
child mid.file->mid-file data|metadata|primary cwr/cu
child mid.backing->base cow c/cwur blocker="node is used as backing hd of 'mid'" allows=backing
parent block-backend:r2.root->mid - c/cwur
`,
		"base": `
ro=false owned=true implicit=false perm=c shared=cwur ownfrozen=[]
child base.file->base-file data|metadata|primary cwr/cu
parent block-backend:r0.root->base - c/cwur
parent mid.backing->base cow c/cwur blocker="node is used as backing hd of 'mid'" allows=backing
parent top.backing->base cow c/cwur blocker="node is used as backing hd of 'top'" allows=backing
`,
	}},
	{name: "FreezeChain", do: func(f *txnFixture, tx *block.Txn) error {
		_, err := tx.FreezeChain(f.top, f.base)
		return err
	}, want: map[string]string{
		"top": `
ro=false owned=true implicit=false perm=cw shared=cwur ownfrozen=[]
child top.file->top-file data|metadata|primary cwr/cu
child top.backing->mid cow c/cwur frozen=1 blocker="node is used as backing hd of 'top'" allows=backing
child top.extra->extra data cwr/cwu
parent block-backend:r1.root->top - cw/cwur
`,
		"mid": `
ro=false owned=true implicit=false perm=c shared=cwur ownfrozen=[]
child mid.file->mid-file data|metadata|primary cwr/cu
child mid.backing->base cow c/cwur frozen=1 blocker="node is used as backing hd of 'mid'" allows=backing
parent top.backing->mid cow c/cwur frozen=1 blocker="node is used as backing hd of 'top'" allows=backing
parent block-backend:r2.root->mid - c/cwur
`,
		"base": `
ro=false owned=true implicit=false perm=c shared=cwur ownfrozen=[]
child base.file->base-file data|metadata|primary cwr/cu
parent block-backend:r0.root->base - c/cwur
parent mid.backing->base cow c/cwur frozen=1 blocker="node is used as backing hd of 'mid'" allows=backing
`,
	}},
	{name: "Unfreeze", setup: func(t *testing.T, f *txnFixture) {
		change(t, f.g, func(tx *block.Txn) error {
			_, err := tx.FreezeChain(f.top, f.base)
			return err
		})
	}, do: func(f *txnFixture, tx *block.Txn) error {
		tx.Unfreeze(block.COWChild(f.top), block.COWChild(f.mid))
		return nil
	}, want: map[string]string{
		"top": `
ro=false owned=true implicit=false perm=cw shared=cwur ownfrozen=[]
child top.file->top-file data|metadata|primary cwr/cu
child top.backing->mid cow c/cwur blocker="node is used as backing hd of 'top'" allows=backing
child top.extra->extra data cwr/cwu
parent block-backend:r1.root->top - cw/cwur
`,
		"mid": `
ro=false owned=true implicit=false perm=c shared=cwur ownfrozen=[]
child mid.file->mid-file data|metadata|primary cwr/cu
child mid.backing->base cow c/cwur blocker="node is used as backing hd of 'mid'" allows=backing
parent top.backing->mid cow c/cwur blocker="node is used as backing hd of 'top'" allows=backing
parent block-backend:r2.root->mid - c/cwur
`,
		"base": `
ro=false owned=true implicit=false perm=c shared=cwur ownfrozen=[]
child base.file->base-file data|metadata|primary cwr/cu
parent block-backend:r0.root->base - c/cwur
parent mid.backing->base cow c/cwur blocker="node is used as backing hd of 'mid'" allows=backing
`,
	}},
	{name: "SetBlocker", do: func(f *txnFixture, tx *block.Txn) error {
		tx.SetBlocker(f.r2.Child(), "block device is in use by block job: stream", block.OpNone)
		return nil
	}, want: map[string]string{
		"mid": `
ro=false owned=true implicit=false perm=c shared=cwur ownfrozen=[]
child mid.file->mid-file data|metadata|primary cwr/cu
child mid.backing->base cow c/cwur blocker="node is used as backing hd of 'mid'" allows=backing
parent top.backing->mid cow c/cwur blocker="node is used as backing hd of 'top'" allows=backing
parent block-backend:r2.root->mid - c/cwur blocker="block device is in use by block job: stream" allows=none
`,
	}},
	{name: "NewRoot", do: func(f *txnFixture, tx *block.Txn) error {
		_, err := tx.NewRoot(f.base, block.RootOptions{ID: "r3", Perm: permR, Shared: block.PermAll})
		return err
	}, want: map[string]string{
		"base": `
ro=false owned=true implicit=false perm=c shared=cwur ownfrozen=[]
child base.file->base-file data|metadata|primary cwr/cu
parent block-backend:r0.root->base - c/cwur
parent mid.backing->base cow c/cwur blocker="node is used as backing hd of 'mid'" allows=backing
parent block-backend:r3.root->base - c/cwur
`,
	}},
	{name: "Hold", do: func(f *txnFixture, tx *block.Txn) error {
		_, err := tx.Hold(f.r2, f.base, "intermediate node", permR, block.PermAll)
		return err
	}, want: map[string]string{
		"": `
nodes spare spare-file extra top top-file mid mid-file base base-file
root r0: root->base
root r1: root->top
root r2: root->mid, intermediate node->base
`,
		"base": `
ro=false owned=true implicit=false perm=c shared=cwur ownfrozen=[]
child base.file->base-file data|metadata|primary cwr/cu
parent block-backend:r0.root->base - c/cwur
parent mid.backing->base cow c/cwur blocker="node is used as backing hd of 'mid'" allows=backing
parent block-backend:r2.intermediate node->base - c/cwur
`,
	}},
	{name: "Detach", do: func(f *txnFixture, tx *block.Txn) error {
		tx.Detach(f.r0)
		return nil
	}, want: map[string]string{
		"base": `
ro=false owned=true implicit=false perm=c shared=cwur ownfrozen=[]
child base.file->base-file data|metadata|primary cwr/cu
parent mid.backing->base cow c/cwur blocker="node is used as backing hd of 'mid'" allows=backing
`,
	}},
	{name: "Detach/holding", setup: func(t *testing.T, f *txnFixture) {
		change(t, f.g, func(tx *block.Txn) error {
			_, err := tx.Hold(f.r2, f.base, "intermediate node", permR, block.PermAll)
			return err
		})
	}, do: func(f *txnFixture, tx *block.Txn) error {
		tx.Detach(f.r2)
		return nil
	}, want: map[string]string{
		// A detached root keeps pointing at its node, unusable.
		"": `
nodes spare spare-file extra top top-file mid mid-file base base-file
root r0: root->base
root r1: root->top
root r2: root->mid
`,
		"mid": `
ro=false owned=true implicit=false perm=c shared=cwur ownfrozen=[]
child mid.file->mid-file data|metadata|primary cwr/cu
child mid.backing->base cow c/cwur blocker="node is used as backing hd of 'mid'" allows=backing
parent top.backing->mid cow c/cwur blocker="node is used as backing hd of 'top'" allows=backing
`,
		"base": `
ro=false owned=true implicit=false perm=c shared=cwur ownfrozen=[]
child base.file->base-file data|metadata|primary cwr/cu
parent block-backend:r0.root->base - c/cwur
parent mid.backing->base cow c/cwur blocker="node is used as backing hd of 'mid'" allows=backing
`,
	}},
	{name: "SetRootPerm", do: func(f *txnFixture, tx *block.Txn) error {
		tx.SetRootPerm(f.r2, permR, permR|block.PermWriteUnchanged)
		return nil
	}, want: map[string]string{
		"mid": `
ro=false owned=true implicit=false perm=c shared=cu ownfrozen=[]
child mid.file->mid-file data|metadata|primary cwr/cu
child mid.backing->base cow c/cu blocker="node is used as backing hd of 'mid'" allows=backing
parent top.backing->mid cow c/cwur blocker="node is used as backing hd of 'top'" allows=backing
parent block-backend:r2.root->mid - c/cu
`,
		"base": `
ro=false owned=true implicit=false perm=c shared=cu ownfrozen=[]
child base.file->base-file data|metadata|primary cwr/cu
parent block-backend:r0.root->base - c/cwur
parent mid.backing->base cow c/cu blocker="node is used as backing hd of 'mid'" allows=backing
`,
	}},
	{name: "SetReadOnly", do: func(f *txnFixture, tx *block.Txn) error {
		tx.SetReadOnly(f.spare, true)
		return nil
	}, want: map[string]string{
		"spare": `
ro=true owned=true implicit=false perm=- shared=cwur ownfrozen=[]
child spare.file->spare-file data|metadata|primary c/cu
`,
		"spare-file": `
ro=false owned=false implicit=false perm=c shared=cu ownfrozen=[]
parent spare.file->spare-file data|metadata|primary c/cu
`,
	}},
	{name: "ChangeReadOnly", do: func(f *txnFixture, tx *block.Txn) error {
		return tx.ChangeReadOnly(txnCtx, f.mid, true)
	}, want: map[string]string{
		"mid": `
ro=true owned=true implicit=false perm=c shared=cwur ownfrozen=[]
child mid.file->mid-file data|metadata|primary c/cu
child mid.backing->base cow c/cwur blocker="node is used as backing hd of 'mid'" allows=backing
parent top.backing->mid cow c/cwur blocker="node is used as backing hd of 'top'" allows=backing
parent block-backend:r2.root->mid - c/cwur
`,
		"mid-file": `
ro=false owned=false implicit=false perm=c shared=cu ownfrozen=[]
parent mid.file->mid-file data|metadata|primary c/cu
`,
	}},
	{name: "ReopenReadOnly", do: func(f *txnFixture, tx *block.Txn) error {
		return tx.ReopenReadOnly(txnCtx, f.mid, true)
	}, want: map[string]string{
		"mid": `
ro=true owned=true implicit=false perm=c shared=cwur ownfrozen=[]
child mid.file->mid-file data|metadata|primary c/cu
child mid.backing->base cow c/cwur blocker="node is used as backing hd of 'mid'" allows=backing
parent top.backing->mid cow c/cwur blocker="node is used as backing hd of 'top'" allows=backing
parent block-backend:r2.root->mid - c/cwur
`,
		"mid-file": `
ro=true owned=false implicit=false perm=c shared=cu ownfrozen=[]
parent mid.file->mid-file data|metadata|primary c/cu
`,
	}},
	{name: "ReopenReadOnly/writable", setup: func(t *testing.T, f *txnFixture) {
		change(t, f.g, func(tx *block.Txn) error { return tx.ReopenReadOnly(txnCtx, f.mid, true) })
	}, do: func(f *txnFixture, tx *block.Txn) error {
		return tx.ReopenReadOnly(txnCtx, f.mid, false)
	}, want: map[string]string{
		"mid": `
ro=false owned=true implicit=false perm=c shared=cwur ownfrozen=[]
child mid.file->mid-file data|metadata|primary cwr/cu
child mid.backing->base cow c/cwur blocker="node is used as backing hd of 'mid'" allows=backing
parent top.backing->mid cow c/cwur blocker="node is used as backing hd of 'top'" allows=backing
parent block-backend:r2.root->mid - c/cwur
`,
		"mid-file": `
ro=false owned=false implicit=false perm=cwr shared=cu ownfrozen=[]
parent mid.file->mid-file data|metadata|primary cwr/cu
`,
	}},
	{name: "Reopen", do: func(f *txnFixture, tx *block.Txn) error {
		return reopenJSON(tx, `{"driver":"blocktest-cow","node-name":"mid","file":"mid-file","backing":null,"read-only":true}`)
	}, want: map[string]string{
		"mid": `
ro=true owned=true implicit=false perm=c shared=cwur ownfrozen=[]
child mid.file->mid-file data|metadata|primary c/cu
parent top.backing->mid cow c/cwur blocker="node is used as backing hd of 'top'" allows=backing
parent block-backend:r2.root->mid - c/cwur
`,
		"mid-file": `
ro=true owned=false implicit=false perm=c shared=cu ownfrozen=[]
parent mid.file->mid-file data|metadata|primary c/cu
`,
		"base": `
ro=false owned=true implicit=false perm=c shared=cwur ownfrozen=[]
child base.file->base-file data|metadata|primary cwr/cu
parent block-backend:r0.root->base - c/cwur
`,
	}},
	{name: "SetMonitorOwned", do: func(f *txnFixture, tx *block.Txn) error {
		tx.SetMonitorOwned(f.extra, false)
		return nil
	}, want: map[string]string{
		"extra": `
ro=false owned=false implicit=false perm=cwr shared=cwu ownfrozen=[]
parent top.extra->extra data cwr/cwu
`,
	}},
	{name: "Delete", do: func(f *txnFixture, tx *block.Txn) error {
		return tx.Delete("spare")
	}, want: map[string]string{
		"": `
nodes extra top top-file mid mid-file base base-file
root r0: root->base
root r1: root->top
root r2: root->mid
`,
		"spare":      ``,
		"spare-file": ``,
	}},
	{name: "Open", do: func(f *txnFixture, tx *block.Txn) error {
		_, err := tx.Open(txnCtx, []byte(cowNode("new", `"mid"`)), true)
		return err
	}, want: map[string]string{
		"": `
nodes new new-file spare spare-file extra top top-file mid mid-file base base-file
root r0: root->base
root r1: root->top
root r2: root->mid
`,
		"new": `
ro=false owned=true implicit=false perm=- shared=cwur ownfrozen=[]
child new.file->new-file data|metadata|primary cwr/cu
child new.backing->mid cow -/cwur blocker="node is used as backing hd of 'new'" allows=backing
`,
		"new-file": `
ro=false owned=false implicit=false perm=cwr shared=cu ownfrozen=[]
parent new.file->new-file data|metadata|primary cwr/cu
`,
		"mid": `
ro=false owned=true implicit=false perm=c shared=cwur ownfrozen=[]
child mid.file->mid-file data|metadata|primary cwr/cu
child mid.backing->base cow c/cwur blocker="node is used as backing hd of 'mid'" allows=backing
parent top.backing->mid cow c/cwur blocker="node is used as backing hd of 'top'" allows=backing
parent block-backend:r2.root->mid - c/cwur
parent new.backing->mid cow -/cwur blocker="node is used as backing hd of 'new'" allows=backing
`,
	}},
}

// TestTxnAbortKeepsBlocker: retargeting a COW edge gives it its parent's
// backing blocker; an abort gives back the blocker it had, even one a
// job set on it.
func TestTxnAbortKeepsBlocker(t *testing.T) {
	f := newTxnFixture(t)
	change(t, f.g, func(tx *block.Txn) error {
		tx.SetBlocker(block.COWChild(f.top), "block device is in use by block job: commit", block.OpNone)
		return nil
	})
	was := f.s.snap()
	tx := f.g.Begin()
	if err := tx.Replace(block.COWChild(f.top), f.base); err != nil {
		t.Fatal(err)
	}
	tx.Abort()
	sameGraph(t, "an aborted Replace", was, f.s.snap())
}
