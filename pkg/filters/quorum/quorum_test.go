package quorum_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/blockd/blockd/pkg/block"
	"github.com/blockd/blockd/pkg/block/blocktest"
	"github.com/blockd/blockd/pkg/filters/internal/filtertest"
	"github.com/blockd/blockd/pkg/filters/quorum"
)

func build(t testing.TB, g *block.Graph, mem string) (*block.Node, []*block.Node) {
	var below []*block.Node
	for i := range 3 {
		below = append(below, blocktest.Open(t, g, fmt.Sprintf(`{"node-name":"c%d",%s`, i, mem[1:])))
	}
	blocktest.Open(t, g, `{"driver":"blocktest-mem","node-name":"small","size":4096}`)
	flt := blocktest.Open(t, g, `{"driver":"quorum","node-name":"flt","discard":"unmap","vote-threshold":2,"children":["c0","c1","c2"]}`)
	return flt, below
}

func TestConformance(t *testing.T) {
	const mem = `{"driver":"blocktest-mem","size":65536}`
	filtertest.Run(t, filtertest.Config{
		Build: build,
		WantCaps: func(c block.Caps) block.Caps {
			c.Discard, c.FUA = false, false
			return c
		},
		DiscardIgnored: true,
		BadOptions: []filtertest.BadOption{
			filtertest.Bad("threshold above the children", `{"driver":"quorum","node-name":"q","vote-threshold":3,"children":["c0"]}`,
				"threshold may not exceed children count"),
			filtertest.Bad("threshold 0", `{"driver":"quorum","node-name":"q","vote-threshold":0,"children":["c0"]}`,
				"Parameter 'vote-threshold' expects a value >= 1"),
			filtertest.Bad("no children", `{"driver":"quorum","node-name":"q","vote-threshold":1,"children":[]}`,
				"Number of provided children must be 1 or more"),
			filtertest.Bad("blkverify with three children", `{"driver":"quorum","node-name":"q","vote-threshold":2,"blkverify":true,"children":["c0","c1","c2"]}`,
				"blkverify=on can only be set if there are exactly two files and vote-threshold is 2"),
			filtertest.Bad("blkverify with threshold 1", `{"driver":"quorum","node-name":"q","vote-threshold":1,"blkverify":true,"children":["c0","c1"]}`,
				"blkverify=on can only be set if there are exactly two files and vote-threshold is 2"),
			filtertest.Bad("rewrite with blkverify", `{"driver":"quorum","node-name":"q","vote-threshold":2,"blkverify":true,"rewrite-corrupted":true,"children":["c0","c1"]}`,
				"rewrite-corrupted=on cannot be used with blkverify=on"),
			filtertest.Bad("bad read pattern", `{"driver":"quorum","node-name":"q","vote-threshold":1,"read-pattern":"random","children":["c0"]}`,
				"Parameter 'read-pattern' does not accept value 'random'"),
			filtertest.Bad("missing child after an inline one", `{"driver":"quorum","node-name":"q","vote-threshold":1,"children":[`+mem+`,"nosuch"]}`,
				"Cannot find device='nosuch' nor node-name='nosuch'"),
			filtertest.Bad("children of different sizes", `{"driver":"quorum","node-name":"q","vote-threshold":1,"children":[`+mem+`,"small"]}`,
				"Could not refresh total sector count: Input/output error"),
		},
	})
}

// events records what the graph emits.
type events struct {
	mu   sync.Mutex
	list []string
}

func (e *events) Emit(name string, data any) {
	b, err := json.Marshal(data)
	if err != nil {
		panic(err)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	e.list = append(e.list, name+" "+string(b))
}

func (e *events) take() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	l := e.list
	e.list = nil
	return l
}

// broken is a protocol node whose reads, writes and flushes fail.
type broken struct {
	size  int64
	errno syscall.Errno
}

type brokenOptions struct {
	Size  int64 `json:"size"`
	Errno int   `json:"errno"`
}

func init() {
	block.Register("quorumtest-broken", block.KindProtocol, func(ctx context.Context, o *block.Opener, opts *brokenOptions) (block.Impl, error) {
		return &broken{size: opts.Size, errno: syscall.Errno(opts.Errno)}, nil
	})
}

