package quorum_test

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/blockd/blockd/pkg/block"
	"github.com/blockd/blockd/pkg/block/blocktest"
)

// change runs one x-blockdev-change step on parent p: "+node" adds node,
// "-children.N" removes that edge.
func change(g *block.Graph, p, step string) error {
	tx := g.Begin()
	defer tx.Abort()
	pn := g.Lookup(p)
	var err error
	if name, ok := strings.CutPrefix(step, "+"); ok {
		err = tx.AddChild(pn, g.Lookup(name))
	} else {
		c := pn.ChildNamed(strings.TrimPrefix(step, "-"))
		if c == nil {
			return fmt.Errorf("no child %s", step)
		}
		err = tx.DeleteChild(pn, c)
	}
	if err != nil {
		return err
	}
	return tx.Commit()
}

// edges lists a node's children as "name=node".
func edges(g *block.Graph, name string) string {
	g.Lock()
	defer g.Unlock()
	var s []string
	for _, c := range g.Lookup(name).Children() {
		s = append(s, c.Name()+"="+c.Node().Name())
	}
	return strings.Join(s, " ")
}

// TestChangeSequence replays what qsd 7.2 answered to the same steps: a
// new child takes the next index, which goes back only when the child
// with the highest index leaves; a failed step changes nothing.
func TestChangeSequence(t *testing.T) {
	g := blocktest.NewGraph()
	for _, n := range []string{"c0", "c1", "c2", "c3", "c4"} {
		blocktest.Open(t, g, fmt.Sprintf(`{"driver":"blocktest-mem","node-name":%q,"size":%d}`, n, size))
	}
	blocktest.Open(t, g, `{"driver":"blocktest-mem","node-name":"ro","size":65536,"read-only":true}`)
	blocktest.Open(t, g, `{"driver":"quorum","node-name":"q","vote-threshold":2,"children":["c0","c1","c2"]}`)
	blocktest.NewRoot(t, g.Lookup("q"), block.PermConsistentRead|block.PermWrite, block.PermAll)
	for _, tt := range []struct {
		step, err, edges string
	}{
		{"+c0", "The node c0 already has a parent", "children.0=c0 children.1=c1 children.2=c2"},
		{"+q", "The node q already has a parent", ""},
		{"+c2", "The node c2 already has a parent", ""},
		{"+ro", "Block node is read-only", ""},
		{"+c3", "", "children.0=c0 children.1=c1 children.2=c2 children.3=c3"},
		{"-children.1", "", "children.0=c0 children.2=c2 children.3=c3"},
		{"+c1", "", "children.0=c0 children.2=c2 children.3=c3 children.4=c1"},
		{"-children.4", "", "children.0=c0 children.2=c2 children.3=c3"},
		{"+c4", "", "children.0=c0 children.2=c2 children.3=c3 children.4=c4"},
		{"-children.0", "", "children.2=c2 children.3=c3 children.4=c4"},
		{"-children.2", "", "children.3=c3 children.4=c4"},
		{"-children.3", "The number of children cannot be lower than the vote threshold 2", "children.3=c3 children.4=c4"},
		{"-children.4", "The number of children cannot be lower than the vote threshold 2", ""},
		{"+c0", "", "children.3=c3 children.4=c4 children.5=c0"},
	} {
		err := change(g, "q", tt.step)
		if got := fmt.Sprint(err); (err != nil || tt.err != "") && got != tt.err {
			t.Fatalf("%s: error %q, want %q", tt.step, got, tt.err)
		}
		if got := edges(g, "q"); tt.edges != "" && got != tt.edges {
			t.Fatalf("%s: children %s, want %s", tt.step, got, tt.edges)
		}
	}
	// The new children are written with the others' permissions.
	g.Lock()
	defer g.Unlock()
	for _, c := range g.Lookup("q").Children() {
		if p, s := c.Perm(); fmt.Sprintf("%v/%v", p, s) != "write,consistent-read/write-unchanged,consistent-read" {
			t.Errorf("%s: perm %v shared %v", c.Name(), p, s)
		}
	}
	for _, n := range []string{"c1", "c2"} {
		if len(g.Lookup(n).Parents()) != 0 {
			t.Errorf("%s still has parents after its removal", n)
		}
	}
}

