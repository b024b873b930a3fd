package block_test

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/blockd/blockd/pkg/block"
	"github.com/blockd/blockd/pkg/block/blocktest"
)

// txnFixture is a graph in which the order of edges shows: the edges
// graph changes touch are not last in their lists.
//
//	r0 ─root─▶ base ◀─backing─ mid ◀─backing─ top ◀─root─ r1
//	                            ▲               │
//	                  r2 ─root──┘               └─extra─▶ extra
//
//	spare: a cow node nobody uses, with no backing
//
// base's parents are [r0, mid], mid's [top, r2], top's children [file,
// backing, extra]. r1 writes top; r0 and r2 read.
type txnFixture struct {
	g                            *block.Graph
	top, mid, base, extra, spare *block.Node
	r0, r1, r2                   *block.Root
	s                            *snapper
}

const (
	permR  = block.PermConsistentRead
	permRW = block.PermConsistentRead | block.PermWrite
)

func cowNode(name, backing string) string {
	return `{"driver":"blocktest-cow","node-name":"` + name + `","file":{"driver":"blocktest-mem","node-name":"` +
		name + `-file","size":65536},"backing":` + backing + `}`
}

func newTxnFixture(t *testing.T) *txnFixture {
	t.Helper()
	f := &txnFixture{g: blocktest.NewGraph()}
	f.base = blocktest.Open(t, f.g, cowNode("base", "null"))
	f.r0 = newRoot(t, f.base, "r0", permR, block.PermAll)
	f.mid = blocktest.Open(t, f.g, cowNode("mid", `"base"`))
	f.top = blocktest.Open(t, f.g, cowNode("top", `"mid"`))
	f.extra = blocktest.Open(t, f.g, `{"driver":"blocktest-mem","node-name":"extra","size":65536}`)
	change(t, f.g, func(tx *block.Txn) error {
		_, err := tx.AttachChild(f.top, "extra", f.extra, block.RoleData, block.PermAdjust{})
		return err
	})
	f.r1 = newRoot(t, f.top, "r1", permRW, block.PermAll)
	f.r2 = newRoot(t, f.mid, "r2", permR, block.PermAll)
	f.spare = blocktest.Open(t, f.g, cowNode("spare", "null"))
	f.s = newSnapper(f.g, f.r0, f.r1, f.r2)
	return f
}

// newRoot attaches an export-like root called id.
func newRoot(t *testing.T, n *block.Node, id string, perm, shared block.Perm) *block.Root {
	t.Helper()
	var r *block.Root
	change(t, n.Graph(), func(tx *block.Txn) error {
		var err error
		r, err = tx.NewRoot(n, block.RootOptions{ID: id, Perm: perm, Shared: shared})
		return err
	})
	return r
}

// change runs fn in a graph change and commits it, failing the test on
// any error.
func change(t *testing.T, g *block.Graph, fn func(tx *block.Txn) error) {
	t.Helper()
	tx := g.Begin()
	defer tx.Abort()
	if err := fn(tx); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
}

func (f *txnFixture) node(name string) *block.Node {
	f.g.Lock()
	defer f.g.Unlock()
	return f.g.Lookup(name)
}

// noneDrained fails the test if a change left a node drained.
func (f *txnFixture) noneDrained(t *testing.T) {
	t.Helper()
	f.g.Lock()
	defer f.g.Unlock()
	for _, n := range f.g.Nodes() {
		if n.Drained() {
			t.Errorf("node %s still drained after the change ended", n.Name())
		}
	}
}

// checkCommitted compares the graph after a committed change with the
// picture before it: the nodes in want must look as want says (edge
// numbers dropped); every other node must be exactly as it was.
func checkCommitted(t *testing.T, was, now picture, want map[string]string) {
	t.Helper()
	for k, w := range want {
		got := plain(now[k])
		if w = strings.TrimPrefix(w, "\n"); got != w {
			t.Errorf("%s after commit:\n%s--- want\n%s", pictureKey(k), got, w)
		}
	}
	rest, restNow := picture{}, picture{}
	for k := range was {
		if _, ok := want[k]; !ok {
			rest[k], restNow[k] = was[k], now[k]
		}
	}
	for k := range now {
		if _, ok := want[k]; !ok {
			rest[k], restNow[k] = was[k], now[k]
		}
	}
	if d := rest.diff(restNow); d != "" {
		t.Errorf("the commit changed nodes it should not have:\n%s", d)
	}
}

// txnCtx is the context of the graph changes in these tests.
var txnCtx = context.Background()

func reopenJSON(tx *block.Txn, opts string) error {
	_, err := tx.Reopen(txnCtx, json.RawMessage(opts))
	return err
}