func (b *broken) err() error                                    { return block.ErrnoError(b.errno) }
func (b *broken) Caps() block.Caps                              { return block.Caps{Zero: true, BlockStatus: true} }
func (b *broken) Size(ctx context.Context) (int64, error)       { return b.size, nil }
func (b *broken) Flush(ctx context.Context) error               { return b.err() }
func (b *broken) Discard(ctx context.Context, o, n int64) error { return nil }
func (b *broken) Close() error                                  { return nil }
func (b *broken) ReadAt(ctx context.Context, p []byte, off int64, f block.Flags) error {
	return b.err()
}
func (b *broken) WriteAt(ctx context.Context, p []byte, off int64, f block.Flags) error {
	return b.err()
}
func (b *broken) Zero(ctx context.Context, off, n int64, f block.Flags) error { return b.err() }
func (b *broken) BlockStatus(ctx context.Context, off, n int64) (block.Extent, error) {
	return block.Extent{}, b.err()
}
func (b *broken) Truncate(ctx context.Context, size int64, exact bool) error {
	return block.ErrNotSupported
}

const size = 65536

// setup opens the children (memory nodes, or broken ones for names
// starting with "b") and a quorum "q" over them, writes pattern 0x5a
// through the quorum, and captures events from then on.
func setup(t *testing.T, children []string, extra string) (*block.Graph, *block.Root, *events) {
	t.Helper()
	g := blocktest.NewGraph()
	for _, c := range children {
		if strings.HasPrefix(c, "b") {
			blocktest.Open(t, g, fmt.Sprintf(`{"driver":"quorumtest-broken","node-name":%q,"size":%d,"errno":5}`, c, size))
		} else {
			blocktest.Open(t, g, fmt.Sprintf(`{"driver":"blocktest-mem","node-name":%q,"size":%d}`, c, size))
		}
	}
	refs, _ := json.Marshal(children)
	q := blocktest.Open(t, g, fmt.Sprintf(`{"driver":"quorum","node-name":"q","children":%s%s}`, refs, extra))
	r := blocktest.NewRoot(t, q, block.PermConsistentRead|block.PermWrite, block.PermAll)
	ev := &events{}
	// Only memory children get the pattern: writes to broken ones fail.
	for _, c := range children {
		if !strings.HasPrefix(c, "b") {
			corrupt(t, g, c, 0, bytes.Repeat([]byte{0x5a}, size))
		}
	}
	g.SetEmitter(ev)
	return g, r, ev
}

// corrupt writes p into child name behind the quorum's back.
func corrupt(t *testing.T, g *block.Graph, name string, off int64, p []byte) {
	t.Helper()
	g.Lock()
	n := g.Lookup(name)
	g.Unlock()
	if err := n.Impl().WriteAt(context.Background(), p, off, 0); err != nil {
		t.Fatal(err)
	}
}

// content reads child name behind the quorum's back.
func content(t *testing.T, g *block.Graph, name string, off, n int64) []byte {
	t.Helper()
	g.Lock()
	node := g.Lookup(name)
	g.Unlock()
	p := make([]byte, n)
	if err := node.Impl().ReadAt(context.Background(), p, off, 0); err != nil {
		t.Fatal(err)
	}
	return p
}

func pattern(b byte, n int) []byte { return bytes.Repeat([]byte{b}, n) }