func TestChangeRefusals(t *testing.T) {
	g := blocktest.NewGraph()
	for _, n := range []string{"c0", "c1", "c2"} {
		blocktest.Open(t, g, fmt.Sprintf(`{"driver":"blocktest-mem","node-name":%q,"size":%d}`, n, size))
	}
	blocktest.Open(t, g, `{"driver":"quorum","node-name":"bv","vote-threshold":2,"blkverify":true,"children":["c0","c1"]}`)
	blocktest.Open(t, g, `{"driver":"blocktest-filter","node-name":"top","file":"bv"}`)
	blocktest.Open(t, g, `{"driver":"blocktest-mem","node-name":"lone","size":65536}`)
	for _, tt := range []struct{ parent, step, err string }{
		{"bv", "+c2", "Cannot add a child to a quorum in blkverify mode"},
		{"bv", "-children.0", "The number of children cannot be lower than the vote threshold 2"},
		{"top", "+c2", "The node top does not support adding a child"},
		{"top", "-file", "The node top does not support removing a child"},
		{"lone", "+c2", "The node lone does not support adding a child"},
	} {
		if err := change(g, tt.parent, tt.step); fmt.Sprint(err) != tt.err {
			t.Errorf("%s %s: %v, want %s", tt.parent, tt.step, err, tt.err)
		}
	}
	// A quorum cannot become its own child, nor the child of a node above it.
	blocktest.Open(t, g, `{"driver":"quorum","node-name":"q","vote-threshold":1,"children":["c2"]}`)
	blocktest.Open(t, g, `{"driver":"blocktest-filter","node-name":"over","file":"q"}`)
	for _, tt := range []struct{ step, err string }{
		{"+over", "Making 'over' a children.1 child of 'q' would create a cycle"},
	} {
		if err := change(g, "q", tt.step); fmt.Sprint(err) != tt.err {
			t.Errorf("%s: %v, want %s", tt.step, err, tt.err)
		}
	}
	if got := edges(g, "q"); got != "children.0=c2" {
		t.Errorf("children after refusals: %s", got)
	}
}

// TestChangeVotes checks that the new set votes from the next request on:
// a child that differs is reported bad once added, writes reach it, and a
// removed child no longer sees them.
func TestChangeVotes(t *testing.T) {
	ctx := context.Background()
	g, r, ev := setup(t, []string{"c0", "c1"}, `,"vote-threshold":1`)
	blocktest.Open(t, g, fmt.Sprintf(`{"driver":"blocktest-mem","node-name":"n","size":%d,"pattern":7}`, size))
	if err := change(g, "q", "+n"); err != nil {
		t.Fatal(err)
	}
	p := make([]byte, 512)
	if err := r.ReadAt(ctx, p, 0, 0); err != nil || !bytes.Equal(p, pattern(0x5a, 512)) {
		t.Fatalf("read %v %x", err, p[:4])
	}
	if got := strings.Join(ev.take(), "\n"); got != `QUORUM_REPORT_BAD {"type":"read","node-name":"n","sector-num":0,"sectors-count":1}` {
		t.Errorf("events: %s", got)
	}
	if err := r.WriteAt(ctx, pattern(1, 512), 0, 0); err != nil {
		t.Fatal(err)
	}
	if err := change(g, "q", "-children.0"); err != nil {
		t.Fatal(err)
	}
	if err := r.WriteAt(ctx, pattern(2, 512), 0, 0); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]byte{"c0": 1, "c1": 2, "n": 2} {
		if got := content(t, g, name, 0, 512); !bytes.Equal(got, pattern(want, 512)) {
			t.Errorf("%s holds %x, want %x", name, got[0], want)
		}
	}
	if got := ev.take(); len(got) != 0 {
		t.Errorf("events: %v", got)
	}
}

// TestChangeCaps checks that the capabilities cached in the quorum and
// in the nodes above it follow its children.
func TestChangeCaps(t *testing.T) {
	g := blocktest.NewGraph()
	blocktest.Open(t, g, `{"driver":"blocktest-mem","node-name":"c0","size":65536}`)
	blocktest.Open(t, g, `{"driver":"blocktest-mem","node-name":"big","size":65536,"align":4096}`)
	q := blocktest.Open(t, g, `{"driver":"quorum","node-name":"q","vote-threshold":1,"children":["c0"]}`)
	top := blocktest.Open(t, g, `{"driver":"blocktest-filter","node-name":"top","file":"q"}`)
	for _, tt := range []struct {
		step  string
		align int64
	}{{"+big", 4096}, {"-children.1", 1}} {
		if err := change(g, "q", tt.step); err != nil {
			t.Fatal(err)
		}
		if a, b := q.Caps().Limits.RequestAlign, top.Caps().Limits.RequestAlign; a != tt.align || b != tt.align {
			t.Errorf("%s: alignment %d, above %d, want %d", tt.step, a, b, tt.align)
		}
	}
}

