package blkdebug_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/blockd/blockd/pkg/block"
	"github.com/blockd/blockd/pkg/block/blocktest"
	"github.com/blockd/blockd/pkg/filters/blkdebug"
	"github.com/blockd/blockd/pkg/filters/internal/filtertest"
	_ "github.com/blockd/blockd/pkg/formats/raw"
)

func build(t testing.TB, g *block.Graph, mem string) (*block.Node, []*block.Node) {
	base := blocktest.Open(t, g, fmt.Sprintf(`{"node-name":"base",%s`, mem[1:]))
	flt := blocktest.Open(t, g, `{"driver":"blkdebug","node-name":"flt","discard":"unmap","image":"base"}`)
	return flt, []*block.Node{base}
}

func TestConformance(t *testing.T) {
	const inline = `{"driver":"blkdebug","node-name":"d1","image":{"driver":"blocktest-mem","size":65536},`
	filtertest.Run(t, filtertest.Config{
		Build: build,
		BadOptions: []filtertest.BadOption{
			filtertest.Bad("unknown event", inline+`"inject-error":[{"event":"bogus"}]}`, "Parameter 'event' does not accept value 'bogus'"),
			filtertest.Bad("unknown set-state event", inline+`"set-state":[{"event":"bogus","new_state":2}]}`, "Parameter 'event' does not accept value 'bogus'"),
			filtertest.Bad("unknown iotype", inline+`"inject-error":[{"event":"read_aio","iotype":"bogus"}]}`, "Parameter 'iotype' does not accept value 'bogus'"),
			filtertest.Bad("unknown permission", inline+`"take-child-perms":["bogus"]}`, "Parameter 'null' does not accept value 'bogus'"),
			filtertest.Bad("align not a power of two", inline+`"align":3}`, "Cannot meet constraints with align 3"),
			filtertest.Bad("align too big", inline+`"align":2147483648}`, "Cannot meet constraints with align 2147483648"),
			filtertest.Bad("negative align", inline+`"align":-1}`, "Parameter 'align' expects a non-negative number below 2^64"),
			filtertest.Bad("max-transfer unaligned", inline+`"align":512,"max-transfer":1000}`, "Cannot meet constraints with max-transfer 1000"),
			filtertest.Bad("max-transfer unaligned to the child", `{"driver":"blkdebug","node-name":"d1","image":{"driver":"blocktest-mem","size":65536,"align":4096},"max-transfer":512}`,
				"Cannot meet constraints with max-transfer 512"),
			filtertest.Bad("opt-write-zero unaligned", inline+`"align":4096,"opt-write-zero":512}`, "Cannot meet constraints with opt-write-zero 512"),
			filtertest.Bad("max-write-zero unaligned", inline+`"opt-write-zero":4096,"max-write-zero":6144}`, "Cannot meet constraints with max-write-zero 6144"),
			filtertest.Bad("opt-discard unaligned", inline+`"align":4096,"opt-discard":100}`, "Cannot meet constraints with opt-discard 100"),
			filtertest.Bad("max-discard unaligned", inline+`"opt-discard":4096,"max-discard":6144}`, "Cannot meet constraints with max-discard 6144"),
			filtertest.Bad("no config file", inline+`"config":"/nonexistent/blkdebug.conf"}`, "Could not read blkdebug config file: No such file or directory"),
			filtertest.Bad("no such image", `{"driver":"blkdebug","node-name":"d1","image":"nosuch"}`, "Cannot find device='nosuch' nor node-name='nosuch'"),
		},
	})
}

// env is a raw format "top" over a blkdebug node "dbg" over a memory
// node "base": raw fires read_aio and write_aio into dbg, as QEMU's raw
// does, and the generic layer the write and flush events.
type env struct {
	dbg  *block.Node
	r    *block.Root  // on top; reads and writes
	edge *block.Child // top -> dbg
}

// node opens the env with the given extra options for dbg.
func node(t *testing.T, extra string) env {
	t.Helper()
	g := blocktest.NewGraph()
	blocktest.Open(t, g, `{"driver":"blocktest-mem","node-name":"base","size":1048576,"discard":"unmap"}`)
	n := blocktest.Open(t, g, `{"driver":"blkdebug","node-name":"dbg","discard":"unmap","image":"base"`+extra+`}`)
	top := blocktest.Open(t, g, `{"driver":"raw","node-name":"top","discard":"unmap","file":"dbg"}`)
	return env{dbg: n, r: blocktest.NewRoot(t, top, block.PermConsistentRead|block.PermWrite, block.PermAll), edge: top.Children()[0]}
}