func TestVote(t *testing.T) {
	type corruption struct {
		child string
		off   int64
		b     byte
		n     int
	}
	tests := []struct {
		name     string
		children []string
		extra    string
		corrupt  []corruption
		off, n   int64
		want     []byte // nil: the read fails with EIO
		events   []string
		repaired []string // children whose content is the winner's afterwards
	}{
		{"all agree", []string{"c0", "c1", "c2"}, `,"vote-threshold":2`, nil, 0, 4096, pattern(0x5a, 4096), nil, nil},
		{"one corrupted", []string{"c0", "c1", "c2"}, `,"vote-threshold":2`,
			[]corruption{{"c1", 4096, 0xee, 512}}, 4096, 8192, pattern(0x5a, 8192),
			[]string{`QUORUM_REPORT_BAD {"type":"read","node-name":"c1","sector-num":8,"sectors-count":16}`}, nil},
		{"unaligned read reports whole sectors", []string{"c0", "c1", "c2"}, `,"vote-threshold":2`,
			[]corruption{{"c2", 1000, 0xee, 1}}, 1000, 100, pattern(0x5a, 100),
			[]string{`QUORUM_REPORT_BAD {"type":"read","node-name":"c2","sector-num":1,"sectors-count":2}`}, nil},
		{"rewrite-corrupted repairs", []string{"c0", "c1", "c2"}, `,"vote-threshold":2,"rewrite-corrupted":true`,
			[]corruption{{"c0", 0, 0xee, 4096}}, 0, 4096, pattern(0x5a, 4096),
			[]string{`QUORUM_REPORT_BAD {"type":"read","node-name":"c0","sector-num":0,"sectors-count":8}`}, []string{"c0"}},
		{"two corrupted differently", []string{"c0", "c1", "c2"}, `,"vote-threshold":2`,
			[]corruption{{"c1", 0, 0xee, 512}, {"c2", 0, 0xdd, 512}}, 0, 4096, nil,
			[]string{`QUORUM_FAILURE {"reference":"q","sector-num":0,"sectors-count":8}`}, nil},
		{"two corrupted the same way outvote the third", []string{"c0", "c1", "c2"}, `,"vote-threshold":2`,
			[]corruption{{"c1", 0, 0xee, 4096}, {"c2", 0, 0xee, 4096}}, 0, 4096, pattern(0xee, 4096),
			[]string{`QUORUM_REPORT_BAD {"type":"read","node-name":"c0","sector-num":0,"sectors-count":8}`}, nil},
		{"threshold 1 takes the largest group", []string{"c0", "c1", "c2"}, `,"vote-threshold":1`,
			[]corruption{{"c1", 0, 0xee, 512}, {"c2", 0, 0xdd, 512}}, 0, 512, nil,
			[]string{
				`QUORUM_REPORT_BAD {"type":"read","node-name":"c1","sector-num":0,"sectors-count":1}`,
				`QUORUM_REPORT_BAD {"type":"read","node-name":"c0","sector-num":0,"sectors-count":1}`,
			}, nil},
		{"a failing child", []string{"c0", "b1", "c2"}, `,"vote-threshold":2`, nil, 0, 4096, pattern(0x5a, 4096),
			[]string{`QUORUM_REPORT_BAD {"type":"read","error":"Input/output error","node-name":"b1","sector-num":0,"sectors-count":8}`}, nil},
		{"too many failing children", []string{"b0", "b1", "c2"}, `,"vote-threshold":2`, nil, 0, 4096, nil,
			[]string{
				`QUORUM_REPORT_BAD {"type":"read","error":"Input/output error","node-name":"b0","sector-num":0,"sectors-count":8}`,
				`QUORUM_REPORT_BAD {"type":"read","error":"Input/output error","node-name":"b1","sector-num":0,"sectors-count":8}`,
				`QUORUM_FAILURE {"reference":"q","sector-num":0,"sectors-count":8}`,
			}, nil},
		{"fifo reads the first child only", []string{"c0", "c1"}, `,"vote-threshold":1,"read-pattern":"fifo"`,
			[]corruption{{"c1", 0, 0xee, 4096}}, 0, 4096, pattern(0x5a, 4096), nil, nil},
		{"fifo falls back", []string{"b0", "c1"}, `,"vote-threshold":1,"read-pattern":"fifo"`, nil, 0, 4096, pattern(0x5a, 4096),
			[]string{`QUORUM_REPORT_BAD {"type":"read","error":"Input/output error","node-name":"b0","sector-num":0,"sectors-count":8}`}, nil},
		{"fifo ignores rewrite-corrupted", []string{"c0", "c1"}, `,"vote-threshold":1,"read-pattern":"fifo","rewrite-corrupted":true,"blkverify":true`,
			[]corruption{{"c1", 0, 0xee, 4096}}, 0, 4096, pattern(0x5a, 4096), nil, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g, r, ev := setup(t, tt.children, tt.extra)
			for _, c := range tt.corrupt {
				corrupt(t, g, c.child, c.off, pattern(c.b, c.n))
			}
			got := make([]byte, tt.n)
			err := r.ReadAt(context.Background(), got, tt.off, 0)
			switch {
			case tt.want == nil && tt.name == "threshold 1 takes the largest group":
				// Three versions of one vote each: QEMU picks the one it
				// saw last, here c2's.
				if err != nil || got[0] != 0xdd {
					t.Fatalf("read: %v, first byte %#x", err, got[0])
				}
			case tt.want == nil:
				if !errors.Is(err, syscall.EIO) || err.Error() != "Input/output error" {
					t.Fatalf("read: %v, want EIO", err)
				}
			case err != nil:
				t.Fatalf("read: %v", err)
			case !bytes.Equal(got, tt.want):
				t.Fatalf("read returned %#x..., want %#x...", got[0], tt.want[0])
			}
			if got := ev.take(); strings.Join(got, "\n") != strings.Join(tt.events, "\n") {
				t.Errorf("events:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(tt.events, "\n"))
			}
			for _, c := range tt.repaired {
				if !bytes.Equal(content(t, g, c, tt.off, tt.n), tt.want) {
					t.Errorf("%s not repaired", c)
				}
			}
			if tt.repaired != nil {
				// Repaired: the next read agrees without events.
				if err := r.ReadAt(context.Background(), got, tt.off, 0); err != nil {
					t.Fatal(err)
				}
				if e := ev.take(); len(e) != 0 {
					t.Errorf("events after the repair: %v", e)
				}
			}
		})
	}
}

