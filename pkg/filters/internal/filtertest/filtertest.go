// Package filtertest is the conformance check every filter driver of
// pkg/filters passes: it is transparent over memory nodes (data and block
// status read through it equal what the same requests give on a plain
// node), it reports caps derived from its child, a drain lets go the
// requests it holds, and options it refuses fail with qsd's words without
// changing the graph.
package filtertest

import (
	"bytes"
	"context"
	"fmt"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/blockd/blockd/pkg/block"
	"github.com/blockd/blockd/pkg/block/blocktest"
)

// Size is the size of the memory nodes the checks build filters over.
const Size = 1 << 20

// Config describes a filter driver to check.
type Config struct {
	// Build adds a monitor-owned filter node named "flt", opened with
	// "discard": "unmap", to g over new nodes opened from mem (the JSON
	// options of a blocktest-mem node of Size bytes, discard=unmap). It
	// returns the filter and the nodes that hold its data: one for a 1:1
	// filter, every child for quorum.
	Build func(t testing.TB, g *block.Graph, mem string) (flt *block.Node, below []*block.Node)
	// WantCaps gives the caps the filter must report for a child with
	// caps c; nil means c itself.
	WantCaps func(c block.Caps) block.Caps
	// DiscardIgnored says the filter does not pass discards on (quorum).
	DiscardIgnored bool
	// WidensWrites says the filter's request alignment makes the generic
	// layer write partly covered blocks whole (compress): the data must
	// agree, the allocation status of those blocks may not.
	WidensWrites bool
	// BadOptions are node options that must fail to open in a graph that
	// Build set up, each with exactly the message given.
	BadOptions []BadOption
	// Hold, if set, makes the filter hold the requests that come next and
	// returns a function counting the requests it holds.
	Hold func(t testing.TB, flt *block.Node) (held func() int)
}

// BadOption is one refused set of options.
type BadOption struct {
	Name    string
	Options string
	Err     string
}

// Bad is a BadOption.
func Bad(name, options, err string) BadOption {
	return BadOption{Name: name, Options: options, Err: err}
}

// Run runs every check.
func Run(t *testing.T, cfg Config) {
	t.Run("Transparency", func(t *testing.T) { testTransparency(t, cfg) })
	t.Run("Caps", func(t *testing.T) { testCaps(t, cfg) })
	t.Run("Drain", func(t *testing.T) { testDrain(t, cfg) })
	t.Run("BadOptions", func(t *testing.T) { testBadOptions(t, cfg) })
}

// MemOptions are the options of the memory nodes under the filter.
func MemOptions(extra string) string {
	return fmt.Sprintf(`{"driver":"blocktest-mem","size":%d,"discard":"unmap"%s}`, Size, extra)
}

func fill(p []byte, seed byte) []byte {
	for i := range p {
		p[i] = seed + byte(i*7)
	}
	return p
}

type op struct {
	name string
	do   func(ctx context.Context, r *block.Root) error
	// discard is skipped on the reference when the filter ignores it.
	discard bool
}

func ops() []op {
	w := func(off, n int64, seed byte) func(ctx context.Context, r *block.Root) error {
		return func(ctx context.Context, r *block.Root) error {
			return r.WriteAt(ctx, fill(make([]byte, n), seed), off, 0)
		}
	}
	return []op{
		{name: "write aligned", do: w(0, 65536, 1)},
		{name: "write unaligned", do: w(100001, 70000, 2)},
		{name: "write FUA", do: func(ctx context.Context, r *block.Root) error {
			return r.WriteAt(ctx, fill(make([]byte, 8192), 3), 300000, block.FlagFUA)
		}},
		{name: "zero", do: func(ctx context.Context, r *block.Root) error { return r.Zero(ctx, 4096, 8192, 0) }},
		{name: "zero may-unmap", do: func(ctx context.Context, r *block.Root) error {
			return r.Zero(ctx, 110000, 20000, block.FlagMayUnmap)
		}},
		{name: "zero no-fallback", do: func(ctx context.Context, r *block.Root) error {
			return r.Zero(ctx, 300000, 4096, block.FlagNoFallback)
		}},
		{name: "discard", discard: true, do: func(ctx context.Context, r *block.Root) error {
			return r.Discard(ctx, 32768, 16384)
		}},
		{name: "write tail", do: w(Size-5000, 5000, 4)},
		{name: "flush", do: func(ctx context.Context, r *block.Root) error { return r.Flush(ctx) }},
	}
}