// errnoOf is the errno of err, or 0.
func errnoOf(err error) syscall.Errno {
	var e syscall.Errno
	if errors.As(err, &e) {
		return e
	}
	return 0
}

type request struct {
	kind     string // read, write, zero, discard, flush, status
	off, len int64
}

func (r request) do(ctx context.Context, e env) error {
	root := e.r
	switch r.kind {
	case "read":
		return root.ReadAt(ctx, make([]byte, r.len), r.off, 0)
	case "write":
		return root.WriteAt(ctx, make([]byte, r.len), r.off, 0)
	case "zero":
		return root.Zero(ctx, r.off, r.len, 0)
	case "discard":
		return root.Discard(ctx, r.off, r.len)
	case "flush":
		return root.Flush(ctx)
	case "status":
		// raw answers block status without asking its file: ask dbg.
		_, err := e.edge.BlockStatus(ctx, r.off, r.len)
		return err
	}
	panic("unknown request kind " + r.kind)
}

func TestInjection(t *testing.T) {
	rd := func(off, n int64) request { return request{"read", off, n} }
	wr := func(off, n int64) request { return request{"write", off, n} }
	tests := []struct {
		name  string
		opts  string
		reqs  []request
		want  []syscall.Errno // per request; 0: success
		state int64           // at the end
	}{
		{"nothing armed before the event", `,"inject-error":[{"event":"write_aio"}]`,
			[]request{rd(0, 512), wr(0, 512), rd(0, 512)}, []syscall.Errno{0, syscall.EIO, syscall.EIO}, 1},
		{"once", `,"inject-error":[{"event":"read_aio","once":true}]`,
			[]request{rd(0, 512), rd(0, 512)}, []syscall.Errno{syscall.EIO, 0}, 1},
		{"permanent", `,"inject-error":[{"event":"read_aio","iotype":"read"}]`,
			[]request{rd(0, 512), rd(4096, 512), wr(0, 512)}, []syscall.Errno{syscall.EIO, syscall.EIO, 0}, 1},
		{"errno", `,"inject-error":[{"event":"read_aio","errno":28}]`,
			[]request{rd(0, 512)}, []syscall.Errno{syscall.ENOSPC}, 1},
		{"errno 0 lets requests pass", `,"inject-error":[{"event":"read_aio","errno":0},{"event":"read_aio"}]`,
			[]request{rd(0, 512)}, []syscall.Errno{0}, 1},
		// Transcript (h): sector 1024 is byte 512 KiB; only requests that
		// contain that byte fail.
		{"sector", `,"inject-error":[{"event":"read_aio","sector":1024,"once":true}]`,
			[]request{rd(0, 4096), rd(524288+512, 4096), rd(520192, 4096), rd(524288, 512), rd(520192, 8192)},
			[]syscall.Errno{0, 0, 0, syscall.EIO, 0}, 1},
		{"sector, permanent", `,"inject-error":[{"event":"read_aio","sector":1024}]`,
			[]request{rd(520192, 8192), rd(524288, 4096), rd(0, 4096)},
			[]syscall.Errno{syscall.EIO, syscall.EIO, 0}, 1},
		{"iotype write", `,"inject-error":[{"event":"none","iotype":"write"}]`,
			[]request{rd(0, 512), wr(0, 512), {"zero", 0, 512}}, []syscall.Errno{0, syscall.EIO, 0}, 1},
		{"iotype write-zeroes", `,"inject-error":[{"event":"none","iotype":"write-zeroes"}]`,
			[]request{wr(0, 512), {"zero", 0, 65536}}, []syscall.Errno{0, syscall.EIO}, 1},
		{"iotype discard", `,"inject-error":[{"event":"none","iotype":"discard","errno":1}]`,
			[]request{{"zero", 0, 512}, {"discard", 0, 65536}}, []syscall.Errno{0, syscall.EPERM}, 1},
		{"iotype flush", `,"inject-error":[{"event":"flush_to_disk","iotype":"flush"}]`,
			[]request{rd(0, 512), {"flush", 0, 0}}, []syscall.Errno{0, syscall.EIO}, 1},
		{"flush only without a sector", `,"inject-error":[{"event":"none","sector":0}]`,
			[]request{{"flush", 0, 0}, rd(0, 512)}, []syscall.Errno{0, syscall.EIO}, 1},
		{"block status only when asked for", `,"inject-error":[{"event":"none"}]`,
			[]request{{"status", 0, 4096}}, []syscall.Errno{0}, 1},
		{"iotype block-status", `,"inject-error":[{"event":"none","iotype":"block-status"}]`,
			[]request{rd(0, 512), {"status", 0, 4096}}, []syscall.Errno{0, syscall.EIO}, 1},
		{"immediately", `,"inject-error":[{"event":"read_aio","immediately":true}]`,
			[]request{rd(0, 512)}, []syscall.Errno{syscall.EIO}, 1},
		// The state machine: fail the third read of the node, once.
		{"third read", `,"set-state":[{"event":"read_aio","state":1,"new_state":2},{"event":"read_aio","state":2,"new_state":3}],` +
			`"inject-error":[{"event":"read_aio","state":3,"once":true}]`,
			[]request{rd(0, 512), rd(0, 512), rd(0, 512), rd(0, 512)}, []syscall.Errno{0, 0, syscall.EIO, 0}, 3},
		// The same with a sector, permanently: the third read of sector 8
		// and every one after it fail; other sectors still read.
		{"third read of a sector, permanently", `,"set-state":[{"event":"read_aio","state":1,"new_state":2},{"event":"read_aio","state":2,"new_state":3}],` +
			`"inject-error":[{"event":"read_aio","state":3,"sector":8,"errno":61}]`,
			[]request{rd(4096, 512), rd(4096, 512), rd(4096, 512), rd(4096, 512), rd(0, 4096), rd(4096, 4096)},
			[]syscall.Errno{0, 0, syscall.ENODATA, syscall.ENODATA, 0, syscall.ENODATA}, 3},
		// Writes move the state; reads then fail until a flush moves it on.
		{"states across kinds", `,"set-state":[{"event":"write_aio","new_state":2},{"event":"flush_to_disk","state":2,"new_state":3}],` +
			`"inject-error":[{"event":"read_aio","state":2,"iotype":"read"}]`,
			[]request{rd(0, 512), wr(0, 512), rd(0, 512), {"flush", 0, 0}, rd(0, 512)},
			[]syscall.Errno{0, 0, syscall.EIO, 0, syscall.EIO}, 3},
		{"first matching set-state wins", `,"set-state":[{"event":"read_aio","new_state":5},{"event":"read_aio","new_state":7}]`,
			[]request{rd(0, 512)}, []syscall.Errno{0}, 5},
		{"a later event with rules replaces the armed ones", `,"inject-error":[{"event":"none","iotype":"write"},{"event":"flush_to_disk","iotype":"read"}]`,
			[]request{wr(0, 512), {"flush", 0, 0}, wr(0, 512), rd(0, 512)}, []syscall.Errno{syscall.EIO, 0, 0, syscall.EIO}, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			e := node(t, tt.opts)
			for i, req := range tt.reqs {
				err := req.do(ctx, e)
				if got := errnoOf(err); got != tt.want[i] || (err != nil) != (tt.want[i] != 0) {
					t.Errorf("request %d (%s %d+%d): %v, want errno %d", i, req.kind, req.off, req.len, err, tt.want[i])
				}
			}
			f, _ := blkdebug.Of(e.dbg)
			if got := f.State(); got != tt.state {
				t.Errorf("state %d, want %d", got, tt.state)
			}
		})
	}
}

