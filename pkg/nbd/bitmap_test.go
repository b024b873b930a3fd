package nbd_test

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/blockd/blockd/pkg/nbd"
	"github.com/blockd/blockd/pkg/nbd/nbdtest"
)

// bitmapServer serves "e", 1 MiB with allocation depth and two bitmaps:
// b0 (64 KiB granules, dirty [64k, 192k) and [512k, 576k)) and b1 (4 KiB
// granules, dirty [4k, 8k)); its backend fails every block status, which
// bitmap contexts must not need.
func bitmapServer(t *testing.T) *testServer {
	s := startServer(t, nbd.ServerOptions{})
	m := nbdtest.NewMem(MiB, 0)
	m.Hook = func(ctx context.Context, op string, off, n int64) error {
		if op == "status" {
			return errors.New("no block status here")
		}
		return nil
	}
	b0 := nbdtest.NewBitmap(MiB, 64<<10)
	b0.Set(64<<10, 128<<10)
	b0.Set(512<<10+1, 100)
	b1 := nbdtest.NewBitmap(MiB, 4096)
	b1.Set(4096, 4096)
	addExport(t, s, m, nbd.ExportOptions{Name: "e", AllocationDepth: true,
		Bitmaps: []nbd.ExportBitmap{{Name: "b0", Map: b0}, {Name: "b1", Map: b1}}})
	addExport(t, s, nbdtest.NewMem(MiB, 0), nbd.ExportOptions{Name: "plain"})
	return s
}

// metaReplies runs one meta context option and returns its contexts as
// "id:name", ACK last.
func metaReplies(t *testing.T, c *client, opt uint32, data []byte) []string {
	t.Helper()
	var out []string
	for _, r := range c.opt(opt, data) {
		switch r.typ {
		case repMetaContext:
			out = append(out, fmt.Sprintf("%d:%s", be.Uint32(r.data), r.data[4:]))
		case repAck:
			out = append(out, "ack")
		default:
			out = append(out, fmt.Sprintf("error %#x", r.typ))
		}
	}
	return out
}

// TestDirtyBitmapContexts: listing and selecting qemu:dirty-bitmap:NAME,
// as qsd 7.2 answers each query.
func TestDirtyBitmapContexts(t *testing.T) {
	runBitmapContextCases(t, bitmapServer(t).dial)
}

// runBitmapContextCases runs the meta context cases on the exports
// bitmapServer describes, reached with dial.
func runBitmapContextCases(t *testing.T, dial func(testing.TB) *client) {
	c := dial(t)
	c.greeting(3)
	c.opt(optStructuredReply, nil)
	all := "[0:base:allocation 0:qemu:allocation-depth 0:qemu:dirty-bitmap:b0 0:qemu:dirty-bitmap:b1 ack]"
	for _, tc := range []struct {
		name string
		opt  uint32
		data []byte
		want string
	}{
		{"list all", optListMetaContext, metaData("e"), all},
		{"list qemu:", optListMetaContext, metaData("e", "qemu:"), "[0:qemu:allocation-depth 0:qemu:dirty-bitmap:b0 0:qemu:dirty-bitmap:b1 ack]"},
		{"list dirty-bitmap:", optListMetaContext, metaData("e", "qemu:dirty-bitmap:"), "[0:qemu:dirty-bitmap:b0 0:qemu:dirty-bitmap:b1 ack]"},
		{"list one", optListMetaContext, metaData("e", "qemu:dirty-bitmap:b1"), "[0:qemu:dirty-bitmap:b1 ack]"},
		{"list unknown bitmap", optListMetaContext, metaData("e", "qemu:dirty-bitmap:b2", "qemu:dirty-bitmap:b", "qemu:dirty-bitmap:b0x"), "[ack]"},
		{"list on an export without bitmaps", optListMetaContext, metaData("plain", "qemu:dirty-bitmap:", "qemu:dirty-bitmap:b0"), "[ack]"},
		{"set wildcards", optSetMetaContext, metaData("e", "qemu:dirty-bitmap:", "qemu:"), "[ack]"},
		// Answered in QEMU's order, each once, whatever the query order.
		{"set", optSetMetaContext, metaData("e", "qemu:dirty-bitmap:b1", "qemu:dirty-bitmap:nope", "base:allocation", "qemu:dirty-bitmap:b1"),
			"[0:base:allocation 3:qemu:dirty-bitmap:b1 ack]"},
		{"set all", optSetMetaContext, metaData("e", "qemu:dirty-bitmap:b1", "qemu:dirty-bitmap:b0", "qemu:allocation-depth", "base:allocation"),
			"[0:base:allocation 1:qemu:allocation-depth 2:qemu:dirty-bitmap:b0 3:qemu:dirty-bitmap:b1 ack]"},
	} {
		if got := fmt.Sprint(metaReplies(t, c, tc.opt, tc.data)); got != tc.want {
			t.Errorf("%s: %s, want %s", tc.name, got, tc.want)
		}
	}
}

