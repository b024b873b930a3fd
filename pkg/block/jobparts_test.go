package block_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"

	"github.com/blockd/blockd/pkg/block"
	"github.com/blockd/blockd/pkg/block/blocktest"
)

// The pieces jobs build on: finding base's overlay, freezing chain
// segments, op blockers, filters inserted and removed in one change, and
// roots whose owner takes part in drains.

func TestBaseOverlay(t *testing.T) {
	g, top, flt, mid, base := buildChain(t)
	g.Lock()
	defer g.Unlock()
	tests := []struct {
		base                *block.Node
		overlay, above, bad string
	}{
		{base: base, overlay: "mid", above: "mid"},
		{base: mid, overlay: "top", above: "flt"}, // the filter sits above base
		{base: flt, overlay: "top", above: "top"}, // base is the filter itself
		{base: nil, overlay: "base", above: "base"},
		{base: top, bad: "base is top"},
	}
	for _, tt := range tests {
		o, a, ok := block.BaseOverlay(top, tt.base)
		if tt.bad != "" {
			if ok {
				t.Errorf("BaseOverlay(top, %s) found %s, %s", name(tt.base), name(o), name(a))
			}
			continue
		}
		if !ok || name(o) != tt.overlay || name(a) != tt.above {
			t.Errorf("BaseOverlay(top, %s) = %s, %s, %v; want %s, %s", name(tt.base), name(o), name(a), ok, tt.overlay, tt.above)
		}
	}
}

func TestFreezeChain(t *testing.T) {
	g, top, flt, mid, base := buildChain(t)
	tx := g.Begin()
	cs, err := tx.FreezeChain(top, mid)
	if err != nil {
		t.Fatal(err)
	}
	if len(cs) != 2 || !cs[0].Frozen() || !cs[1].Frozen() || block.COWChild(mid).Frozen() {
		t.Fatalf("froze %d links; mid's backing frozen %v", len(cs), block.COWChild(mid).Frozen())
	}
	// A second job may not freeze the same links, nor a segment that
	// overlaps; nothing of a refused freeze stays frozen.
	if _, err := tx.FreezeChain(flt, base); !errors.Is(err, block.ErrFrozen) || err.Error() != "Cannot freeze 'file' link to 'mid'" {
		t.Errorf("overlapping freeze: %v", err)
	}
	if block.COWChild(mid).Frozen() {
		t.Error("a refused freeze left a link frozen")
	}
	if _, err := tx.FreezeChain(mid, top); err == nil || !strings.Contains(err.Error(), "is not in the backing chain") {
		t.Errorf("freeze upwards: %v", err)
	}
	// Frozen links refuse to move.
	if err := tx.SetBacking(top, base); !errors.Is(err, block.ErrFrozen) {
		t.Errorf("retarget a frozen link: %v", err)
	}
	tx.Unfreeze(cs...)
	if err := tx.SetBacking(top, base); err != nil {
		t.Errorf("retarget after unfreeze: %v", err)
	}
	tx.Abort()
	if cs[0].Frozen() || childName(block.COWChild(top)) != "backing->flt" {
		t.Errorf("abort left the chain changed: %s", childName(block.COWChild(top)))
	}
}

func TestOpBlockers(t *testing.T) {
	g, _, _, mid, base := buildChain(t)
	g.Lock()
	// A COW backing may be streamed and committed into, nothing else.
	for _, tt := range []struct {
		op      block.Op
		blocked bool
	}{
		{block.OpStream, false}, {block.OpCommitTarget, false}, {block.OpBackupSource, false},
		{block.OpMirrorTarget, true}, {block.OpReplace, true}, {block.OpDelete, true}, {block.OpResize, true},
	} {
		err := base.Blocked(tt.op)
		if (err != nil) != tt.blocked {
			t.Errorf("op %#x on a backing: %v", tt.op, err)
		}
		if err != nil && err.Error() != "Node 'base' is busy: node is used as backing hd of 'mid'" {
			t.Errorf("message %q", err)
		}
	}
	g.Unlock()
	// A job's blocker is newer and blocks everything.
	tx := g.Begin()
	r, err := tx.NewRoot(mid, block.RootOptions{})
	if err != nil {
		t.Fatal(err)
	}
	tx.SetBlocker(r.Child(), "block device is in use by block job: stream", block.OpNone)
	if err := mid.Blocked(block.OpStream); err == nil || err.Error() != "Node 'mid' is busy: block device is in use by block job: stream" {
		t.Errorf("job blocker: %v", err)
	}
	tx.Abort()
	g.Lock()
	defer g.Unlock()
	if err := mid.Blocked(block.OpStream); err != nil {
		t.Errorf("blocker left after abort: %v", err)
	}
}