// TestOwnRequests: blkdebug fires no event for the requests it gets (in
// QEMU read_aio and write_aio come from the format above); only the
// generic layer's write events reach it, and a flush of the node fires
// into its child, not into it.
func TestOwnRequests(t *testing.T) {
	tests := []struct {
		rule string
		reqs []request
		want []syscall.Errno
	}{
		{`{"event":"read_aio"}`, []request{{"read", 0, 512}, {"write", 0, 512}}, []syscall.Errno{0, 0}},
		{`{"event":"write_aio"}`, []request{{"write", 0, 512}, {"read", 0, 512}}, []syscall.Errno{0, 0}},
		{`{"event":"pwritev","iotype":"write"}`, []request{{"read", 0, 512}, {"zero", 0, 512}, {"write", 0, 512}}, []syscall.Errno{0, 0, syscall.EIO}},
		{`{"event":"pwritev_zero","iotype":"write-zeroes"}`, []request{{"write", 0, 512}, {"zero", 0, 65536}}, []syscall.Errno{0, syscall.EIO}},
		{`{"event":"pwritev_done","iotype":"read"}`, []request{{"read", 0, 512}, {"write", 0, 512}, {"read", 0, 512}}, []syscall.Errno{0, 0, syscall.EIO}},
		{`{"event":"flush_to_disk"}`, []request{{"flush", 0, 0}, {"read", 0, 512}}, []syscall.Errno{0, 0}},
	}
	for _, tt := range tests {
		t.Run(tt.rule, func(t *testing.T) {
			ctx := context.Background()
			g := blocktest.NewGraph()
			n := blocktest.Open(t, g, `{"driver":"blkdebug","node-name":"dbg","image":{"driver":"blocktest-mem","size":1048576},"inject-error":[`+tt.rule+`]}`)
			e := env{dbg: n, r: blocktest.NewRoot(t, n, block.PermConsistentRead|block.PermWrite, block.PermAll)}
			for i, req := range tt.reqs {
				if got := errnoOf(req.do(ctx, e)); got != tt.want[i] {
					t.Errorf("request %d (%s): errno %d, want %d", i, req.kind, got, tt.want[i])
				}
			}
		})
	}
}