// statusChunks sends one BLOCK_STATUS and returns its chunks in order as
// "id:[[length flags] ...]", with "done" after the one flagged done.
func statusChunks(t *testing.T, c *client, flags uint16, off uint64, length uint32) []string {
	t.Helper()
	c.send(cmdBlockStatus, flags, 7, off, length, nil)
	var out []string
	for {
		r, err := c.readReply()
		if err != nil {
			t.Fatal(err)
		}
		if r.typ != chunkBlockStatus {
			t.Fatalf("chunk type %d (errno %d) %q", r.typ, r.errno, r.payload)
		}
		var ext [][2]uint32
		for p := r.payload[4:]; len(p) >= 8; p = p[8:] {
			ext = append(ext, [2]uint32{be.Uint32(p), be.Uint32(p[4:])})
		}
		out = append(out, fmt.Sprintf("%d:%v", be.Uint32(r.payload), ext))
		if r.done() {
			return append(out, "done")
		}
	}
}

// TestDirtyBitmapBlockStatus: one chunk per selected bitmap, in context
// order, dirty runs flagged 1 and merged, clipped to the request, REQ_ONE
// honoured; the backend's block status is not asked for bitmaps alone.
func TestDirtyBitmapBlockStatus(t *testing.T) {
	s := bitmapServer(t)
	runBitmapStatusCases(t, s)
	// With base:allocation too the backend is asked, and its error fails
	// the request as a whole.
	c2, _ := s.connect(t, "e", true, "base:allocation", "qemu:dirty-bitmap:b0")
	if res := c2.roundTrip(cmdBlockStatus, 0, 0, 4096, nil); res.errno != 5 {
		t.Errorf("status with a failing backend: errno %d, want EIO", res.errno)
	}
}

// runBitmapStatusCases runs the block status cases on the exports
// bitmapServer describes, served by s.
func runBitmapStatusCases(t *testing.T, s *testServer) {
	c, x := s.connect(t, "e", true, "qemu:dirty-bitmap:b1", "qemu:dirty-bitmap:b0")
	if fmt.Sprint(x.contexts) != "map[qemu:dirty-bitmap:b0:2 qemu:dirty-bitmap:b1:3]" {
		t.Fatalf("contexts %v", x.contexts)
	}
	const k = 1024
	for _, tc := range []struct {
		name        string
		flags       uint16
		off, length uint32
		want        string
	}{
		{"whole", 0, 0, MiB, "[2:[[65536 0] [131072 1] [327680 0] [65536 1] [458752 0]] 3:[[4096 0] [4096 1] [1040384 0]] done]"},
		{"inside a run", 0, 70 * k, 10 * k, "[2:[[10240 1]] 3:[[10240 0]] done]"},
		{"ending in a run", 0, 0, 100 * k, "[2:[[65536 0] [36864 1]] 3:[[4096 0] [4096 1] [94208 0]] done]"},
		{"REQ_ONE", flagReqOne, 0, MiB, "[2:[[65536 0]] 3:[[4096 0]] done]"},
		{"REQ_ONE dirty", flagReqOne, 6 * k, 500 * k, "[2:[[59392 0]] 3:[[2048 1]] done]"},
		{"tail", 0, MiB - 4*k, 4 * k, "[2:[[4096 0]] 3:[[4096 0]] done]"},
	} {
		if got := fmt.Sprint(statusChunks(t, c, tc.flags, uint64(tc.off), tc.length)); got != tc.want {
			t.Errorf("%s:\n got %s\nwant %s", tc.name, got, tc.want)
		}
	}
	// A bitmap negotiated for another export does not carry over.
	c3 := s.dial(t)
	c3.greeting(3)
	c3.opt(optStructuredReply, nil)
	c3.structured = true
	c3.opt(optSetMetaContext, metaData("e", "qemu:dirty-bitmap:b0"))
	if _, typ := parseInfo(t, c3.opt(optGo, infoData("plain"))); typ != repAck {
		t.Fatal(typ)
	}
	if res := c3.roundTrip(cmdBlockStatus, 0, 0, 4096, nil); res.errno != 22 {
		t.Errorf("block status on the other export: errno %d, want EINVAL", res.errno)
	}
}

