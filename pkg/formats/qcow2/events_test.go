package qcow2

import (
	"context"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/blockd/blockd/pkg/block"
)

// eventLog is a filter that records the debug events fired into it, as
// a blkdebug node under qcow2 would see them.
type eventLog struct {
	block.Forward
	mu  sync.Mutex
	evs []string
}

func (l *eventLog) DebugEvent(ev string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.evs = append(l.evs, ev)
}

// take returns the events recorded so far and forgets them.
func (l *eventLog) take() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	evs := l.evs
	l.evs = nil
	return evs
}

type eventLogOptions struct {
	File block.NodeRef `json:"file"`
}

func init() {
	block.Register("qcow2test-events", block.KindFilter, func(ctx context.Context, o *block.Opener, opts *eventLogOptions) (block.Impl, error) {
		c, err := o.Attach(ctx, "file", opts.File, block.RoleFilter)
		if err != nil {
			return nil, err
		}
		return &eventLog{Forward: block.Forward{C: c}}, nil
	})
}

// subsequence reports whether want appears in got in order.
func subsequence(got []string, want ...string) bool {
	for _, g := range got {
		if len(want) > 0 && g == want[0] {
			want = want[1:]
		}
	}
	return len(want) == 0
}

// TestDebugEvents: qcow2 fires QEMU's events into its file at the
// matching steps.
func TestDebugEvents(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	base, top := filepath.Join(dir, "base.qcow2"), filepath.Join(dir, "top.qcow2")
	qemuImg(t, "create", "-q", "-f", "qcow2", base, "4M")
	qemuIO(t, base, "write -P 0x11 0 1M")
	qemuImg(t, "create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", top, "4M")

	g := newGraph()
	open := func() (*block.Root, *eventLog) {
		t.Helper()
		n := openRetry(t, g, `{"driver":"qcow2","node-name":"top","discard":"unmap","file":{"driver":"qcow2test-events","node-name":"log",`+
			`"file":{"driver":"file","filename":"`+top+`"}}}`)
		g.Lock()
		l := g.Lookup("log").Impl().(*eventLog)
		g.Unlock()
		return newRootT(t, n, block.PermConsistentRead|block.PermWrite), l
	}
	r, l := open()
	steps := []struct {
		name string
		do   func() error
		want []string // in this order, among others
		not  []string
	}{
		{"open", func() error { return nil }, []string{"reftable_load"}, nil},
		{"read from the backing file", func() error { return r.ReadAt(ctx, make([]byte, 4096), 0, 0) },
			[]string{"read_backing_aio"}, []string{"read_aio", "l2_load"}},
		// The first write allocates the data cluster, copies the rest of
		// it from the backing file (with the guest data: one write), then
		// links it into a new L2 table (not read back: no l2_load).
		{"first write", func() error { return r.WriteAt(ctx, []byte("x"), 100, 0) },
			[]string{"cluster_alloc", "refblock_alloc", "refblock_load", "cow_read", "read_backing_aio", "cow_write",
				"cluster_alloc", "l2_alloc_write", "l1_update"}, []string{"write_aio", "l2_alloc_cow_read", "l2_load"}},
		{"in place", func() error { return r.WriteAt(ctx, make([]byte, 512), 512, 0) }, []string{"write_aio"}, []string{"cluster_alloc", "cow_write"}},
		{"read data", func() error { return r.ReadAt(ctx, make([]byte, 512), 0, 0) }, []string{"read_aio"}, []string{"l2_load"}},
		// An allocation with nothing to copy writes the guest data alone.
		{"whole cluster", func() error { return r.WriteAt(ctx, make([]byte, 65536), 2<<20, 0) },
			[]string{"cluster_alloc", "write_aio"}, []string{"cow_read", "cow_write"}},
		{"flush", func() error { return r.Flush(ctx) },
			[]string{"flush_to_os", "flush_to_disk", "refblock_update_part", "l2_update"}, nil},
		{"discard", func() error { return r.Discard(ctx, 2<<20, 65536) }, nil, []string{"cluster_free"}},
		// The free is applied once the L2 change is on disk.
		{"flush after discard", func() error { return r.Flush(ctx) },
			[]string{"flush_to_os", "flush_to_disk", "l2_update", "cluster_free", "refblock_alloc", "refblock_load", "refblock_update_part"}, nil},
	}
	for _, s := range steps {
		if err := s.do(); err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		got := l.take()
		if !subsequence(got, s.want...) {
			t.Errorf("%s: events %v, want %v among them in order", s.name, got, s.want)
		}
		for _, ev := range s.not {
			if slices.Contains(got, ev) {
				t.Errorf("%s: events %v include %s", s.name, got, ev)
			}
		}
	}

	// A fresh open loads L2 tables from the file.
	closeImage(t, g, r, "top")
	r, l = open()
	defer closeImage(t, g, r, "top")
	l.take()
	if err := r.ReadAt(ctx, make([]byte, 512), 0, 0); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(l.take(), " "); got != "l2_load read_aio" {
		t.Errorf("first read after open: events %q, want %q", got, "l2_load read_aio")
	}
}