// TestDebugEvent: events fired into the node through block.DebugEvent
// arm its rules; names outside BlkdebugEvent change nothing.
func TestDebugEvent(t *testing.T) {
	ctx := context.Background()
	e := node(t, `,"inject-error":[{"event":"l2_load","iotype":"read","once":true}],"set-state":[{"event":"l2_load","new_state":2}]`)
	block.DebugEvent(e.edge, "bogus")
	if err := e.r.ReadAt(ctx, make([]byte, 512), 0, 0); err != nil {
		t.Fatalf("read before l2_load: %v", err)
	}
	block.DebugEvent(e.edge, block.DebugL2Load)
	if err := e.r.ReadAt(ctx, make([]byte, 512), 0, 0); !errors.Is(err, syscall.EIO) {
		t.Fatalf("read after l2_load: %v", err)
	}
	if f, _ := blkdebug.Of(e.dbg); f.State() != 2 {
		t.Errorf("state %d after l2_load", f.State())
	}
}

func TestErrorText(t *testing.T) {
	e := node(t, `,"inject-error":[{"event":"read_aio"}]`)
	err := e.r.ReadAt(context.Background(), make([]byte, 512), 0, 0)
	// compat(qsd-7.2): jobs report it as "Input/output error" (transcript h).
	if err == nil || err.Error() != "Input/output error" || !errors.Is(err, syscall.EIO) {
		t.Fatalf("error %v", err)
	}
}

func TestInjectAPI(t *testing.T) {
	ctx := context.Background()
	e := node(t, "")
	n, r := e.dbg, e.r
	if err := blkdebug.Inject(n, blkdebug.InjectErrorOptions{Event: "bogus"}); err == nil {
		t.Fatal("unknown event accepted")
	}
	errno := int64(syscall.ENOSPC)
	typ := blkdebug.IOWrite
	once := true
	if err := blkdebug.Inject(n, blkdebug.InjectErrorOptions{Event: blkdebug.EventWriteAIO, Errno: &errno, IOType: &typ, Once: &once}); err != nil {
		t.Fatal(err)
	}
	if err := r.ReadAt(ctx, make([]byte, 512), 0, 0); err != nil {
		t.Fatal(err)
	}
	if err := r.WriteAt(ctx, make([]byte, 512), 0, 0); !errors.Is(err, syscall.ENOSPC) || err.Error() != "No space left on device" {
		t.Fatalf("write: %v", err)
	}
	if err := r.WriteAt(ctx, make([]byte, 512), 0, 0); err != nil {
		t.Fatalf("second write: %v", err)
	}
	f, _ := blkdebug.Of(n)
	if f.Injected() != 1 {
		t.Errorf("injected %d", f.Injected())
	}
	// Fire plays a format driver's event.
	if err := f.SetState(blkdebug.SetStateOptions{Event: "l2_load", NewState: 9}); err != nil {
		t.Fatal(err)
	}
	if err := f.Fire("l2_load"); err != nil {
		t.Fatal(err)
	}
	if f.State() != 9 {
		t.Errorf("state %d after l2_load", f.State())
	}
	g := n.Graph()
	g.Lock()
	base := g.Lookup("base")
	g.Unlock()
	if err := blkdebug.Inject(base, blkdebug.InjectErrorOptions{Event: "none"}); err == nil {
		t.Error("Inject on a memory node succeeded")
	}
}

