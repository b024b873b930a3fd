package block_test

import (
	"context"
	"errors"
	"testing"

	"github.com/blockd/blockd/pkg/block"
	"github.com/blockd/blockd/pkg/block/blocktest"
)

// buildChain makes top -> flt (filter) -> mid -> base, each format node a
// blocktest-cow over its own memory node, and writes one sector into each
// format layer at a different place.
func buildChain(t *testing.T) (g *block.Graph, top, flt, mid, base *block.Node) {
	t.Helper()
	g = blocktest.NewGraph()
	base = blocktest.Open(t, g, `{"driver":"blocktest-cow","node-name":"base","file":{"driver":"blocktest-mem","size":65536}}`)
	mid = blocktest.Open(t, g, `{"driver":"blocktest-cow","node-name":"mid","file":{"driver":"blocktest-mem","size":65536},"backing":"base"}`)
	flt = blocktest.Open(t, g, `{"driver":"blocktest-filter","node-name":"flt","file":"mid"}`)
	top = blocktest.Open(t, g, `{"driver":"blocktest-cow","node-name":"top","file":{"driver":"blocktest-mem","size":65536},"backing":"flt"}`)
	ctx := context.Background()
	for _, w := range []struct {
		n   *block.Node
		off int64
	}{{base, 0}, {mid, 4096}, {top, 8192}} {
		r := blocktest.NewRoot(t, w.n, block.PermWrite|block.PermConsistentRead, block.PermAll)
		buf := make([]byte, 512)
		for i := range buf {
			buf[i] = 0xaa
		}
		if err := r.WriteAt(ctx, buf, w.off, 0); err != nil {
			t.Fatalf("write %s: %v", w.n.Name(), err)
		}
		tx := g.Begin()
		tx.Detach(r)
		if err := tx.Commit(); err != nil {
			t.Fatal(err)
		}
	}
	return
}

func name(n *block.Node) string {
	if n == nil {
		return "<nil>"
	}
	return n.Name()
}

func childName(c *block.Child) string {
	if c == nil {
		return "<nil>"
	}
	return c.Name() + "->" + c.Node().Name()
}

func TestChainFunctions(t *testing.T) {
	g, top, flt, mid, base := buildChain(t)
	g.Lock()
	defer g.Unlock()
	tests := []struct {
		what string
		got  string
		want string
	}{
		{"COWChild(top)", childName(block.COWChild(top)), "backing->flt"},
		{"FilteredChild(top)", childName(block.FilteredChild(top)), "<nil>"},
		{"FilteredChild(flt)", childName(block.FilteredChild(flt)), "file->mid"},
		{"COWChild(flt)", childName(block.COWChild(flt)), "<nil>"},
		{"FilteredOrCOWChild(flt)", childName(block.FilteredOrCOWChild(flt)), "file->mid"},
		{"FilteredOrCOWChild(top)", childName(block.FilteredOrCOWChild(top)), "backing->flt"},
		{"StorageChild(flt)", childName(block.StorageChild(flt)), "file->mid"},
		{"PrimaryChild(flt)", childName(block.PrimaryChild(flt)), "file->mid"},
		{"SkipFilters(flt)", name(block.SkipFilters(flt)), "mid"},
		{"SkipFilters(top)", name(block.SkipFilters(top)), "top"},
		{"SkipImplicitFilters(flt)", name(block.SkipImplicitFilters(flt)), "flt"},
		{"BackingChainNext(top)", name(block.BackingChainNext(top)), "mid"},
		{"BackingChainNext(flt)", name(block.BackingChainNext(flt)), "base"},
		{"BackingChainNext(base)", name(block.BackingChainNext(base)), "<nil>"},
		{"FindOverlay(top, base)", name(block.FindOverlay(top, base)), "mid"},
		{"FindOverlay(top, mid)", name(block.FindOverlay(top, mid)), "top"},
		{"FindOverlay(top, flt)", name(block.FindOverlay(top, flt)), "top"},
		{"FindOverlay(mid, top)", name(block.FindOverlay(mid, top)), "<nil>"},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("%s = %s, want %s", tt.what, tt.got, tt.want)
		}
	}
	if got := block.StorageChild(top); got == nil || got.Name() != "file" {
		t.Errorf("StorageChild(top) = %v, want file", childName(got))
	}
}