func TestBlkverify(t *testing.T) {
	g, r, _ := setup(t, []string{"c0", "c1"}, `,"vote-threshold":2,"blkverify":true`)
	got := make([]byte, 4096)
	if err := r.ReadAt(context.Background(), got, 0, 0); err != nil {
		t.Fatal(err)
	}
	corrupt(t, g, "c1", 100, []byte{1})
	err := r.ReadAt(context.Background(), got, 0, 0)
	if !errors.Is(err, syscall.EIO) || !strings.Contains(err.Error(), "quorum: offset=0 bytes=4096 contents mismatch at offset 100") {
		t.Fatalf("read of differing children: %v", err)
	}
}

func TestWriteAndFlush(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name      string
		children  []string
		threshold int
		do        func(r *block.Root) error
		fails     bool
		events    []string
	}{
		{"write, one child failing", []string{"c0", "b1", "c2"}, 2,
			func(r *block.Root) error { return r.WriteAt(ctx, pattern(1, 1024), 512, 0) }, false,
			[]string{`QUORUM_REPORT_BAD {"type":"write","error":"Input/output error","node-name":"b1","sector-num":1,"sectors-count":2}`}},
		{"write, too many failing", []string{"b0", "b1", "c2"}, 2,
			func(r *block.Root) error { return r.WriteAt(ctx, pattern(1, 1024), 512, 0) }, true,
			[]string{
				`QUORUM_REPORT_BAD {"type":"write","error":"Input/output error","node-name":"b0","sector-num":1,"sectors-count":2}`,
				`QUORUM_REPORT_BAD {"type":"write","error":"Input/output error","node-name":"b1","sector-num":1,"sectors-count":2}`,
				`QUORUM_FAILURE {"reference":"q","sector-num":1,"sectors-count":2}`,
			}},
		{"write zeroes, one child failing", []string{"c0", "b1", "c2"}, 2,
			func(r *block.Root) error { return r.Zero(ctx, 0, 4096, 0) }, false,
			[]string{`QUORUM_REPORT_BAD {"type":"write","error":"Input/output error","node-name":"b1","sector-num":0,"sectors-count":8}`}},
		{"flush, one child failing", []string{"c0", "b1", "c2"}, 2,
			func(r *block.Root) error { return r.Flush(ctx) }, false,
			[]string{`QUORUM_REPORT_BAD {"type":"flush","error":"Input/output error","node-name":"b1","sector-num":0,"sectors-count":0}`}},
		{"flush, too many failing", []string{"b0", "b1", "c2"}, 2,
			func(r *block.Root) error { return r.Flush(ctx) }, true,
			[]string{
				`QUORUM_REPORT_BAD {"type":"flush","error":"Input/output error","node-name":"b0","sector-num":0,"sectors-count":0}`,
				`QUORUM_REPORT_BAD {"type":"flush","error":"Input/output error","node-name":"b1","sector-num":0,"sectors-count":0}`,
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g, r, ev := setup(t, tt.children, fmt.Sprintf(`,"vote-threshold":%d`, tt.threshold))
			err := tt.do(r)
			if tt.fails != (err != nil) {
				t.Fatalf("error %v, want failure %v", err, tt.fails)
			}
			if tt.fails && !errors.Is(err, syscall.EIO) {
				t.Errorf("error %v, want EIO", err)
			}
			if got := ev.take(); strings.Join(got, "\n") != strings.Join(tt.events, "\n") {
				t.Errorf("events:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(tt.events, "\n"))
			}
			if !tt.fails && tt.name == "write, one child failing" {
				for _, c := range []string{"c0", "c2"} {
					if !bytes.Equal(content(t, g, c, 512, 1024), pattern(1, 1024)) {
						t.Errorf("%s does not hold the write", c)
					}
				}
			}
		})
	}
}