func TestConfigFile(t *testing.T) {
	dir := t.TempDir()
	conf := filepath.Join(dir, "blkdebug.conf")
	if err := os.WriteFile(conf, []byte(`# fail reads of sector 8 with ENOSPC
[inject-error]
event = "read_aio"
errno = "28"
sector = "8"
once = "on"

[set-state]
event = "write_aio"
new_state = "4"
`), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	e := node(t, fmt.Sprintf(`,"config":%q`, conf))
	n, r := e.dbg, e.r
	if err := r.ReadAt(ctx, make([]byte, 4096), 4096, 0); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("read: %v", err)
	}
	if err := r.WriteAt(ctx, make([]byte, 512), 0, 0); err != nil {
		t.Fatal(err)
	}
	if f, _ := blkdebug.Of(n); f.State() != 4 {
		t.Errorf("state %d", f.State())
	}
	for _, bad := range []struct{ text, err string }{
		{"[bogus]\n", "Could not parse blkdebug config file"},
		{"event = \"read_aio\"\n", "Could not parse blkdebug config file"},
		{"[inject-error]\nevent = read_aio\n", "Could not parse blkdebug config file"},
		{"[inject-error]\nerrno = \"5\"\n", "Missing event name for rule"},
		{"[inject-error]\nevent = \"bogus\"\n", "invalid parameter value: bogus"},
		{"[set-state]\nevent = \"none\"\nerrno = \"5\"\n", "Invalid parameter 'errno'"},
	} {
		if err := os.WriteFile(conf, []byte(bad.text), 0o644); err != nil {
			t.Fatal(err)
		}
		g := blocktest.NewGraph()
		_, err := blocktest.TryOpen(g, fmt.Sprintf(`{"driver":"blkdebug","node-name":"d","image":{"driver":"blocktest-mem","size":4096},"config":%q}`, conf))
		if err == nil || err.Error() != bad.err {
			t.Errorf("%q: %v, want %q", bad.text, err, bad.err)
		}
	}
}

// TestUnderFormat: blkdebug as the file of a format, as in transcript (h).
func TestUnderFormat(t *testing.T) {
	ctx := context.Background()
	g := blocktest.NewGraph()
	top := blocktest.Open(t, g, `{"driver":"blocktest-cow","node-name":"top","file":{"driver":"blkdebug","node-name":"dbg","image":{"driver":"blocktest-mem","size":1048576},`+
		`"inject-error":[{"event":"read_aio","errno":5,"sector":1024,"once":true}]}}`)
	r := blocktest.NewRoot(t, top, block.PermConsistentRead|block.PermWrite, block.PermAll)
	if err := r.WriteAt(ctx, make([]byte, 65536), 491520, 0); err != nil {
		t.Fatal(err)
	}
	if err := r.ReadAt(ctx, make([]byte, 65536), 491520, 0); !errors.Is(err, syscall.EIO) {
		t.Fatalf("first read: %v", err)
	}
	if err := r.ReadAt(ctx, make([]byte, 65536), 491520, 0); err != nil {
		t.Fatalf("retry: %v", err)
	}
}

// recorder is a protocol node that records the requests it gets.
type recorder struct {
	mu   sync.Mutex
	reqs []string
}

type recorderOptions struct {
	Size int64 `json:"size"`
}

var recorders sync.Map // node name -> *recorder

func init() {
	block.Register("blkdebugtest-recorder", block.KindProtocol, func(ctx context.Context, o *block.Opener, opts *recorderOptions) (block.Impl, error) {
		r := &recorder{}
		recorders.Store(o.Node().Name(), r)
		return &recorderImpl{r: r, size: opts.Size}, nil
	})
}

type recorderImpl struct {
	r    *recorder
	size int64
}

func (d *recorderImpl) note(kind string, off, n int64) {
	d.r.mu.Lock()
	defer d.r.mu.Unlock()
	d.r.reqs = append(d.r.reqs, fmt.Sprintf("%s %d+%d", kind, off, n))
}

func (d *recorderImpl) Caps() block.Caps {
	return block.Caps{Zero: true, Discard: true, BlockStatus: true}
}
func (d *recorderImpl) Size(ctx context.Context) (int64, error) { return d.size, nil }
func (d *recorderImpl) ReadAt(ctx context.Context, p []byte, off int64, f block.Flags) error {
	d.note("read", off, int64(len(p)))
	clear(p)
	return nil
}
func (d *recorderImpl) WriteAt(ctx context.Context, p []byte, off int64, f block.Flags) error {
	d.note("write", off, int64(len(p)))
	return nil
}
func (d *recorderImpl) Zero(ctx context.Context, off, n int64, f block.Flags) error {
	d.note("zero", off, n)
	return nil
}
func (d *recorderImpl) Discard(ctx context.Context, off, n int64) error {
	d.note("discard", off, n)
	return nil
}
func (d *recorderImpl) Flush(ctx context.Context) error { return nil }
func (d *recorderImpl) BlockStatus(ctx context.Context, off, n int64) (block.Extent, error) {
	return block.Extent{Len: n, Status: block.StatusData | block.StatusAllocated}, nil
}
func (d *recorderImpl) Truncate(ctx context.Context, size int64, exact bool) error {
	return block.ErrNotSupported
}
func (d *recorderImpl) Close() error { return nil }