func TestIsAllocatedAbove(t *testing.T) {
	_, top, flt, mid, base := buildChain(t)
	ctx := context.Background()
	tests := []struct {
		name        string
		top, base   *block.Node
		includeBase bool
		off         int64
		want        bool
		wantN       int64
	}{
		{"top's own data", top, nil, false, 8192, true, 512},
		{"mid's data seen from top", top, nil, false, 4096, true, 512},
		{"base's data seen from top", top, nil, false, 0, true, 512},
		{"hole everywhere", top, nil, false, 512, false, 3584},
		{"stop above base", top, base, false, 0, false, 4096},
		{"include base", top, base, true, 0, true, 512},
		{"base given as filter's child", top, mid, false, 4096, false, 4096},
		{"base given as filter", top, flt, false, 4096, false, 4096},
		{"from filter", flt, nil, false, 4096, true, 512},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, n, err := block.IsAllocatedAbove(ctx, tt.top, tt.base, tt.includeBase, tt.off, 4096)
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want || n != tt.wantN {
				t.Errorf("IsAllocatedAbove = %v, %d; want %v, %d", got, n, tt.want, tt.wantN)
			}
		})
	}
	st, err := block.StatusAbove(ctx, top, nil, 4096, 512)
	if err != nil || st.Depth != 2 || !st.Data {
		t.Errorf("StatusAbove(top, 4096) = %+v, %v; want depth 2 data", st, err)
	}
	st, err = block.StatusAbove(ctx, top, nil, 1024, 512)
	if err != nil || st.Depth != 0 || !st.Zero {
		t.Errorf("StatusAbove(top, 1024) = %+v, %v; want depth 0 zero", st, err)
	}
}

func TestReadThroughChain(t *testing.T) {
	_, top, _, _, _ := buildChain(t)
	r := blocktest.NewRoot(t, top, block.PermConsistentRead, block.PermAll)
	buf := make([]byte, 12288)
	if err := r.ReadAt(context.Background(), buf, 0, 0); err != nil {
		t.Fatal(err)
	}
	for _, off := range []int{0, 4096, 8192} {
		if buf[off] != 0xaa || buf[off+511] != 0xaa || buf[off+512] != 0 {
			t.Errorf("data at %d not from the right layer", off)
		}
	}
}

func TestPermissions(t *testing.T) {
	g := blocktest.NewGraph()
	n := blocktest.Open(t, g, `{"driver":"blocktest-mem","node-name":"m","size":4096}`)
	blocktest.NewRoot(t, n, block.PermWrite|block.PermConsistentRead, block.PermConsistentRead)
	tx := g.Begin()
	_, err := tx.NewRoot(n, block.RootOptions{Perm: block.PermWrite, Shared: block.PermAll})
	tx.Abort()
	if !errors.Is(err, block.ErrPermission) {
		t.Fatalf("second writer: err = %v, want a permission conflict", err)
	}
	want := "Permission conflict on node 'm': permissions 'write' are both required by an unnamed block device (uses node 'm' as 'root' child) and unshared by an unnamed block device (uses node 'm' as 'root' child)."
	if err.Error() != want {
		t.Errorf("message:\n got %s\nwant %s", err, want)
	}
	ro := blocktest.Open(t, g, `{"driver":"blocktest-mem","node-name":"ro","size":4096,"read-only":true}`)
	tx = g.Begin()
	_, err = tx.NewRoot(ro, block.RootOptions{Perm: block.PermWrite, Shared: block.PermAll})
	tx.Abort()
	if err == nil || err.Error() != "Block node is read-only" {
		t.Errorf("writer on read-only node: err = %v", err)
	}
}