// TestRemoveFilterReleasesFrozenLinks: a filter that froze its chain
// (copy-on-read with bottom) can be removed and the links it held
// retargeted in the same change; an abort restores both.
func TestRemoveFilterReleasesFrozenLinks(t *testing.T) {
	g := blocktest.NewGraph()
	blocktest.Open(t, g, `{"driver":"blocktest-cow","node-name":"base","file":{"driver":"blocktest-mem","size":65536}}`)
	blocktest.Open(t, g, `{"driver":"blocktest-cow","node-name":"mid","file":{"driver":"blocktest-mem","size":65536},"backing":"base"}`)
	top := blocktest.Open(t, g, `{"driver":"blocktest-cow","node-name":"top","file":{"driver":"blocktest-mem","size":65536},"backing":"mid"}`)
	ctx := context.Background()
	tx := g.Begin()
	// blocktest-filter has no bottom: freeze from the filter by hand, as a
	// filter's open would, through InsertFilter of a freezing filter.
	f, err := tx.InsertFilter(ctx, top, []byte(`{"driver":"blocktest-filter","file":"top","freeze-to":"mid"}`), true)
	if err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	if !f.Implicit() || !strings.HasPrefix(f.Name(), "#block") {
		t.Errorf("inserted filter: implicit %v, name %s", f.Implicit(), f.Name())
	}
	base := g.Lookup("base")
	tx = g.Begin()
	if err := tx.SetBacking(top, base); !errors.Is(err, block.ErrFrozen) {
		t.Fatalf("the filter's chain is not frozen: %v", err)
	}
	if err := tx.RemoveFilter(f); err != nil {
		t.Fatal(err)
	}
	if err := tx.SetBacking(top, base); err != nil {
		t.Fatalf("after removing the filter: %v", err)
	}
	tx.Abort()
	if block.COWChild(top).Node().Name() != "mid" || !block.COWChild(top).Frozen() || g.Lookup(f.Name()) == nil {
		t.Fatal("abort did not restore the filter and its frozen links")
	}
	tx = g.Begin()
	if err := tx.RemoveFilter(f); err != nil {
		t.Fatal(err)
	}
	if err := tx.SetBacking(top, base); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	if g.Lookup(f.Name()) != nil || block.COWChild(top).Frozen() {
		t.Error("the filter or its freeze outlived its removal")
	}
}

// hooks records drain calls and parks like a job at its pause point.
type hooks struct {
	mu     sync.Mutex
	calls  []string
	parked chan struct{}
}

func (h *hooks) note(s string) { h.mu.Lock(); h.calls = append(h.calls, s); h.mu.Unlock() }
func (h *hooks) DrainBegin()   { h.note("begin") }
func (h *hooks) DrainWait()    { <-h.parked; h.note("wait") }
func (h *hooks) DrainEnd()     { h.note("end") }

// TestRootDrainHooks: a root with hooks is not held back by a drain (its
// owner may be midway through a step); the drain asks the owner to stop,
// waits for it, and for its requests in flight; nested drains call the
// hooks once.
func TestRootDrainHooks(t *testing.T) {
	g := blocktest.NewGraph()
	n := blocktest.Open(t, g, `{"driver":"blocktest-mem","node-name":"n","size":65536}`)
	h := &hooks{parked: make(chan struct{})}
	tx := g.Begin()
	r, err := tx.NewRoot(n, block.RootOptions{Kind: "block-job", ID: "j", Perm: block.PermConsistentRead, Shared: block.PermAll, Hooks: h})
	if err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	drained := make(chan struct{})
	go func() {
		tx := g.Begin()
		tx.Drain(n)
		tx.Drain(n)
		close(drained)
		tx.Abort()
	}()
	// While the drain waits for the owner, its requests still pass.
	buf := make([]byte, 512)
	if err := r.ReadAt(context.Background(), buf, 0, 0); err != nil {
		t.Fatal(err)
	}
	select {
	case <-drained:
		t.Fatal("drain returned before the owner parked")
	default:
	}
	close(h.parked)
	<-drained
	g.Lock() // the drain's change has ended
	g.Unlock()
	h.mu.Lock()
	defer h.mu.Unlock()
	if got := strings.Join(h.calls, ","); !strings.HasPrefix(got, "begin,wait") || !strings.HasSuffix(got, "end") || strings.Count(got, "begin") != 1 || strings.Count(got, "end") != 1 {
		t.Errorf("hook calls %s", got)
	}
}
