package block_test

import (
	"context"
	"strings"
	"sync"
	"testing"

	"github.com/blockd/blockd/pkg/block"
	"github.com/blockd/blockd/pkg/block/blocktest"
)

// listener is a filter that records the debug events it receives.
type listener struct {
	block.Forward
	mu  sync.Mutex
	evs []string
}

func (l *listener) DebugEvent(ev string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.evs = append(l.evs, ev)
}

// take returns the events received so far and forgets them.
func (l *listener) take() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := strings.Join(l.evs, " ")
	l.evs = nil
	return s
}

func init() {
	block.Register("debugtest-listener", block.KindFilter, func(ctx context.Context, o *block.Opener, opts *blocktest.FilterOptions) (block.Impl, error) {
		c, err := o.Attach(ctx, "file", opts.File, block.RoleFilter)
		if err != nil {
			return nil, err
		}
		return &listener{Forward: block.Forward{C: c}}, nil
	})
}

func listenerOf(t *testing.T, g *block.Graph, name string) *listener {
	t.Helper()
	g.Lock()
	defer g.Unlock()
	return g.Lookup(name).Impl().(*listener)
}

// TestDebugEvents_Gate: the events the generic layer fires, on the node
// written and into the primary child of the node flushed.
func TestDebugEvents_Gate(t *testing.T) {
	ctx := context.Background()
	g := blocktest.NewGraph()
	blocktest.Open(t, g, `{"driver":"blocktest-mem","node-name":"mem","size":65536}`)
	blocktest.Open(t, g, `{"driver":"debugtest-listener","node-name":"lis","file":"mem","detect-zeroes":"on"}`)
	top := blocktest.Open(t, g, `{"driver":"blocktest-filter","node-name":"top","file":"lis"}`)
	r := blocktest.NewRoot(t, top, block.PermConsistentRead|block.PermWrite, block.PermAll)
	l := listenerOf(t, g, "lis")

	steps := []struct {
		name string
		do   func() error
		want string
	}{
		{"read", func() error { return r.ReadAt(ctx, make([]byte, 512), 0, 0) }, ""},
		{"write", func() error { return r.WriteAt(ctx, []byte{1, 2, 3}, 0, 0) }, "pwritev pwritev_done"},
		{"detect-zeroes", func() error { return r.WriteAt(ctx, make([]byte, 512), 0, 0) }, "pwritev_zero pwritev_done"},
		{"write-zeroes", func() error { return r.Zero(ctx, 0, 4096, 0) }, "pwritev_zero pwritev_done"},
		{"discard", func() error { return r.Discard(ctx, 0, 4096) }, ""},
		// The flush of top fires into its primary child (lis); lis's own
		// flush fires into mem, which does not listen.
		{"flush", func() error { return r.Flush(ctx) }, "flush_to_os flush_to_disk"},
	}
	for _, s := range steps {
		if err := s.do(); err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		if got := l.take(); got != s.want {
			t.Errorf("%s: events %q, want %q", s.name, got, s.want)
		}
	}
}

// TestDebugEvents_NoFlushAndReadOnly: cache.no-flush keeps flush_to_disk
// back; a read-only node fires nothing when flushed.
func TestDebugEvents_NoFlushAndReadOnly(t *testing.T) {
	ctx := context.Background()
	for _, tt := range []struct{ opts, want string }{
		{`"cache":{"no-flush":true}`, "flush_to_os"},
		{`"read-only":true`, ""},
	} {
		g := blocktest.NewGraph()
		blocktest.Open(t, g, `{"driver":"debugtest-listener","node-name":"lis","file":{"driver":"blocktest-mem","size":65536}}`)
		top := blocktest.Open(t, g, `{"driver":"blocktest-filter","node-name":"top","file":"lis",`+tt.opts+`}`)
		r := blocktest.NewRoot(t, top, block.PermConsistentRead, block.PermAll)
		if err := r.Flush(ctx); err != nil {
			t.Fatal(err)
		}
		if got := listenerOf(t, g, "lis").take(); got != tt.want {
			t.Errorf("%s: events %q, want %q", tt.opts, got, tt.want)
		}
	}
}

// TestDebugEvent_OnlyTheChildsNode: an event fired into a child reaches
// that child's node and no node below it (QEMU 7.2: qcow2's l2_load does
// not reach a blkdebug node under a raw format).
func TestDebugEvent_OnlyTheChildsNode(t *testing.T) {
	g := blocktest.NewGraph()
	blocktest.Open(t, g, `{"driver":"debugtest-listener","node-name":"lis","file":{"driver":"blocktest-mem","size":65536}}`)
	top := blocktest.Open(t, g, `{"driver":"blocktest-filter","node-name":"top","file":"lis"}`)
	l := listenerOf(t, g, "lis")
	block.DebugEvent(top.Children()[0], block.DebugL2Load)
	if got := l.take(); got != block.DebugL2Load {
		t.Errorf("fired into lis's edge: %q", got)
	}
	r := blocktest.NewRoot(t, top, block.PermConsistentRead, block.PermAll)
	r.Do(func(c *block.Child) error {
		block.DebugEvent(c, block.DebugL2Load) // into top, which does not listen
		return nil
	})
	block.DebugEvent(nil, block.DebugL2Load)
	if got := l.take(); got != "" {
		t.Errorf("an event fired above top reached lis: %q", got)
	}
}

// BenchmarkDebugEvent_NoListener is what every format request pays when
// no blkdebug node is below it: it must not allocate.
func BenchmarkDebugEvent_NoListener(b *testing.B) {
	g := blocktest.NewGraph()
	top := blocktest.Open(b, g, `{"driver":"blocktest-cow","node-name":"top","file":{"driver":"blocktest-mem","size":65536}}`)
	c := top.Children()[0]
	b.ReportAllocs()
	for b.Loop() {
		block.DebugEvent(c, block.DebugReadAIO)
	}
}