func TestOpenErrorsLeaveGraphUnchanged(t *testing.T) {
	g := blocktest.NewGraph()
	blocktest.Open(t, g, `{"driver":"blocktest-mem","node-name":"a","size":4096}`)
	tests := []struct{ opts, want string }{
		{`{"driver":"blocktest-mem","node-name":"a","size":1}`, "Duplicate nodes with node-name='a'"},
		{`{"driver":"blocktest-mem","node-name":"#a","size":1}`, "Invalid node-name: '#a'"},
		{`{"driver":"blocktest-mem","node-name":"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa","size":1}`, "Node name too long"},
		{`{"driver":"blocktest-mem","size":1}`, "'node-name' must be specified for the root node"},
		{`{"driver":"nosuch","node-name":"x"}`, "Parameter 'driver' does not accept value 'nosuch'"},
		{`{"node-name":"x"}`, "Parameter 'driver' is missing"},
		{`{"driver":"blocktest-filter","node-name":"x","file":"nosuch"}`, "Cannot find device='nosuch' nor node-name='nosuch'"},
		// The inline child is opened, then the parent fails: both go.
		{`{"driver":"blocktest-cow","node-name":"x","file":{"driver":"blocktest-mem","node-name":"xf","size":4096},"backing":"nosuch"}`, "Cannot find device='nosuch' nor node-name='nosuch'"},
	}
	for _, tt := range tests {
		_, err := blocktest.TryOpen(g, tt.opts)
		if err == nil || err.Error() != tt.want {
			t.Errorf("open %s: err = %v, want %q", tt.opts, err, tt.want)
		}
	}
	g.Lock()
	defer g.Unlock()
	if got := len(g.Nodes()); got != 1 {
		for _, n := range g.Nodes() {
			t.Logf("left: %s", n.Name())
		}
		t.Errorf("graph has %d nodes after failed opens, want 1", got)
	}
}

func TestDelete(t *testing.T) {
	_, top, _, mid, _ := buildChain(t)
	g := top.Graph()
	tests := []struct{ name, want string }{
		{"nope", "Failed to find node with node-name='nope'"},
		{"mid", "Block device mid is in use"},
		{"base", "Node 'base' is busy: node is used as backing hd of 'mid'"},
	}
	for _, tt := range tests {
		tx := g.Begin()
		err := tx.Delete(tt.name)
		tx.Abort()
		if err == nil || err.Error() != tt.want {
			t.Errorf("delete %s: err = %v, want %q", tt.name, err, tt.want)
		}
	}
	_ = mid
	for _, name := range []string{"top", "flt", "mid", "base"} {
		tx := g.Begin()
		if err := tx.Delete(name); err != nil {
			tx.Abort()
			t.Fatalf("delete %s: %v", name, err)
		}
		if err := tx.Commit(); err != nil {
			t.Fatal(err)
		}
	}
	g.Lock()
	defer g.Unlock()
	if n := len(g.Nodes()); n != 0 {
		t.Errorf("%d nodes left after deleting all, want 0 (inline children must go with their parents)", n)
	}
}

func TestGateAlignmentAndSplit(t *testing.T) {
	g := blocktest.NewGraph()
	n := blocktest.Open(t, g, `{"driver":"blocktest-mem","node-name":"m","size":65536,"align":4096,"max-transfer":8192}`)
	r := blocktest.NewRoot(t, n, block.PermWrite|block.PermConsistentRead, block.PermAll)
	ctx := context.Background()
	p := make([]byte, 20000)
	for i := range p {
		p[i] = byte(i)
	}
	if err := r.WriteAt(ctx, p, 100, 0); err != nil {
		t.Fatal(err)
	}
	q := make([]byte, 20000)
	if err := r.ReadAt(ctx, q, 100, 0); err != nil {
		t.Fatal(err)
	}
	if string(p) != string(q) {
		t.Error("unaligned write/read round trip differs")
	}
	head := make([]byte, 100)
	if err := r.ReadAt(ctx, head, 0, 0); err != nil || !block.IsZero(head) {
		t.Errorf("bytes before an unaligned write changed: %v", err)
	}
	if err := r.Zero(ctx, 50, 10000, 0); err != nil {
		t.Fatal(err)
	}
	if err := r.ReadAt(ctx, q, 0, 0); err != nil || !block.IsZero(q[:10050]) || q[10050] != p[10050-100] {
		t.Errorf("zero of an unaligned range wrong: %v", err)
	}
	if err := r.ReadAt(ctx, q, 60000, 0); !errors.Is(err, block.ErrOutOfRange) {
		t.Errorf("read past end: err = %v, want out of range", err)
	}
}