// sectors classifies each 512-byte sector of n, as seen from n down its
// chain: 'd' data, 'z' zero.
func sectors(t testing.TB, n *block.Node) []byte {
	t.Helper()
	ctx := context.Background()
	out := make([]byte, 0, Size/512)
	for off := int64(0); off < Size; {
		st, err := block.StatusAbove(ctx, n, nil, off, Size-off)
		if err != nil {
			t.Fatalf("status of %s at %d: %v", n.Name(), off, err)
		}
		c := byte('d')
		if st.Zero {
			c = 'z'
		}
		for k := int64(0); k < st.Len; k += 512 {
			out = append(out, c)
		}
		off += st.Len
	}
	return out
}

func testTransparency(t *testing.T, cfg Config) {
	ctx := context.Background()
	g := blocktest.NewGraph()
	ref := blocktest.Open(t, g, `{"driver":"blocktest-mem","node-name":"ref","size":1048576,"discard":"unmap"}`)
	flt, below := cfg.Build(t, g, MemOptions(""))
	rw := block.PermConsistentRead | block.PermWrite
	rf := blocktest.NewRoot(t, flt, rw, block.PermAll)
	rr := blocktest.NewRoot(t, ref, rw, block.PermAll)
	for _, o := range ops() {
		if err := o.do(ctx, rf); err != nil {
			t.Fatalf("%s through the filter: %v", o.name, err)
		}
		if !(o.discard && cfg.DiscardIgnored) {
			if err := o.do(ctx, rr); err != nil {
				t.Fatalf("%s on the reference: %v", o.name, err)
			}
		}
		got, want := make([]byte, Size), make([]byte, Size)
		if err := rf.ReadAt(ctx, got, 0, 0); err != nil {
			t.Fatalf("after %s: read through the filter: %v", o.name, err)
		}
		if err := rr.ReadAt(ctx, want, 0, 0); err != nil {
			t.Fatalf("after %s: read of the reference: %v", o.name, err)
		}
		if !bytes.Equal(got, want) {
			i := 0
			for got[i] == want[i] {
				i++
			}
			t.Fatalf("after %s: data differs from byte %d: %#x, want %#x", o.name, i, got[i], want[i])
		}
		ws := sectors(t, ref)
		for _, n := range append([]*block.Node{flt}, below...) {
			if cfg.WidensWrites {
				break
			}
			if gs := sectors(t, n); !bytes.Equal(gs, ws) {
				i := 0
				for gs[i] == ws[i] {
					i++
				}
				t.Fatalf("after %s: status of %s differs from sector %d: %q, want %q", o.name, n.Name(), i, gs[i], ws[i])
			}
		}
		// The filter's own block status must answer too.
		if err := rf.Do(func(c *block.Child) error {
			_, err := c.BlockStatus(ctx, 0, Size)
			return err
		}); err != nil {
			t.Fatalf("after %s: block status through the filter: %v", o.name, err)
		}
	}
	if got, want := flt.Size(), ref.Size(); got != want {
		t.Errorf("size %d, want %d", got, want)
	}
}