// TestDirtyBitmapReplyBounded: a bitmap fragmented into more runs than a
// chunk may carry is answered with the first maxExtents (8192) runs.
func TestDirtyBitmapReplyBounded(t *testing.T) {
	s := startServer(t, nbd.ServerOptions{})
	const size = 16 * MiB
	b := nbdtest.NewBitmap(size, 512)
	for off := int64(0); off < size; off += 1024 {
		b.Set(off, 1)
	}
	addExport(t, s, nbdtest.NewMem(size, 0), nbd.ExportOptions{Name: "e", Bitmaps: []nbd.ExportBitmap{{Name: "frag", Map: b}}})
	c, _ := s.connect(t, "e", true, "qemu:dirty-bitmap:frag")
	res := c.roundTrip(cmdBlockStatus, 0, 0, size, nil)
	ext := res.status[2]
	var total uint32
	for i, e := range ext {
		if e[0] != 512 || e[1] != uint32(1-i%2) {
			t.Fatalf("extent %d: %v", i, e)
		}
		total += e[0]
	}
	if len(ext) != 8192 || total != 4*MiB {
		t.Errorf("%d extents of %d bytes, want 8192 of 4 MiB", len(ext), total)
	}
}

func TestExportBitmapOptions(t *testing.T) {
	s := startServer(t, nbd.ServerOptions{})
	for _, o := range []nbd.ExportOptions{
		{Name: "nomap", Bitmaps: []nbd.ExportBitmap{{Name: "b"}}},
		{Name: "long", Bitmaps: []nbd.ExportBitmap{{Name: string(make([]byte, 4096-17)), Map: nbdtest.NewBitmap(1, 512)}}},
	} {
		if _, err := s.AddExport(nbdtest.NewMem(MiB, 0), o); err == nil {
			t.Errorf("export %q: no error", o.Name)
		}
	}
	// The longest name that fits a context name is fine.
	addExport(t, s, nbdtest.NewMem(MiB, 0), nbd.ExportOptions{Name: "ok",
		Bitmaps: []nbd.ExportBitmap{{Name: string(make([]byte, 4096-18)), Map: nbdtest.NewBitmap(1, 512)}}})
}

// TestDirtyBitmapExportReplaced: contexts selected on an export that is
// then replaced by another of the same name (fewer bitmaps) do not carry
// over to it, as in QEMU, which compares exports, not names.
func TestDirtyBitmapExportReplaced(t *testing.T) {
	s := startServer(t, nbd.ServerOptions{})
	bm := nbdtest.NewBitmap(MiB, 4096)
	addExport(t, s, nbdtest.NewMem(MiB, 0), nbd.ExportOptions{Name: "x",
		Bitmaps: []nbd.ExportBitmap{{Name: "a", Map: bm}, {Name: "b", Map: bm}}})
	c := s.dial(t)
	c.greeting(3)
	c.opt(optStructuredReply, nil)
	c.structured = true
	if got := fmt.Sprint(metaReplies(t, c, optSetMetaContext, metaData("x", "qemu:dirty-bitmap:b"))); got != "[3:qemu:dirty-bitmap:b ack]" {
		t.Fatalf("set: %s", got)
	}
	if err := s.RemoveExport("x", true); err != nil {
		t.Fatal(err)
	}
	addExport(t, s, nbdtest.NewMem(MiB, 0), nbd.ExportOptions{Name: "x"})
	if _, typ := parseInfo(t, c.opt(optGo, infoData("x"))); typ != repAck {
		t.Fatal(typ)
	}
	if res := c.roundTrip(cmdBlockStatus, 0, 0, 4096, nil); res.errno != 22 {
		t.Errorf("block status: errno %d, want EINVAL", res.errno)
	}
}