// TestLimits: the limits blkdebug claims make the generic layer (and
// blkdebug itself, for zeroes and discards) send the node below only
// requests that honour them.
func TestLimits(t *testing.T) {
	tests := []struct {
		name string
		opts string
		req  request
		want []string
	}{
		{"align pads reads", `"align":4096`, request{"read", 100, 100}, []string{"read 0+4096"}},
		{"align pads reads across blocks", `"align":4096`, request{"read", 4000, 200}, []string{"read 0+8192"}},
		{"align pads writes", `"align":4096`, request{"write", 5000, 10}, []string{"read 4096+4096", "read 4096+4096", "write 4096+4096"}},
		{"max-transfer splits", `"align":512,"max-transfer":8192`, request{"read", 0, 20000},
			[]string{"read 0+8192", "read 8192+8192", "read 16384+4096"}},
		{"write zeroes in pieces", `"opt-write-zero":8192,"max-write-zero":16384`, request{"zero", 4096, 36864},
			[]string{"write 4096+4096", "zero 8192+16384", "zero 24576+16384"}},
		{"write zeroes all unaligned", `"opt-write-zero":8192`, request{"zero", 100, 1000}, []string{"write 100+1000"}},
		{"discard aligned and split", `"opt-discard":8192,"max-discard":8192`, request{"discard", 1000, 29000},
			[]string{"discard 8192+8192", "discard 16384+8192"}},
		{"discard too small is dropped", `"opt-discard":8192`, request{"discard", 100, 4096}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			g := blocktest.NewGraph()
			blocktest.Open(t, g, `{"driver":"blkdebugtest-recorder","node-name":"rec","size":1048576,"discard":"unmap"}`)
			n := blocktest.Open(t, g, `{"driver":"blkdebug","node-name":"dbg","discard":"unmap","image":"rec",`+tt.opts+`}`)
			r := blocktest.NewRoot(t, n, block.PermConsistentRead|block.PermWrite, block.PermAll)
			if err := tt.req.do(ctx, env{dbg: n, r: r}); err != nil {
				t.Fatal(err)
			}
			v, _ := recorders.Load("rec")
			rec := v.(*recorder)
			rec.mu.Lock()
			got := slices.Clone(rec.reqs)
			rec.mu.Unlock()
			if strings.Join(got, "; ") != strings.Join(tt.want, "; ") {
				t.Errorf("the node below saw %q, want %q", got, tt.want)
			}
		})
	}
	t.Run("caps", func(t *testing.T) {
		g := blocktest.NewGraph()
		blocktest.Open(t, g, `{"driver":"blocktest-mem","node-name":"base","size":65536,"max-transfer":65536}`)
		n := blocktest.Open(t, g, `{"driver":"blkdebug","node-name":"dbg","image":"base","align":4096}`)
		if l := n.Caps().Limits; l.RequestAlign != 4096 || l.MaxTransfer != 65536 {
			t.Errorf("limits %+v", l)
		}
	})
}

func TestChildPerms(t *testing.T) {
	g := blocktest.NewGraph()
	base := blocktest.Open(t, g, `{"driver":"blocktest-mem","node-name":"base","size":65536}`)
	n := blocktest.Open(t, g, `{"driver":"blkdebug","node-name":"dbg","image":"base","take-child-perms":["write","resize"],"unshare-child-perms":["write-unchanged"]}`)
	p, s := n.Children()[0].Perm()
	if p != block.PermWrite|block.PermResize || s != block.PermAll&^block.PermWriteUnchanged {
		t.Errorf("perm %v shared %v", p, s)
	}
	tx := g.Begin()
	_, err := tx.NewRoot(base, block.RootOptions{Perm: block.PermWriteUnchanged, Shared: block.PermAll})
	tx.Abort()
	if err == nil {
		t.Error("a write-unchanged user of base was allowed next to unshare-child-perms")
	}
}