func TestBlockStatus(t *testing.T) {
	ctx := context.Background()
	g, r, _ := setup(t, []string{"c0", "c1", "c2"}, `,"vote-threshold":2`)
	// Zero 8K-16K everywhere, then only in c1 at 0-4K.
	if err := r.Zero(ctx, 8192, 8192, 0); err != nil {
		t.Fatal(err)
	}
	g.Lock()
	c1 := g.Lookup("c1")
	q := g.Lookup("q")
	g.Unlock()
	if err := c1.Impl().Zero(ctx, 0, 4096, 0); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		off  int64
		zero bool
		len  int64
	}{
		{0, false, 8192},   // c1 says zero, the others data: data
		{8192, true, 8192}, // zero everywhere
		{4096, false, 4096},
	} {
		st, err := block.StatusAbove(ctx, q, nil, tt.off, 16384-tt.off)
		if err != nil {
			t.Fatal(err)
		}
		if st.Zero != tt.zero || st.Data == tt.zero || st.Len != tt.len {
			t.Errorf("status at %d: %+v, want zero=%v len %d", tt.off, st, tt.zero, tt.len)
		}
	}
}

func TestPermissions(t *testing.T) {
	for _, tt := range []struct {
		extra, want string
	}{
		{"", "perm  shared write-unchanged,consistent-read"},
		{`,"rewrite-corrupted":true`, "perm write shared write-unchanged,consistent-read"},
	} {
		g := blocktest.NewGraph()
		for i := range 2 {
			blocktest.Open(t, g, fmt.Sprintf(`{"driver":"blocktest-mem","node-name":"c%d","size":4096}`, i))
		}
		q := blocktest.Open(t, g, `{"driver":"quorum","node-name":"q","vote-threshold":1,"children":["c0","c1"]`+tt.extra+`}`)
		for _, c := range q.Children() {
			p, s := c.Perm()
			if got := fmt.Sprintf("perm %v shared %v", p, s); got != tt.want {
				t.Errorf("%s%s: %s, want %s", c.Name(), tt.extra, got, tt.want)
			}
		}
		if c := q.Children(); c[0].Name() != "children.0" || c[1].Name() != "children.1" || c[0].Role() != block.RoleData {
			t.Errorf("children %s %s role %v", c[0].Name(), c[1].Name(), c[0].Role())
		}
		if qq, ok := quorum.Of(q); !ok || qq.Threshold() != 1 || qq.ReadPattern() != quorum.ReadQuorum || len(qq.Children()) != 2 {
			t.Errorf("Of: %v %v", qq, ok)
		}
	}
}
