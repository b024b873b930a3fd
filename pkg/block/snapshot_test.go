package block_test

import (
	"context"
	"encoding/json"
	"testing"

	"github.com/blockd/blockd/pkg/block"
	"github.com/blockd/blockd/pkg/block/blocktest"
)

// TestAppend puts an overlay on a node that a root uses: the root moves to
// the overlay, the old node becomes its COW child, and reads through the
// root see the old data.
func TestAppend(t *testing.T) {
	g, top, _, _, _ := buildChain(t)
	ctx := context.Background()
	r := blocktest.NewRoot(t, top, block.PermConsistentRead|block.PermWrite, block.PermAll)
	ov := blocktest.Open(t, g, `{"driver":"blocktest-cow","node-name":"ov","file":{"driver":"blocktest-mem","size":65536},"backing":null}`)
	tx := g.Begin()
	if err := tx.Append(ov, top); err != nil {
		tx.Abort()
		t.Fatal(err)
	}
	tx.SetReadOnly(top, true)
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	g.Lock()
	if r.Node() != ov || block.COWChild(ov).Node() != top || !top.ReadOnly() {
		t.Errorf("after append: root on %s, ov's backing %v, top read-only %v", r.Node().Name(), childName(block.COWChild(ov)), top.ReadOnly())
	}
	g.Unlock()
	buf := make([]byte, 512)
	if err := r.ReadAt(ctx, buf, 8192, 0); err != nil || buf[0] != 0xaa {
		t.Errorf("read through the overlay: %v %x", err, buf[0])
	}
	// A second append of the same overlay is refused and changes nothing.
	tx = g.Begin()
	err := tx.Append(ov, top)
	tx.Abort()
	if err != nil {
		t.Logf("second append: %v", err)
	}
}

// TestReopen changes the backing link and read-only state and checks the
// errors, each leaving the node as it was.
func TestReopen(t *testing.T) {
	g, top, _, mid, base := buildChain(t)
	ctx := context.Background()
	reopen := func(opts string) error {
		tx := g.Begin()
		defer tx.Abort()
		if _, err := tx.Reopen(ctx, json.RawMessage(opts)); err != nil {
			return err
		}
		return tx.Commit()
	}
	topFile := block.StorageChild(top).Node().Name()
	tests := []struct{ opts, want string }{
		{`{"driver":"blocktest-cow","file":"x"}`, "node-name not specified"},
		{`{"driver":"blocktest-cow","node-name":"nosuch","file":"x"}`, "Failed to find node with node-name='nosuch'"},
		{`{"driver":"blocktest-cow","node-name":"top","file":"` + topFile + `"}`, "backing is missing for 'top'"},
		{`{"driver":"blocktest-mem","node-name":"top","size":1,"backing":null}`, "Cannot change the option 'driver'"},
		{`{"driver":"blocktest-cow","node-name":"top","file":"` + topFile + `","backing":{"driver":"blocktest-mem","size":512}}`, "Cannot create a new node with blockdev-reopen: 'backing' of 'top' must name an existing node"},
		{`{"driver":"blocktest-cow","node-name":"base","file":"` + block.StorageChild(base).Node().Name() + `","backing":"top"}`, "Making 'top' a backing child of 'base' would create a cycle"},
	}
	for _, tt := range tests {
		if err := reopen(tt.opts); err == nil || err.Error() != tt.want {
			t.Errorf("reopen %s: err = %v, want %q", tt.opts, err, tt.want)
		}
	}
	if err := reopen(`{"driver":"blocktest-cow","node-name":"top","file":"` + topFile + `","backing":"base","read-only":true}`); err != nil {
		t.Fatal(err)
	}
	g.Lock()
	if block.COWChild(top).Node() != base || !top.ReadOnly() {
		t.Errorf("after reopen: backing %s, read-only %v", childName(block.COWChild(top)), top.ReadOnly())
	}
	g.Unlock()
	if err := reopen(`{"driver":"blocktest-cow","node-name":"top","file":"` + topFile + `","backing":null,"read-only":false}`); err != nil {
		t.Fatal(err)
	}
	g.Lock()
	defer g.Unlock()
	if block.COWChild(top) != nil || top.ReadOnly() {
		t.Errorf("after reopen with backing null: backing %s, read-only %v", childName(block.COWChild(top)), top.ReadOnly())
	}
	_ = mid
}

// TestImplicitFilter: a filter a job inserts sits between a root and its
// node, is skipped by SkipImplicitFilters but not by SkipFilters'
// callers' view of explicit filters, and goes away on removal.
func TestImplicitFilter(t *testing.T) {
	g, top, _, _, _ := buildChain(t)
	r := blocktest.NewRoot(t, top, block.PermConsistentRead, block.PermAll)
	tx := g.Begin()
	f, err := tx.InsertFilter(context.Background(), top, json.RawMessage(`{"driver":"blocktest-filter","file":"top"}`), true)
	if err != nil {
		tx.Abort()
		t.Fatal(err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	g.Lock()
	if r.Node() != f || !f.Implicit() || !f.AutoNamed() || f.MonitorOwned() {
		t.Errorf("after insert: root on %s, implicit %v, auto-named %v", r.Node().Name(), f.Implicit(), f.AutoNamed())
	}
	if block.SkipImplicitFilters(f) != top || block.SkipFilters(f) != top {
		t.Errorf("implicit filter not skipped")
	}
	g.Unlock()
	buf := make([]byte, 512)
	if err := r.ReadAt(context.Background(), buf, 8192, 0); err != nil || buf[0] != 0xaa {
		t.Errorf("read through the inserted filter: %v", err)
	}
	tx = g.Begin()
	if err := tx.RemoveFilter(f); err != nil {
		tx.Abort()
		t.Fatal(err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	g.Lock()
	defer g.Unlock()
	if r.Node() != top || g.Lookup(f.Name()) != nil {
		t.Errorf("after removal: root on %s, filter still there %v", r.Node().Name(), g.Lookup(f.Name()) != nil)
	}
}
