package nbd_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand"
	"net"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/blockd/blockd/pkg/nbd"
	"github.com/blockd/blockd/pkg/nbd/nbdtest"
)

const MiB = 1 << 20

func addExport(t testing.TB, s *testServer, b nbd.Backend, o nbd.ExportOptions) *nbd.Export {
	t.Helper()
	e, err := s.AddExport(b, o)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

type optStep struct {
	opt   uint32
	data  []byte
	types []uint32 // reply types, final last
	check func(t *testing.T, rs []optReply)
}

type optCase struct {
	name  string
	steps []optStep
}

// qsdDiffers names the cases where qsd 7.2 behaves differently.
var qsdDiffers = map[string]bool{
	// qsd answers the same but does not consume the trailing byte, and
	// then fails to parse the next option.
	"set meta trailing data": true,
}

// optionCases expect a read-only export "ro" of 1 MiB described as
// "read-only disk", a writable export "rw" of 2 MiB with allocation depth
// and multi-conn, and a writable "big" of 64 MiB, in that order.
func optionCases() []optCase {
	type step = optStep
	structured := step{opt: optStructuredReply, types: []uint32{repAck}}
	return []optCase{
		{"list", []step{{opt: optList, types: []uint32{repServer, repServer, repServer, repAck}, check: func(t *testing.T, rs []optReply) {
			if got := string(rs[0].data[4:]); got != "roread-only disk" || be.Uint32(rs[0].data) != 2 {
				t.Errorf("first entry %q", rs[0].data)
			}
			if got := string(rs[1].data[4:]); got != "rw" {
				t.Errorf("second entry %q", got)
			}
		}}}},
		{"list with data", []step{{opt: optList, data: []byte{1}, types: []uint32{repErrInvalid}}}},
		{"starttls", []step{{opt: optStartTLS, types: []uint32{repErrPolicy}}}},
		{"unknown option", []step{{opt: 4242, data: []byte("xyz"), types: []uint32{repErrUnsup}}, {opt: optList, types: []uint32{repServer, repServer, repServer, repAck}}}},
		{"too long option", []step{{opt: optInfo, data: make([]byte, 70000), types: []uint32{repErrInvalid}}}},
		{"too long unknown option", []step{{opt: 77, data: make([]byte, 70000), types: []uint32{repErrUnsup}}}},
		{"go name too long", []step{{opt: optGo, data: infoData(strings.Repeat("x", 5000)), types: []uint32{repErrInvalid}}}},
		{"info unknown request", []step{{opt: optInfo, data: infoData("ro", 3, 1, 99), types: []uint32{repInfo, repInfo, repInfo, repInfo, repAck}}}},
		{"info description unrequested", []step{{opt: optInfo, data: infoData("ro"), types: []uint32{repInfo, repInfo, repInfo, repAck}}}},
		{"structured twice", []step{structured, {opt: optStructuredReply, types: []uint32{repErrInvalid}}}},
		{"structured with data", []step{{opt: optStructuredReply, data: []byte{0}, types: []uint32{repErrInvalid}}}},
		{"info", []step{{opt: optInfo, data: infoData("ro", 1, 2, 3), types: []uint32{repInfo, repInfo, repInfo, repInfo, repAck}, check: func(t *testing.T, rs []optReply) {
			x, _ := parseInfo(t, rs)
			want := exportInfo{size: MiB, flags: tfHasFlags | tfReadOnly | tfSendFlush | tfSendFUA | tfSendCache, min: 1, pref: 4096, max: 32 * MiB,
				name: "ro", desc: "read-only disk", hasName: true, hasDesc: true, hasBlockSize: true, hasExp: true}
			if x.contexts = nil; fmt.Sprint(x) != fmt.Sprint(want) {
				t.Errorf("info\n got %+v\nwant %+v", x, want)
			}
		}}}},
		{"info writable structured", []step{structured, {opt: optInfo, data: infoData("rw"), types: []uint32{repInfo, repInfo, repAck}, check: func(t *testing.T, rs []optReply) {
			x, _ := parseInfo(t, rs)
			want := uint16(tfHasFlags | tfSendFlush | tfSendFUA | tfSendTrim | tfSendZeroes | tfSendDF | tfMultiConn | tfSendCache | tfSendFastZero)
			if x.flags != want || x.size != 2*MiB || x.hasName || x.hasDesc {
				t.Errorf("info %+v, want flags %#x", x, want)
			}
		}}}},
		{"info no description", []step{{opt: optInfo, data: infoData("rw", 2), types: []uint32{repInfo, repInfo, repAck}}}},
		{"info unknown export", []step{{opt: optInfo, data: infoData("nope"), types: []uint32{repErrUnknown}}}},
		{"info default export absent", []step{{opt: optGo, data: infoData(""), types: []uint32{repErrUnknown}}}},
		{"info short", []step{{opt: optInfo, data: []byte{0, 0, 0}, types: []uint32{repErrInvalid}}}},
		{"info name overflow", []step{{opt: optInfo, data: []byte{0xff, 0xff, 0xff, 0xff, 0, 0}, types: []uint32{repErrInvalid}}}},
		{"info request count mismatch", []step{{opt: optInfo, data: append(nameData("ro"), 0, 2, 0, 1), types: []uint32{repErrInvalid}}}},
		{"list meta without structured", []step{{opt: optListMetaContext, data: metaData("ro"), types: []uint32{repMetaContext, repAck}}}},
		{"set meta without structured", []step{{opt: optSetMetaContext, data: metaData("ro", "base:allocation"), types: []uint32{repErrInvalid}}}},
		{"list meta explicit", []step{structured, {opt: optListMetaContext, data: metaData("rw", "qemu:allocation-depth", "base:allocation"), types: []uint32{repMetaContext, repMetaContext, repAck}}}},
		{"list meta unknown export", []step{structured, {opt: optListMetaContext, data: metaData("zz"), types: []uint32{repErrUnknown}}}},
		{"set meta none", []step{structured, {opt: optSetMetaContext, data: metaData("rw"), types: []uint32{repAck}}}},
		{"set meta base only", []step{structured, {opt: optSetMetaContext, data: metaData("ro", "base:allocation"), types: []uint32{repMetaContext, repAck}}}},
		{"list meta all ro", []step{structured, {opt: optListMetaContext, data: metaData("ro"), types: []uint32{repMetaContext, repAck}, check: func(t *testing.T, rs []optReply) {
			if string(rs[0].data[4:]) != "base:allocation" {
				t.Errorf("got %q", rs[0].data)
			}
		}}}},
		{"list meta all rw", []step{structured, {opt: optListMetaContext, data: metaData("rw"), types: []uint32{repMetaContext, repMetaContext, repAck}, check: func(t *testing.T, rs []optReply) {
			if string(rs[1].data[4:]) != "qemu:allocation-depth" {
				t.Errorf("got %q", rs[1].data)
			}
		}}}},
		{"list meta qemu: on ro", []step{structured, {opt: optListMetaContext, data: metaData("ro", "qemu:"), types: []uint32{repAck}}}},
		{"list meta qemu: on rw", []step{structured, {opt: optListMetaContext, data: metaData("rw", "qemu:"), types: []uint32{repMetaContext, repAck}}}},
		{"list meta base:", []step{structured, {opt: optListMetaContext, data: metaData("rw", "base:"), types: []uint32{repMetaContext, repAck}}}},
		{"list meta unknown ns", []step{structured, {opt: optListMetaContext, data: metaData("rw", "x-foo:bar", "base:nope"), types: []uint32{repAck}}}},
		{"set meta wildcards select nothing", []step{structured, {opt: optSetMetaContext, data: metaData("rw", "base:", "qemu:"), types: []uint32{repAck}}}},
		{"set meta both", []step{structured, {opt: optSetMetaContext, data: metaData("rw", "qemu:allocation-depth", "base:allocation"), types: []uint32{repMetaContext, repMetaContext, repAck}, check: func(t *testing.T, rs []optReply) {
			if be.Uint32(rs[0].data) == be.Uint32(rs[1].data) {
				t.Errorf("context ids not unique")
			}
		}}}},
		{"set meta depth on ro", []step{structured, {opt: optSetMetaContext, data: metaData("ro", "qemu:allocation-depth"), types: []uint32{repAck}}}},
		{"set meta unknown export", []step{structured, {opt: optSetMetaContext, data: metaData("zz", "base:allocation"), types: []uint32{repErrUnknown}}}},
		{"set meta truncated query", []step{structured, {opt: optSetMetaContext, data: append(nameData("rw"), 0, 0, 0, 2, 0, 0, 0, 9, 'b'), types: []uint32{repErrInvalid}}}},
		{"set meta trailing data", []step{structured, {opt: optSetMetaContext, data: append(metaData("rw"), 1), types: []uint32{repAck}}}},
	}
}

func TestOptions(t *testing.T) {
	s := startServer(t, nbd.ServerOptions{})
	addExport(t, s, nbdtest.NewMem(MiB, 0), nbd.ExportOptions{Name: "ro", Description: "read-only disk"})
	addExport(t, s, nbdtest.NewMem(2*MiB, 0), nbd.ExportOptions{Name: "rw", Writable: true, AllocationDepth: true, MultiConn: true})
	addExport(t, s, nbdtest.NewMem(64*MiB, 0), nbd.ExportOptions{Name: "big", Writable: true})
	runOptionCases(t, s.dial, false)
}

func runOptionCases(t *testing.T, dial func(testing.TB) *client, qsd bool) {
	checks := !qsd
	for _, tt := range optionCases() {
		t.Run(tt.name, func(t *testing.T) {
			if qsd && qsdDiffers[tt.name] {
				t.Skip("qsd differs")
			}
			c := dial(t)
			c.greeting(3)
			for _, st := range tt.steps {
				rs := c.opt(st.opt, st.data)
				var types []uint32
				for _, r := range rs {
					types = append(types, r.typ)
				}
				if fmt.Sprint(types) != fmt.Sprint(st.types) {
					for _, r := range rs {
						t.Logf("reply %#x %q", r.typ, r.data)
					}
					t.Fatalf("option %d: reply types %#x, want %#x", st.opt, types, st.types)
				}
				if checks && st.check != nil {
					st.check(t, rs)
				}
			}
			// The connection is still usable.
			if rs := c.opt(optAbort, nil); rs[0].typ != repAck {
				t.Fatalf("abort: %#x", rs[0].typ)
			}
			c.expectClosed()
		})
	}
}

func TestHandshakeClose(t *testing.T) {
	s := startServer(t, nbd.ServerOptions{})
	addExport(t, s, nbdtest.NewMem(MiB, 0), nbd.ExportOptions{Name: "e"})
	tests := []struct {
		name string
		run  func(c *client)
	}{
		{"unknown client flags", func(c *client) { c.greeting(0x10) }},
		{"bad option magic", func(c *client) {
			c.greeting(3)
			c.write(make([]byte, 16))
		}},
		{"export name unknown", func(c *client) {
			c.greeting(3)
			c.sendOpt(optExportName, []byte("nope"))
		}},
		{"export name too long", func(c *client) {
			c.greeting(3)
			c.sendOpt(optExportName, make([]byte, 5000))
		}},
		{"not fixed newstyle", func(c *client) {
			c.greeting(0)
			c.sendOpt(optList, nil)
		}},
		{"bad request magic", func(c *client) {
			c.greeting(3)
			c.opt(optGo, infoData("e"))
			c.write(make([]byte, 28))
		}},
		{"eof mid option", func(c *client) {
			c.greeting(3)
			c.write([]byte{0x49, 0x48})
			c.nc.(interface{ CloseWrite() error }).CloseWrite()
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := s.dial(t)
			tt.run(c)
			c.expectClosed()
		})
	}
	waitConns(t, s, 0)
}

func waitConns(t testing.TB, s *testServer, n int) {
	t.Helper()
	for i := 0; s.Connections() != n; i++ {
		if i > 1000 {
			t.Fatalf("%d connections, want %d", s.Connections(), n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestExportName(t *testing.T) {
	s := startServer(t, nbd.ServerOptions{})
	addExport(t, s, nbdtest.NewMem(12345, 0), nbd.ExportOptions{Name: "", Writable: true})
	for _, flags := range []uint32{1, 3} {
		c := s.dial(t)
		c.greeting(flags)
		c.sendOpt(optExportName, nil)
		want := 10
		if flags&2 == 0 {
			want += 124
		}
		b := make([]byte, want)
		if err := c.readFull(b); err != nil {
			t.Fatal(err)
		}
		if be.Uint64(b) != 12345 || be.Uint16(b[8:])&tfReadOnly != 0 || !bytes.Equal(b[10:], make([]byte, want-10)) {
			t.Fatalf("export name reply %x", b)
		}
		// Transmission works, with simple replies.
		res := c.roundTrip(cmdWrite, 0, 0, 3, []byte("abc"))
		res = c.roundTrip(cmdRead, 0, 0, 5, nil)
		if res.errno != 0 || string(res.data) != "abc\x00\x00" {
			t.Fatalf("read %+v", res)
		}
		c.send(cmdDisc, 0, 1, 0, 0, nil)
		c.expectClosed()
	}
}

func TestCommands(t *testing.T) {
	s := startServer(t, nbd.ServerOptions{})
	mem := nbdtest.NewMem(MiB, 4096)
	ro := nbdtest.NewMem(MiB, 4096)
	addExport(t, s, mem, nbd.ExportOptions{Name: "rw", Writable: true, AllocationDepth: true, MaxBlock: 256 << 10})
	addExport(t, s, ro, nbd.ExportOptions{Name: "ro"})
	failing := nbdtest.NewMem(MiB, 4096)
	failing.Hook = func(ctx context.Context, op string, off, n int64) error {
		switch off {
		case 4096:
			return fmt.Errorf("disk full: %w", syscall.ENOSPC)
		case 8192:
			return errors.New("something odd")
		case 12288:
			return syscall.EROFS
		}
		return nil
	}
	failing.NoFastZero = true
	addExport(t, s, failing, nbd.ExportOptions{Name: "fail", Writable: true})
	nozero := nbdtest.NewMem(MiB, 4096)
	nozero.NoZero = true
	addExport(t, s, nozero, nbd.ExportOptions{Name: "nozero", Writable: true})

	pattern := bytes.Repeat([]byte{0xa5}, 8192)
	type cmd struct {
		typ, flags uint16
		off        uint64
		length     uint32
		data       []byte
		errno      uint32
		check      func(t *testing.T, res result)
	}
	tests := []struct {
		export     string
		structured bool
		cmds       []cmd
	}{
		{"rw", false, []cmd{
			{typ: cmdWrite, off: 4096, length: 8192, data: pattern},
			{typ: cmdRead, off: 4096, length: 8192, check: func(t *testing.T, r result) {
				if !bytes.Equal(r.data, pattern) {
					t.Error("read back differs")
				}
			}},
			{typ: cmdWrite, flags: flagFUA, off: 0, length: 1, data: []byte{1}},
			{typ: cmdFlush},
			{typ: cmdTrim, off: 4096, length: 4096},
			{typ: cmdCache, off: 0, length: 64 << 10},
			{typ: cmdCache, off: 0, length: MiB, errno: 22}, // over max block
			{typ: cmdWriteZeroes, flags: flagNoHole | flagFUA, off: 8192, length: 4096},
			{typ: cmdRead, off: 4096, length: 8192, check: func(t *testing.T, r result) {
				if !bytes.Equal(r.data, make([]byte, 8192)) {
					t.Error("not zero after trim + write zeroes")
				}
			}},
			{typ: cmdWriteZeroes, flags: flagFastZero, off: 0, length: MiB},
			{typ: cmdRead, off: MiB - 1, length: 2, errno: 22},
			{typ: cmdRead, off: 1 << 62, length: 2, errno: 22},
			{typ: cmdWrite, off: MiB - 1, length: 2, data: []byte{1, 2}, errno: 22},
			{typ: cmdWriteZeroes, off: MiB, length: 1, errno: 22},
			{typ: cmdTrim, off: MiB, length: 1, errno: 22},
			{typ: cmdRead, off: 0, length: 512 << 10, errno: 22},                               // over max block
			{typ: cmdWrite, off: 0, length: 300 << 10, data: make([]byte, 300<<10), errno: 22}, // drained
			{typ: cmdRead, off: 0, length: 0},
			{typ: cmdWrite, off: 0, length: 0},
			{typ: 99, errno: 22},
			{typ: cmdRead, flags: flagDF, length: 1, errno: 22}, // DF needs structured replies
			{typ: cmdRead, flags: 0x100, length: 1, errno: 22},
			{typ: cmdBlockStatus, length: 4096, errno: 22}, // no context
			{typ: cmdTrim, flags: flagNoHole, length: 4096, errno: 22},
		}},
		{"ro", false, []cmd{
			{typ: cmdWrite, length: 1, data: []byte{1}, errno: 1},
			{typ: cmdTrim, length: 1, errno: 1},
			{typ: cmdWriteZeroes, length: 1, errno: 1},
			{typ: cmdRead, length: 4096},
			{typ: cmdFlush},
			{typ: cmdCache, length: 4096},
		}},
		{"fail", true, []cmd{
			{typ: cmdRead, off: 4096, length: 4096, errno: 28, check: func(t *testing.T, r result) {
				if !strings.Contains(r.msg, "disk full") {
					t.Errorf("message %q", r.msg)
				}
			}},
			{typ: cmdWrite, off: 8192, length: 1, data: []byte{1}, errno: 5},
			{typ: cmdWrite, off: 12288, length: 1, data: []byte{1}, errno: 1},
			{typ: cmdWriteZeroes, flags: flagFastZero, off: 0, length: 4096, errno: 95},
			{typ: cmdWriteZeroes, off: 0, length: 4096},
			{typ: cmdRead, flags: flagDF, off: 0, length: 4096},
			{typ: cmdRead, off: 0, length: 0, check: func(t *testing.T, r result) {
				if r.chunks != 0 {
					t.Errorf("chunks for empty read")
				}
			}},
		}},
		{"nozero", true, []cmd{
			{typ: cmdWrite, off: 0, length: 8192, data: pattern},
			{typ: cmdWriteZeroes, off: 100, length: 5000},
			{typ: cmdWriteZeroes, flags: flagFastZero, off: 100, length: 5000, errno: 95},
			{typ: cmdRead, off: 0, length: 8192, check: func(t *testing.T, r result) {
				want := bytes.Clone(pattern)
				clear(want[100:5100])
				if !bytes.Equal(r.data, want) {
					t.Error("write zeroes emulation wrong")
				}
			}},
		}},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%s/structured=%v", tt.export, tt.structured), func(t *testing.T) {
			c, _ := s.connect(t, tt.export, tt.structured)
			for i, cm := range tt.cmds {
				res := c.roundTrip(cm.typ, cm.flags, cm.off, cm.length, cm.data)
				if res.errno != cm.errno {
					t.Errorf("command %d (type %d): errno %d, want %d (%s)", i, cm.typ, res.errno, cm.errno, res.msg)
				}
				if cm.check != nil {
					cm.check(t, res)
				}
			}
			c.send(cmdDisc, 0, 0, 0, 0, nil)
			c.expectClosed()
		})
	}
}

func TestStructuredReadsAndBlockStatus(t *testing.T) {
	s := startServer(t, nbd.ServerOptions{})
	base := nbdtest.NewMem(MiB, 4096)
	ctx := context.Background()
	base.WriteAt(ctx, bytes.Repeat([]byte{2}, 64<<10), 256<<10, false)
	top := nbdtest.NewMem(MiB, 4096).WithBacking(base)
	top.WriteAt(ctx, bytes.Repeat([]byte{1}, 64<<10), 0, false)
	top.Zero(ctx, 128<<10, 64<<10, false, false, false)
	addExport(t, s, top, nbd.ExportOptions{Name: "e", AllocationDepth: true, SparseReadMin: 4096})

	c, x := s.connect(t, "e", true, "base:allocation", "qemu:allocation-depth")
	if x.flags&tfSendDF == 0 || len(x.contexts) != 2 {
		t.Fatalf("flags %#x contexts %v", x.flags, x.contexts)
	}
	// A read across data, zero, hole and backing data.
	res := c.roundTrip(cmdRead, 0, 0, 512<<10, nil)
	if res.errno != 0 || !bytes.Equal(res.data, top.Bytes()[:512<<10]) {
		t.Fatalf("sparse read wrong: errno %d", res.errno)
	}
	if res.holes != 2 || res.chunks != 4 {
		t.Errorf("sparse read: %d holes in %d chunks, want 2 in 4", res.holes, res.chunks)
	}
	// DF: a single data chunk.
	res = c.roundTrip(cmdRead, flagDF, 0, 512<<10, nil)
	if res.chunks != 1 || res.holes != 0 || !bytes.Equal(res.data, top.Bytes()[:512<<10]) {
		t.Errorf("DF read: %d chunks %d holes", res.chunks, res.holes)
	}

	res = c.roundTrip(cmdBlockStatus, 0, 0, MiB, nil)
	base0 := x.contexts["base:allocation"]
	depth := x.contexts["qemu:allocation-depth"]
	wantBase := [][2]uint32{{64 << 10, 0}, {64 << 10, 3}, {64 << 10, 2}, {64 << 10, 3}, {64 << 10, 0}, {MiB - 320<<10, 3}}
	wantDepth := [][2]uint32{{64 << 10, 1}, {64 << 10, 0}, {64 << 10, 1}, {64 << 10, 0}, {64 << 10, 2}, {MiB - 320<<10, 0}}
	if fmt.Sprint(res.status[base0]) != fmt.Sprint(wantBase) {
		t.Errorf("base:allocation\n got %v\nwant %v", res.status[base0], wantBase)
	}
	if fmt.Sprint(res.status[depth]) != fmt.Sprint(wantDepth) {
		t.Errorf("allocation-depth\n got %v\nwant %v", res.status[depth], wantDepth)
	}
	res = c.roundTrip(cmdBlockStatus, flagReqOne, 4096, MiB-4096, nil)
	if got := fmt.Sprint(res.status); got != "map[0:[[61440 0]] 1:[[61440 1]]]" {
		t.Errorf("REQ_ONE: %s", got)
	}
	res = c.roundTrip(cmdBlockStatus, 0, MiB-4096, 8192, nil)
	if res.errno != 22 {
		t.Errorf("block status past end: errno %d", res.errno)
	}
	res = c.roundTrip(cmdBlockStatus, 0, 0, 0, nil)
	if res.errno != 22 {
		t.Errorf("empty block status: errno %d", res.errno)
	}
}

func TestBlockStatusUnsupported(t *testing.T) {
	s := startServer(t, nbd.ServerOptions{})
	m := nbdtest.NewMem(MiB, 0)
	m.NoBlockStatus = true
	addExport(t, s, m, nbd.ExportOptions{Name: "e", SparseReadMin: 1})
	c, _ := s.connect(t, "e", true, "base:allocation")
	res := c.roundTrip(cmdBlockStatus, 0, 0, MiB, nil)
	if fmt.Sprint(res.status) != "map[0:[[1048576 0]]]" {
		t.Errorf("status %v", res.status)
	}
	res = c.roundTrip(cmdRead, 0, 0, MiB, nil)
	if res.errno != 0 || res.chunks != 1 {
		t.Errorf("read: %+v", res.errno)
	}
}

// A sparse read whose block status fails fails with its errno, as qsd's
// does ("unable to check for holes"), rather than reading the data.
func TestSparseReadStatusError(t *testing.T) {
	s := startServer(t, nbd.ServerOptions{})
	m := nbdtest.NewMem(MiB, 0)
	m.Hook = func(ctx context.Context, op string, off, n int64) error {
		if op == "status" {
			return syscall.EIO
		}
		return nil
	}
	addExport(t, s, m, nbd.ExportOptions{Name: "e", SparseReadMin: 4096})
	c, _ := s.connect(t, "e", true, "base:allocation")
	if res := c.roundTrip(cmdRead, 0, 0, 65536, nil); res.errno != 5 {
		t.Errorf("sparse read: errno %d, want 5", res.errno)
	}
	if res := c.roundTrip(cmdRead, 0, 0, 512, nil); res.errno != 0 {
		t.Errorf("read below SparseReadMin: errno %d", res.errno)
	}
}

// Contexts negotiated for another export do not carry over to GO.
func TestMetaContextOtherExport(t *testing.T) {
	s := startServer(t, nbd.ServerOptions{})
	addExport(t, s, nbdtest.NewMem(MiB, 0), nbd.ExportOptions{Name: "a"})
	addExport(t, s, nbdtest.NewMem(MiB, 0), nbd.ExportOptions{Name: "b"})
	c := s.dial(t)
	c.greeting(3)
	c.opt(optStructuredReply, nil)
	c.structured = true
	c.opt(optSetMetaContext, metaData("a", "base:allocation"))
	if _, typ := parseInfo(t, c.opt(optGo, infoData("b"))); typ != repAck {
		t.Fatal(typ)
	}
	if res := c.roundTrip(cmdBlockStatus, 0, 0, 4096, nil); res.errno != 22 {
		t.Errorf("block status errno %d, want EINVAL", res.errno)
	}
}

func TestMinBlockEnforced(t *testing.T) {
	s := startServer(t, nbd.ServerOptions{})
	addExport(t, s, nbdtest.NewMem(MiB, 0), nbd.ExportOptions{Name: "e", Writable: true, MinBlock: 512})
	c, x := s.connect(t, "e", false)
	if x.min != 512 {
		t.Errorf("min block %d", x.min)
	}
	if res := c.roundTrip(cmdRead, 0, 1, 512, nil); res.errno != 22 {
		t.Errorf("unaligned read: errno %d", res.errno)
	}
	if res := c.roundTrip(cmdRead, 0, 512, 512, nil); res.errno != 0 {
		t.Errorf("aligned read: errno %d", res.errno)
	}
	// Without NBD_INFO_BLOCK_SIZE the client is told 1 and not held to 512.
	c2 := s.dial(t)
	c2.greeting(3)
	x2, _ := parseInfo(t, c2.opt(optGo, infoData("e")))
	if x2.min != 1 {
		t.Errorf("min block %d without request", x2.min)
	}
	if res := c2.roundTrip(cmdWrite, 0, 3, 2, []byte{1, 2}); res.errno != 0 {
		t.Errorf("unaligned write: errno %d", res.errno)
	}
}

// A slow request does not hold back the replies of later ones.
func TestOutOfOrder(t *testing.T) {
	s := startServer(t, nbd.ServerOptions{})
	m := nbdtest.NewMem(MiB, 0)
	release := make(chan struct{})
	m.Hook = func(ctx context.Context, op string, off, n int64) error {
		if op == "read" && off == 0 {
			<-release
		}
		return nil
	}
	addExport(t, s, m, nbd.ExportOptions{Name: "e", Writable: true})
	for _, structured := range []bool{false, true} {
		c, _ := s.connect(t, "e", structured)
		c.send(cmdRead, 0, 1, 0, 4096, nil)
		c.send(cmdWrite, 0, 2, 4096, 4, []byte("data"))
		c.send(cmdRead, 0, 3, 4096, 4, nil)
		c.send(cmdFlush, 0, 4, 0, 0, nil)
		seen := map[uint64]bool{}
		for len(seen) < 2 {
			r, err := c.readReply()
			if err != nil {
				t.Fatal(err)
			}
			if r.handle == 1 {
				t.Fatal("slow read answered first")
			}
			seen[r.handle] = true
			if len(seen) == 2 && seen[3] && !seen[2] {
				// 3 may overtake 2; wait for 2 as well.
				continue
			}
		}
		release <- struct{}{}
		for {
			r, err := c.readReply()
			if err != nil {
				t.Fatal(err)
			}
			if r.handle == 1 {
				break
			}
		}
	}
}

// A client that vanishes mid-request leaves nothing behind.
func TestDisconnectMidRequest(t *testing.T) {
	s := startServer(t, nbd.ServerOptions{})
	m := nbdtest.NewMem(MiB, 0)
	started := make(chan struct{}, 1)
	release := make(chan struct{})
	m.Hook = func(ctx context.Context, op string, off, n int64) error {
		if op == "write" {
			started <- struct{}{}
			<-release
		}
		return nil
	}
	e := addExport(t, s, m, nbd.ExportOptions{Name: "e", Writable: true})
	c, _ := s.connect(t, "e", true)
	c.send(cmdWrite, 0, 1, 0, 4, []byte("abcd"))
	<-started
	// Half a request, then gone.
	c.write([]byte{0x25, 0x60, 0x95})
	c.nc.Close()
	time.Sleep(20 * time.Millisecond)
	if e.Clients() != 1 {
		t.Errorf("clients %d during in-flight write", e.Clients())
	}
	close(release)
	waitConns(t, s, 0)
	if e.Clients() != 0 || m.InFlight() != 0 {
		t.Errorf("clients %d in flight %d", e.Clients(), m.InFlight())
	}
	if got := m.Bytes()[:4]; string(got) != "abcd" {
		t.Errorf("in-flight write did not finish: %q", got)
	}
}

func TestMaxConnections(t *testing.T) {
	s := startServer(t, nbd.ServerOptions{MaxConnections: 2})
	addExport(t, s, nbdtest.NewMem(MiB, 0), nbd.ExportOptions{Name: "e"})
	c1, _ := s.connect(t, "e", false)
	c2 := s.dial(t)
	c2.greeting(3)
	waitConns(t, s, 2)
	// At the limit the server stops accepting (as qsd): the third client
	// waits in the backlog, with no greeting, until a connection ends.
	c3 := s.dial(t)
	c3.nc.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	var b [1]byte
	if _, err := c3.br.Read(b[:]); err == nil {
		t.Fatal("a client beyond max-connections got the greeting")
	}
	c3.nc.SetReadDeadline(time.Time{})
	c1.send(cmdDisc, 0, 0, 0, 0, nil)
	c1.expectClosed()
	c3.greeting(3)
	waitConns(t, s, 2)
}

func TestRemoveExport(t *testing.T) {
	s := startServer(t, nbd.ServerOptions{})
	m := nbdtest.NewMem(MiB, 0)
	var blocked sync.WaitGroup
	blocked.Add(1)
	started := make(chan struct{}, 1)
	m.Hook = func(ctx context.Context, op string, off, n int64) error {
		if off == 4096 {
			started <- struct{}{}
			blocked.Wait()
		}
		return nil
	}
	e := addExport(t, s, m, nbd.ExportOptions{Name: "e"})
	if _, err := s.AddExport(m, nbd.ExportOptions{Name: "e"}); !errors.Is(err, nbd.ErrExportExists) || err.Error() != "NBD server already has export named 'e': export name already in use" {
		t.Errorf("duplicate: %v", err)
	}
	if err := s.RemoveExport("zz", false); !errors.Is(err, nbd.ErrExportNotFound) {
		t.Errorf("unknown: %v", err)
	}
	c, _ := s.connect(t, "e", true)
	if e.Clients() != 1 {
		t.Fatalf("clients %d", e.Clients())
	}
	if err := s.RemoveExport("e", false); !errors.Is(err, nbd.ErrExportInUse) || !strings.Contains(err.Error(), "export 'e' still in use") {
		t.Errorf("safe remove: %v", err)
	}
	c.send(cmdRead, 0, 1, 4096, 10, nil)
	<-started
	done := make(chan error)
	go func() { done <- s.RemoveExport("e", true) }()
	select {
	case <-done:
		t.Fatal("hard remove returned with a request in flight")
	case <-time.After(50 * time.Millisecond):
	}
	blocked.Done()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	m.Close() // any later call fails the test through EIO below
	if m.InFlight() != 0 {
		t.Fatal("in flight after remove")
	}
	c.expectClosed()
	if s.Export("e") != nil {
		t.Error("export still listed")
	}
	c2 := s.dial(t)
	c2.greeting(3)
	if _, typ := parseInfo(t, c2.opt(optGo, infoData("e"))); typ != repErrUnknown {
		t.Errorf("GO on removed export: %#x", typ)
	}
	// Safe removal without clients.
	addExport(t, s, nbdtest.NewMem(MiB, 0), nbd.ExportOptions{Name: "e"})
	if err := s.RemoveExport("e", false); err != nil {
		t.Error(err)
	}
}

func TestQuiesceAndSetBackend(t *testing.T) {
	s := startServer(t, nbd.ServerOptions{})
	m1 := nbdtest.NewMem(MiB, 0)
	m1.WriteAt(context.Background(), []byte("one"), 0, false)
	m2 := nbdtest.NewMem(MiB, 0)
	m2.WriteAt(context.Background(), []byte("two"), 0, false)
	e := addExport(t, s, m1, nbd.ExportOptions{Name: "e", Writable: true})
	c, _ := s.connect(t, "e", false)

	e.Quiesce()
	e.Quiesce() // nests
	c.send(cmdRead, 0, 7, 0, 3, nil)
	got := make(chan reply, 1)
	go func() {
		r, err := c.readReply()
		if err != nil {
			t.Error(err)
		}
		got <- r
	}()
	select {
	case <-got:
		t.Fatal("request ran while quiesced")
	case <-time.After(50 * time.Millisecond):
	}
	e.SetBackend(m2) // inside the drained section
	e.Resume()
	select {
	case <-got:
		t.Fatal("request ran while still quiesced once")
	case <-time.After(50 * time.Millisecond):
	}
	e.Resume()
	r := <-got
	if string(r.payload) != "two" {
		t.Errorf("read %q after SetBackend", r.payload)
	}
	// SetBackend outside a drained section, with traffic.
	var wg sync.WaitGroup
	stop := make(chan struct{})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			e.SetBackend([]*nbdtest.Mem{m1, m2}[i%2])
		}
	}()
	for i := 0; i < 200; i++ {
		res := c.roundTrip(cmdRead, 0, 0, 3, nil)
		if s := string(res.data); s != "one" && s != "two" {
			t.Fatalf("read %q", s)
		}
	}
	close(stop)
	wg.Wait()
}

// Many requests in flight from several connections, with the data checked.
func TestConcurrentIO(t *testing.T) {
	s := startServer(t, nbd.ServerOptions{Workers: 8, MaxBufferBytes: 2 * MiB})
	m := nbdtest.NewMem(16*MiB, 0)
	m.Hook = func(ctx context.Context, op string, off, n int64) error {
		if op == "write" || op == "read" {
			runtime.Gosched()
		}
		return nil
	}
	addExport(t, s, m, nbd.ExportOptions{Name: "e", Writable: true, MaxBlock: MiB})
	var wg sync.WaitGroup
	for k := 0; k < 4; k++ {
		wg.Add(1)
		go func(k int) {
			defer wg.Done()
			c, _ := s.connect(t, "e", k%2 == 0)
			rnd := rand.New(rand.NewSource(int64(k)))
			region := uint64(k) * 4 * MiB
			want := make([]byte, 4*MiB)
			// Pipeline a batch of writes, then reads.
			const n = 64
			for i := 0; i < n; i++ {
				l := uint32(rnd.Intn(MiB) + 1)
				off := uint64(rnd.Intn(4*MiB - int(l)))
				p := make([]byte, l)
				rnd.Read(p)
				copy(want[off:], p)
				// Non-overlapping order is not guaranteed, so wait for each.
				c.send(cmdWrite, 0, uint64(i), region+off, l, p)
				if r, err := c.readReply(); err != nil || r.errno != 0 {
					t.Errorf("write: %v %d", err, r.errno)
					return
				}
			}
			for i := 0; i < n; i++ {
				c.send(cmdRead, 0, uint64(i), region+uint64(i)*(64<<10), 64<<10, nil)
			}
			got := map[uint64]*result{}
			for done := 0; done < n; {
				r, err := c.readReply()
				if err != nil {
					t.Error(err)
					return
				}
				res := got[r.handle]
				if res == nil {
					res = &result{}
					got[r.handle] = res
				}
				if err := res.add(r, region+r.handle*(64<<10), 64<<10); err != nil {
					t.Error(err)
					return
				}
				if r.done() {
					done++
				}
			}
			for i := uint64(0); i < n; i++ {
				if res := got[i]; res.errno != 0 || !bytes.Equal(res.data, want[i*(64<<10):(i+1)*(64<<10)]) {
					t.Errorf("conn %d read %d differs", k, i)
				}
			}
		}(k)
	}
	wg.Wait()
	if m.MaxInFlight() < 2 {
		t.Errorf("max in flight %d: requests were not parallel", m.MaxInFlight())
	}
}

// A client that sends large writes without reading replies is held back
// by the buffer budget, not by memory.
func TestBufferBudget(t *testing.T) {
	s := startServer(t, nbd.ServerOptions{Workers: 4, MaxBufferBytes: 4 * MiB})
	m := nbdtest.NewMem(32*MiB, 0)
	addExport(t, s, m, nbd.ExportOptions{Name: "e", Writable: true, MaxBlock: 4 * MiB})
	c, _ := s.connect(t, "e", true)
	p := bytes.Repeat([]byte{7}, 4*MiB)
	go func() {
		for i := 0; i < 8; i++ {
			c.send(cmdWrite, 0, uint64(i), uint64(i)*4*MiB, 4*MiB, p)
		}
	}()
	for i := 0; i < 8; i++ {
		if r, err := c.readReply(); err != nil || r.errno != 0 {
			t.Fatal(err, r.errno)
		}
	}
	if !bytes.Equal(m.Bytes(), bytes.Repeat([]byte{7}, 32*MiB)) {
		t.Error("data differs")
	}
	if _, err := s.AddExport(m, nbd.ExportOptions{Name: "big", MaxBlock: 8 * MiB}); err == nil {
		t.Error("MaxBlock over the buffer limit accepted")
	}
}

func TestCloseWithClients(t *testing.T) {
	s := startServer(t, nbd.ServerOptions{})
	m := nbdtest.NewMem(MiB, 0)
	started := make(chan struct{}, 1)
	m.Hook = func(ctx context.Context, op string, off, n int64) error {
		if off == 4096 {
			started <- struct{}{}
			<-ctx.Done() // only a cancelled context ends this read
			return ctx.Err()
		}
		return nil
	}
	addExport(t, s, m, nbd.ExportOptions{Name: "stuck"})
	c, _ := s.connect(t, "stuck", false)
	c.send(cmdRead, 0, 1, 4096, 1, nil)
	<-started

	hs := s.dial(t) // a client in the handshake
	hs.greeting(3)

	q := addExport(t, s, nbdtest.NewMem(MiB, 0), nbd.ExportOptions{Name: "quiesced"})
	q.Quiesce() // an export that stays quiesced
	c2, x := s.connect(t, "quiesced", false)
	if x.size != MiB {
		t.Errorf("size %d while quiesced", x.size)
	}
	c2.send(cmdRead, 0, 1, 0, 1, nil)
	time.Sleep(20 * time.Millisecond)

	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if s.Connections() != 0 {
		t.Errorf("%d connections after Close", s.Connections())
	}
	for _, cl := range []*client{c, hs, c2} {
		cl.expectClosed()
	}
	q.Resume()
}

func TestErrnoOf(t *testing.T) {
	tests := []struct {
		err  error
		want syscall.Errno
	}{
		{nil, 0},
		{syscall.EPERM, nbd.EPERM},
		{fmt.Errorf("x: %w", syscall.EROFS), nbd.EPERM},
		{syscall.EACCES, nbd.EINVAL},
		{syscall.EIO, nbd.EIO},
		{syscall.ENOMEM, nbd.ENOMEM},
		{syscall.EINVAL, nbd.EINVAL},
		{syscall.ENOSPC, nbd.ENOSPC},
		{syscall.EDQUOT, nbd.ENOSPC},
		{syscall.EFBIG, nbd.ENOSPC},
		{syscall.EOVERFLOW, nbd.EOVERFLOW},
		{syscall.EOPNOTSUPP, nbd.ENOTSUP},
		{syscall.ESHUTDOWN, nbd.ESHUTDOWN},
		{syscall.ENOENT, nbd.EIO},
		{fmt.Errorf("fast zero: %w", nbd.ErrNotSupported), nbd.ENOTSUP},
		{context.Canceled, nbd.ESHUTDOWN},
		{errors.New("other"), nbd.EIO},
	}
	for _, tt := range tests {
		if got := nbd.ErrnoOf(tt.err); got != tt.want {
			t.Errorf("ErrnoOf(%v) = %d, want %d", tt.err, got, tt.want)
		}
	}
}

func TestTCP(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := nbd.NewServer(nbd.ServerOptions{})
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(l) }()
	defer func() {
		srv.Close()
		if err := <-errc; !errors.Is(err, nbd.ErrServerClosed) {
			t.Error(err)
		}
	}()
	m := nbdtest.NewMem(MiB, 0)
	m.WriteAt(context.Background(), []byte("tcp!"), 4096, false)
	if _, err := srv.AddExport(m, nbd.ExportOptions{Name: "t"}); err != nil {
		t.Fatal(err)
	}
	nc, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	c := &client{t: t, nc: nc, br: newReader(nc), reads: map[uint64]uint32{}}
	c.greeting(3)
	if _, typ := parseInfo(t, c.opt(optGo, infoData("t"))); typ != repAck {
		t.Fatal(typ)
	}
	if res := c.roundTrip(cmdRead, 0, 4096, 4, nil); string(res.data) != "tcp!" {
		t.Errorf("read %q", res.data)
	}
	if _, err := exec.LookPath("nbdinfo"); err == nil {
		out, err := exec.Command("nbdinfo", "--size", "nbd://"+l.Addr().String()+"/t").CombinedOutput()
		if err != nil || strings.TrimSpace(string(out)) != "1048576" {
			t.Errorf("nbdinfo --size over TCP: %v %s", err, out)
		}
	}
}

// TestHandshakeTimeout: a client that does not finish negotiating in
// time is dropped (CVE-2024-7409), whether it never spoke or stalled
// mid-negotiation; one in transmission may stay idle past the limit.
func TestHandshakeTimeout(t *testing.T) {
	const limit = 200 * time.Millisecond
	s := startServer(t, nbd.ServerOptions{HandshakeTimeout: limit})
	addExport(t, s, nbdtest.NewMem(MiB, 0), nbd.ExportOptions{Name: "e"})

	silent := s.dial(t) // reads the greeting, never answers
	stalled := s.dial(t)
	stalled.greeting(3)
	stalled.opt(optList, nil)
	idle, _ := s.connect(t, "e", true)

	start := time.Now()
	silent.expectClosed()
	stalled.expectClosed()
	if el := time.Since(start); el > 5*limit {
		t.Errorf("dropped after %v, want about %v", el, limit)
	}
	time.Sleep(2 * limit)
	if res := idle.roundTrip(cmdRead, 0, 0, 4096, nil); res.errno != 0 {
		t.Fatalf("idle client in transmission: errno %d", res.errno)
	}
}