// TestChangeUnderIO adds and removes children while writers run through
// the quorum: the change drains them, and no request sees half a set
// (run with -race).
func TestChangeUnderIO(t *testing.T) {
	ctx := context.Background()
	g, r, _ := setup(t, []string{"c0", "c1"}, `,"vote-threshold":1`)
	blocktest.Open(t, g, fmt.Sprintf(`{"driver":"blocktest-mem","node-name":"n","size":%d}`, size))
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p := make([]byte, 4096)
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				off := int64((w*16 + i%16) * 1024 % (size - 4096))
				if err := r.WriteAt(ctx, pattern(byte(w), 4096), off, 0); err != nil {
					t.Error(err)
					return
				}
				if err := r.ReadAt(ctx, p, off, 0); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	steps := []string{"+n", "-children.2"}
	for i := range 40 {
		if err := change(g, "q", steps[i%2]); err != nil {
			t.Fatal(err)
		}
	}
	close(stop)
	wg.Wait()
	if got := edges(g, "q"); got != "children.0=c0 children.1=c1" {
		t.Errorf("children: %s", got)
	}
}

// TestChangeAbort checks that a change aborted after the quorum took it
// (as when a later step of the same transaction fails) puts everything
// back: the edges and their order, the set that votes, the next index,
// the capabilities, and an inline child that would have been closed.
func TestChangeAbort(t *testing.T) {
	ctx := context.Background()
	g, r, _ := setup(t, []string{"c0", "c1"}, `,"vote-threshold":1`)
	blocktest.Open(t, g, fmt.Sprintf(`{"driver":"blocktest-mem","node-name":"n","size":%d,"align":4096}`, size))
	tx := g.Begin()
	q := g.Lookup("q")
	if err := tx.AddChild(q, g.Lookup("n")); err != nil {
		t.Fatal(err)
	}
	if err := tx.DeleteChild(q, q.ChildNamed("children.0")); err != nil {
		t.Fatal(err)
	}
	if a := q.Caps().Limits.RequestAlign; a != 4096 {
		t.Errorf("alignment inside the change %d", a)
	}
	tx.Abort()
	if got := edges(g, "q"); got != "children.0=c0 children.1=c1" {
		t.Errorf("children after abort: %s", got)
	}
	if a := q.Caps().Limits.RequestAlign; a != 1 {
		t.Errorf("alignment after abort %d", a)
	}
	// Writes reach exactly the old set.
	if err := r.WriteAt(ctx, pattern(9, 4096), 0, 0); err != nil {
		t.Fatal(err)
	}
	if got := content(t, g, "n", 0, 4096); bytes.Equal(got, pattern(9, 4096)) {
		t.Errorf("the aborted child got the write")
	}
	if err := change(g, "q", "+n"); err != nil || edges(g, "q") != "children.0=c0 children.1=c1 children.2=n" {
		t.Errorf("after abort, the next child is %s (%v)", edges(g, "q"), err)
	}

	// An inline child removed in an aborted change stays open.
	blocktest.Open(t, g, fmt.Sprintf(`{"driver":"quorum","node-name":"q2","vote-threshold":1,"children":[{"driver":"blocktest-mem","node-name":"inl","size":%d},{"driver":"blocktest-mem","node-name":"inl2","size":%d}]}`, size, size))
	tx = g.Begin()
	q2 := g.Lookup("q2")
	if err := tx.DeleteChild(q2, q2.ChildNamed("children.0")); err != nil {
		t.Fatal(err)
	}
	tx.Abort()
	if got := edges(g, "q2"); got != "children.0=inl children.1=inl2" {
		t.Errorf("q2 children after abort: %s", got)
	}
	if err := change(g, "q2", "-children.0"); err != nil {
		t.Fatal(err)
	}
	g.Lock()
	defer g.Unlock()
	if g.Lookup("inl") != nil {
		t.Errorf("the removed inline child is still in the graph")
	}
}