func testCaps(t *testing.T, cfg Config) {
	ctx := context.Background()
	g := blocktest.NewGraph()
	flt, below := cfg.Build(t, g, MemOptions(`,"align":4096,"max-transfer":65536`))
	want := below[0].Caps()
	if cfg.WantCaps != nil {
		want = cfg.WantCaps(want)
	}
	if got := flt.Caps(); got != want {
		t.Errorf("caps %+v, want %+v", got, want)
	}
	// Unaligned and oversized requests through the filter must reach the
	// aligned node below aligned and split (blocktest-mem panics if not).
	r := blocktest.NewRoot(t, flt, block.PermConsistentRead|block.PermWrite, block.PermAll)
	data := fill(make([]byte, 200000), 9)
	if err := r.WriteAt(ctx, data, 1000, 0); err != nil {
		t.Fatalf("unaligned write: %v", err)
	}
	got := make([]byte, 200100)
	if err := r.ReadAt(ctx, got, 950, 0); err != nil {
		t.Fatalf("unaligned read: %v", err)
	}
	if !bytes.Equal(got[50:200050], data) || !block.IsZero(got[:50]) || !block.IsZero(got[200050:]) {
		t.Errorf("unaligned read back differs")
	}
}

// waitFor spins until cond holds, failing the test after a deadline.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		runtime.Gosched()
	}
}

// within fails the test if ch does not close soon.
func within(t testing.TB, what string, ch <-chan struct{}) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(10 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
	}
}

func testDrain(t *testing.T, cfg Config) {
	ctx := context.Background()
	g := blocktest.NewGraph()
	flt, _ := cfg.Build(t, g, MemOptions(""))
	r := blocktest.NewRoot(t, flt, block.PermConsistentRead|block.PermWrite, block.PermAll)
	const k = 4
	var held func() int
	if cfg.Hold != nil {
		held = cfg.Hold(t, flt)
	}
	var wg sync.WaitGroup
	errs := make([]error, k)
	for i := range k {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if i%2 == 0 {
				errs[i] = r.ReadAt(ctx, make([]byte, 4096), int64(i)*4096, 0)
			} else {
				errs[i] = r.WriteAt(ctx, make([]byte, 4096), int64(i)*4096, 0)
			}
		}()
	}
	if held != nil {
		waitFor(t, "the filter to hold the requests", func() bool { return held() == k })
	}
	drained := make(chan struct{})
	var tx *block.Txn
	go func() {
		tx = g.Begin()
		tx.Drain(flt)
		close(drained)
	}()
	within(t, "the drain", drained)
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	if held != nil {
		// Every request was inside the filter before the drain began:
		// the drain must have let them all go.
		within(t, "the held requests", done)
		if n := held(); n != 0 {
			t.Errorf("%d requests still held while drained", n)
		}
	}
	tx.Abort()
	// Requests that came after the drain began waited for its end.
	within(t, "the requests", done)
	for i, err := range errs {
		if err != nil {
			t.Errorf("request %d: %v", i, err)
		}
	}
}

// snapshot describes the graph for before/after comparisons.
func snapshot(g *block.Graph) []string {
	g.Lock()
	defer g.Unlock()
	var s []string
	for _, n := range g.Nodes() {
		var ps []string
		for _, c := range n.Parents() {
			_, name := c.Parent().ParentInfo()
			ps = append(ps, name+"/"+c.Name())
		}
		slices.Sort(ps)
		s = append(s, fmt.Sprintf("%s%v", n.Name(), ps))
	}
	slices.Sort(s)
	return s
}

func testBadOptions(t *testing.T, cfg Config) {
	g := blocktest.NewGraph()
	cfg.Build(t, g, MemOptions(""))
	for _, bo := range cfg.BadOptions {
		t.Run(bo.Name, func(t *testing.T) {
			before := snapshot(g)
			_, err := blocktest.TryOpen(g, bo.Options)
			if err == nil {
				t.Fatalf("open %s succeeded, want %q", bo.Options, bo.Err)
			}
			if err.Error() != bo.Err {
				t.Errorf("error %q, want %q", err.Error(), bo.Err)
			}
			if after := snapshot(g); !slices.Equal(before, after) {
				t.Errorf("graph changed by a failed open:\n before %v\n after  %v", before, after)
			}
		})
	}
}
