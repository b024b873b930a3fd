package iotests

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
)

// The corruption cases of QEMU's iotest 060, written anew: each builds a
// qcow2 image with qemu-img and qemu-io, breaks one piece of its metadata
// at an offset read from the header, opens it in the daemon, sends the
// requests 060 sends over NBD, and checks on both daemons alike the
// BLOCK_IMAGE_CORRUPTED events, which requests fail, what the image looks
// like to `qemu-img check` afterwards, and, where 060 repairs the image,
// that `qemu-img check -r all` repairs it and the daemon can write to it
// again.

// qcowLayout is where a fresh image's metadata lies, read from its header.
type qcowLayout struct {
	refTable, refBlock, l1, l2 int64
}

const corruptCluster = 0x10000 // qemu-img's default cluster size

func readLayout(t *testing.T, path string) qcowLayout {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	at := func(off int64) int64 {
		if off+8 > int64(len(b)) {
			return 0
		}
		return int64(binary.BigEndian.Uint64(b[off:]) & 0x00fffffffffffe00)
	}
	l := qcowLayout{refTable: at(48), l1: at(40)}
	l.refBlock = at(l.refTable)
	l.l2 = at(l.l1)
	return l
}

// l2Entry is a standard-cluster L2 (or L1) entry: offset, flags.
func l2Entry(copied bool, off uint64) []byte {
	if copied {
		off |= 1 << 63
	}
	return be64(off)
}

// corruptStep is one qemu-io command sent over NBD, and whether it fails.
type corruptStep struct {
	cmd  string
	fail bool
}

// corruptEvent is the part of a BLOCK_IMAGE_CORRUPTED event a case
// expects (offset and size -1: absent).
type corruptEvent struct {
	msg          string
	offset, size int64
	fatal        bool
}

// checkResult is what `qemu-img check --output=json` says of an image.
type checkResult struct {
	Corruptions int  `json:"corruptions"`
	Leaks       int  `json:"leaks"`
	CheckErrors int  `json:"check-errors"`
	Corrupt     bool `json:"-"` // qemu-img info: the corrupt bit
}

type corruptCase struct {
	name string
	// prep: qemu-io commands on the fresh 64 MiB image (qemu-io -c each),
	// then an optional shell of qemu-img commands (snapshot).
	prep  []string
	after func(t *testing.T, p string)
	// poke breaks the image, given its layout after prep.
	poke func(t *testing.T, p string, l qcowLayout)
	// opts are more qcow2 options for blockdev-add.
	opts    map[string]any
	openErr string
	steps   []corruptStep
	events  []corruptEvent
	// check is what qemu-img check finds after the daemon let go.
	check checkResult
	// repair: `qemu-img check -r all` fixes the image, and the daemon
	// can then open it read-write and write to it.
	repair bool
	// differs says why blockd does otherwise, and blockd changes the
	// expectations above to what it does. Either way blockd must leave
	// the image no worse than it found it or than qsd leaves it.
	differs string
	blockd  func(*corruptCase)
}

func corruptCases() []corruptCase {
	// Discards reach the image only with discard=unmap (qemu-io's
	// default, where 060 runs them; blockdev-add's is ignore).
	unmap := map[string]any{"discard": "unmap"}
	return []corruptCase{
		{
			name: "L2 table onto the L1 table",
			poke: func(t *testing.T, p string, l qcowLayout) {
				patch(t, p, l.l1, l2Entry(true, uint64(l.l1)))
			},
			steps:  []corruptStep{{"write -P 0x2a 0 512", true}},
			events: []corruptEvent{{"Preventing invalid write on metadata (overlaps with active L1 table)", 0x30000, 512, true}},
			check:  checkResult{Corruptions: 1, Corrupt: true},
		},
		{
			name: "data cluster onto a refcount block",
			poke: func(t *testing.T, p string, l qcowLayout) {
				l2 := l.l1 + corruptCluster
				if err := os.Truncate(p, l2+corruptCluster); err != nil {
					t.Fatal(err)
				}
				patch(t, p, l.l1, l2Entry(true, uint64(l2)))
				patch(t, p, l.refBlock+2*(l2/corruptCluster), []byte{0, 1})
				patch(t, p, l2, l2Entry(true, uint64(l.refBlock)))
			},
			steps:  []corruptStep{{"write -P 0x2a 0 512", true}},
			repair: true,
			events: []corruptEvent{{"Preventing invalid write on metadata (overlaps with refcount block)", 0x20000, 512, true}},
			check:  checkResult{Corruptions: 2, Corrupt: true},
		},
		{
			name: "data cluster onto an inactive L2 table",
			prep: []string{"write -P 1 0 512"},
			after: func(t *testing.T, p string) {
				run(t, "qemu-img", "snapshot", "-c", "foo", p)
				run(t, "qemu-io", "-c", "write -P 2 0 512", p)
			},
			poke: func(t *testing.T, p string, l qcowLayout) {
				// The snapshot keeps the first L2 table; the write made
				// the active one a copy. Point the active entry at the
				// inactive table.
				old := readSnapshotL2(t, p)
				patch(t, p, l.l2, l2Entry(true, uint64(old)))
			},
			opts:    map[string]any{"overlap-check": "all"},
			steps:   []corruptStep{{"write -P 3 0 512", true}},
			repair:  true,
			events:  []corruptEvent{{"Preventing invalid write on metadata (overlaps with inactive L2 table)", 0x40000, 512, true}},
			check:   checkResult{Corruptions: 1, Leaks: 1, Corrupt: true},
			differs: "blockd's overlap check does not tell inactive L2 tables from active ones",
			blockd: func(c *corruptCase) {
				c.events[0].msg = "Preventing invalid write on metadata (overlaps with L2 table)"
			},
		},
		{
			name: "header cluster with refcount 0",
			prep: []string{"write 0 64k"},
			poke: func(t *testing.T, p string, l qcowLayout) {
				patch(t, p, l.refBlock, []byte{0, 0})
			},
			steps:   []corruptStep{{"write 64k 64k", true}},
			events:  []corruptEvent{{"Preventing invalid write on metadata (overlaps with qcow2_header)", 0, 0x10000, true}},
			check:   checkResult{Corruptions: 1, Corrupt: true},
			differs: "blockd refuses to allocate a metadata cluster whose refcount is 0 before it writes anything, where qsd allocates it and its overlap check then stops the write",
			blockd: func(c *corruptCase) {
				c.events = []corruptEvent{{"Preventing invalid allocation of cluster at offset 0x0: it has refcount 0 but holds the qcow2 header", 0, 0x10000, true}}
			},
		},
		{
			name:   "unaligned L1 entry",
			prep:   []string{"write 0 64k"},
			poke:   func(t *testing.T, p string, l qcowLayout) { patch(t, p, l.l1, l2Entry(true, uint64(l.l2)+0x2a00)) },
			steps:  []corruptStep{{"read 0 64k", true}},
			events: []corruptEvent{{"L2 table offset 0x42a00 unaligned (L1 index: 0)", -1, -1, true}},
			check:  checkResult{Corruptions: 2689, Corrupt: true},
		},
		{
			name:   "unaligned L2 entry",
			prep:   []string{"write 0 64k"},
			poke:   func(t *testing.T, p string, l qcowLayout) { patch(t, p, l.l2, l2Entry(true, uint64(l.l2)+0x12a00)) },
			steps:  []corruptStep{{"read 0 64k", true}},
			events: []corruptEvent{{"Cluster allocation offset 0x52a00 unaligned (L2 offset: 0x40000, L2 index: 0)", -1, -1, true}},
			check:  checkResult{Corruptions: 2, Corrupt: true},
		},
		{
			name:    "unaligned refcount table entry",
			poke:    func(t *testing.T, p string, l qcowLayout) { patch(t, p, l.refTable, be64(uint64(l.refBlock)+0x2a00)) },
			steps:   []corruptStep{{"write 0 64k", true}},
			events:  []corruptEvent{{"Refblock offset 0x22a00 unaligned (reftable index: 0)", -1, -1, true}},
			check:   checkResult{Corruptions: 1, CheckErrors: 4, Corrupt: true},
			differs: "blockd loads every refcount block at open and refuses the image there, with the same event",
			blockd: func(c *corruptCase) {
				c.openErr = "Refblock offset 0x22a00 unaligned (reftable index: 0)"
			},
		},
		{
			name:    "freeing an unaligned cluster",
			prep:    []string{"write 0 64k"},
			poke:    func(t *testing.T, p string, l qcowLayout) { patch(t, p, l.l2, l2Entry(true, uint64(l.l2)+0x12a00)) },
			opts:    unmap,
			steps:   []corruptStep{{"discard 0 64k", false}},
			events:  []corruptEvent{{"Cannot free unaligned cluster 0x52a00", -1, -1, false}},
			check:   checkResult{Leaks: 1},
			differs: "blockd's discard decodes the L2 entry as a read does, so an unaligned one is a fatal corruption rather than a cluster left leaked",
			blockd: func(c *corruptCase) {
				c.steps[0].fail = true
				c.events = []corruptEvent{{"Cluster allocation offset 0x52a00 unaligned (L2 offset: 0x40000, L2 index: 0)", -1, -1, true}}
				c.check = checkResult{Corruptions: 2, Corrupt: true}
			},
		},
		{
			name:   "read-only corruption is reported once",
			prep:   []string{"write 0 64k"},
			poke:   func(t *testing.T, p string, l qcowLayout) { patch(t, p, l.l2, l2Entry(true, uint64(l.l2)+0x12a00)) },
			opts:   map[string]any{"read-only": true},
			steps:  []corruptStep{{"read 0 64k", true}, {"read 0 64k", true}},
			events: []corruptEvent{{"Cluster allocation offset 0x52a00 unaligned (L2 offset: 0x40000, L2 index: 0)", -1, -1, false}},
			check:  checkResult{Corruptions: 2},
		},
		{
			name: "non-fatal then fatal corruption",
			prep: []string{"write 0 128k"},
			poke: func(t *testing.T, p string, l qcowLayout) {
				patch(t, p, l.l2, l2Entry(true, uint64(l.l2)+0x12a00))
				patch(t, p, l.l2+8, l2Entry(true, uint64(l.l2)+0x22a00))
			},
			opts:    unmap,
			steps:   []corruptStep{{"discard 0 64k", false}, {"read 64k 64k", true}},
			events:  []corruptEvent{{"Cannot free unaligned cluster 0x52a00", -1, -1, false}, {"Cluster allocation offset 0x62a00 unaligned (L2 offset: 0x40000, L2 index: 0x1)", -1, -1, true}},
			check:   checkResult{Corruptions: 2, Leaks: 1, Corrupt: true},
			differs: "as for freeing an unaligned cluster: the discard is the fatal corruption, and the read is refused",
			blockd: func(c *corruptCase) {
				c.steps[0].fail = true
				c.events = []corruptEvent{{"Cluster allocation offset 0x52a00 unaligned (L2 offset: 0x40000, L2 index: 0)", -1, -1, true}}
				c.check = checkResult{Corruptions: 4, Corrupt: true}
			},
		},
		{
			name:    "empty refcount table",
			poke:    func(t *testing.T, p string, l qcowLayout) { patch(t, p, l.refTable, be64(0)) },
			steps:   []corruptStep{{"write 0 64k", true}},
			repair:  true,
			events:  []corruptEvent{{"Preventing invalid write on metadata (overlaps with refcount table)", 0x10000, 0x10000, true}},
			check:   checkResult{Corruptions: 3, Corrupt: true},
			differs: "as for a header cluster with refcount 0",
			blockd: func(c *corruptCase) {
				c.events = []corruptEvent{{"Preventing invalid allocation of cluster at offset 0x0: it has refcount 0 but holds the qcow2 header", 0, 0x10000, true}}
			},
		},
		{
			name:    "empty refcount table with valid L1 and L2 tables",
			prep:    []string{"write 0 64k"},
			poke:    func(t *testing.T, p string, l qcowLayout) { patch(t, p, l.refTable, be64(0)) },
			steps:   []corruptStep{{"write 0 128k", true}},
			repair:  true,
			events:  []corruptEvent{{"Preventing invalid allocation of refcount block at offset 0", -1, -1, true}},
			check:   checkResult{Corruptions: 7, Corrupt: true},
			differs: "as for a header cluster with refcount 0",
			blockd: func(c *corruptCase) {
				c.events = []corruptEvent{{"Preventing invalid allocation of cluster at offset 0x0: it has refcount 0 but holds the qcow2 header", 0, 0x10000, true}}
			},
		},
		{
			name:    "empty refcount block",
			poke:    func(t *testing.T, p string, l qcowLayout) { patch(t, p, l.refBlock, be64(0)) },
			steps:   []corruptStep{{"write 0 64k", true}},
			repair:  true,
			events:  []corruptEvent{{"Preventing invalid allocation of L2 table at offset 0", -1, -1, true}},
			check:   checkResult{Corruptions: 4, Corrupt: true},
			differs: "as for a header cluster with refcount 0",
			blockd: func(c *corruptCase) {
				c.events = []corruptEvent{{"Preventing invalid allocation of cluster at offset 0x0: it has refcount 0 but holds the qcow2 header", 0, 0x10000, true}}
			},
		},
		{
			name:    "zero refcount table size",
			poke:    func(t *testing.T, p string, l qcowLayout) { patch(t, p, 56, be32(0)) },
			openErr: "Image does not contain a reference count table",
			check:   checkResult{Corruptions: 2},
		},
		{
			name:    "refcount table at offset 0",
			poke:    func(t *testing.T, p string, l qcowLayout) { patch(t, p, 48, be64(0)) },
			steps:   []corruptStep{{"write 0 64k", true}},
			events:  []corruptEvent{{"Preventing invalid allocation of L2 table at offset 0", -1, -1, true}},
			check:   checkResult{Corruptions: 31, Corrupt: true},
			differs: "as for a header cluster with refcount 0",
			blockd: func(c *corruptCase) {
				c.events = []corruptEvent{{"Preventing invalid allocation of cluster at offset 0x0: it has refcount 0 but holds the qcow2 header", 0, 0x10000, true}}
			},
		},
		{
			name: "dirty image with an unaligned refcount block",
			poke: func(t *testing.T, p string, l qcowLayout) {
				patch(t, p, l.refTable, be64(0xffff2a00))
				patch(t, p, 72, be64(1))
			},
			openErr: "Could not repair dirty image",
			repair:  true,
			events:  []corruptEvent{{"Refblock offset 0xffff2a00 unaligned (reftable index: 0)", -1, -1, true}},
			check:   checkResult{Leaks: 1, Corrupt: true},
			differs: "blockd's repair of a dirty image rebuilds the refcount structure without reading the broken refcount block, and succeeds",
			blockd: func(c *corruptCase) {
				c.openErr, c.events, c.check = "", nil, checkResult{}
			},
		},
		{
			name: "unaligned preallocated zero cluster",
			prep: []string{"write 0 64k", "discard 0 64k"},
			poke: func(t *testing.T, p string, l qcowLayout) {
				patch(t, p, l.l2, be64(1<<63|0x2a00|1))
			},
			steps:   []corruptStep{{"write 0 64k", true}},
			repair:  true,
			events:  []corruptEvent{{"Preallocated zero cluster offset 0x2a00 unaligned (guest offset: 0)", -1, -1, true}},
			check:   checkResult{Corruptions: 3, Corrupt: true},
			differs: "blockd names an unaligned zero cluster with the message of any unaligned cluster",
			blockd: func(c *corruptCase) {
				c.events[0].msg = "Cluster allocation offset 0x2a00 unaligned (L2 offset: 0x40000, L2 index: 0)"
			},
		},
		{
			name:    "discard with an unaligned refcount block",
			prep:    []string{"write 0 128k"},
			poke:    func(t *testing.T, p string, l qcowLayout) { patch(t, p, l.refTable, be64(0x2a00)) },
			opts:    unmap,
			steps:   []corruptStep{{"discard 0 65537", true}},
			repair:  true,
			events:  []corruptEvent{{"Refblock offset 0x2a00 unaligned (reftable index: 0)", -1, -1, true}},
			check:   checkResult{Corruptions: 1, CheckErrors: 7, Corrupt: true},
			differs: "blockd loads every refcount block at open and refuses the image there, with the same event",
			blockd: func(c *corruptCase) {
				c.openErr = "Refblock offset 0x2a00 unaligned (reftable index: 0)"
			},
		},
	}
}

// readSnapshotL2 returns the offset of the first L2 table of the image's
// first internal snapshot.
func readSnapshotL2(t *testing.T, p string) int64 {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	snaps := binary.BigEndian.Uint64(b[64:])
	l1 := binary.BigEndian.Uint64(b[snaps:])
	return int64(binary.BigEndian.Uint64(b[l1:]) & 0x00fffffffffffe00)
}

// TestCorruptImages060 runs the iotest 060 cases.
func TestCorruptImages060(t *testing.T) {
	d := start(t)
	sock := startNBD(d)
	for i, c := range corruptCases() {
		t.Run(c.name, func(t *testing.T) {
			p := d.Path(fmt.Sprintf("c%d.qcow2", i))
			run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-o", "compat=1.1", p, "64M")
			for _, cmd := range c.prep {
				run(t, "qemu-io", "-c", cmd, p)
			}
			if c.after != nil {
				c.after(t, p)
			}
			c.poke(t, p, readLayout(t, p))
			worst := imageCheck(t, p)
			if c.check.Corruptions > worst.Corruptions {
				worst = c.check
			}
			if c.blockd != nil && !isQSD() {
				t.Logf("blockd differs from qsd: %s", c.differs)
				c.blockd(&c)
			}
			node := fmt.Sprintf("c%d", i)
			d.ClearHistory()
			runCorruptCase(t, d, sock, node, p, c, worst)
		})
	}
	d.Cmd("query-version", nil)
}

func runCorruptCase(t *testing.T, d *Daemon, sock, node, p string, c corruptCase, worst checkResult) {
	args := map[string]any{"driver": "qcow2", "node-name": node, "file": map[string]any{"driver": "file", "filename": p}}
	for k, v := range c.opts {
		args[k] = v
	}
	_, qerr := d.Try("blockdev-add", args)
	if qerr != nil {
		t.Logf("open: %v", qerr)
		if c.openErr == "" || !strings.Contains(qerr.Desc, c.openErr) {
			t.Errorf("blockdev-add: %v; want %q", qerr, c.openErr)
		}
	} else {
		if c.openErr != "" {
			t.Errorf("blockdev-add succeeded; want %q", c.openErr)
		}
		ro, _ := c.opts["read-only"].(bool)
		d.Cmd("block-export-add", map[string]any{"type": "nbd", "id": node, "node-name": node, "writable": !ro})
		for _, s := range c.steps {
			args := []string{"-f", "raw", "-c", s.cmd, nbdURI(sock, node)}
			if ro {
				args = append([]string{"-r"}, args...)
			}
			out, err := runErr("qemu-io", args...)
			failed := err != nil || strings.Contains(out, "failed")
			t.Logf("%s: %v %s", s.cmd, err, strings.TrimSpace(out))
			if failed != s.fail {
				t.Errorf("%s: failed %v, want %v: %s", s.cmd, failed, s.fail, out)
			}
		}
		d.DelExport(node)
		d.Cmd("blockdev-del", map[string]any{"node-name": node})
	}
	var got []corruptEvent
	for _, e := range d.History() {
		if e.Event != "BLOCK_IMAGE_CORRUPTED" {
			continue
		}
		t.Logf("event: %v", e.Data)
		ce := corruptEvent{offset: -1, size: -1}
		ce.msg, _ = e.Data["msg"].(string)
		ce.fatal, _ = e.Data["fatal"].(bool)
		if v, ok := e.Data["offset"].(float64); ok {
			ce.offset = int64(v)
		}
		if v, ok := e.Data["size"].(float64); ok {
			ce.size = int64(v)
		}
		if e.Data["node-name"] != node || e.Data["device"] != "" {
			t.Errorf("event names %v/%v, want node %s and device \"\"", e.Data["node-name"], e.Data["device"], node)
		}
		got = append(got, ce)
	}
	if len(got) != len(c.events) || len(got) > 0 && !reflect.DeepEqual(got, c.events) {
		t.Errorf("events %+v\nwant %+v", got, c.events)
	}
	cr := imageCheck(t, p)
	t.Logf("check: %+v", cr)
	if cr != c.check {
		t.Errorf("qemu-img check: %+v, want %+v", cr, c.check)
	}
	if cr.Corruptions > worst.Corruptions || cr.CheckErrors > worst.CheckErrors {
		t.Errorf("qemu-img check: %+v, worse than the broken image or qsd's result (%+v)", cr, worst)
	}
	if c.repair {
		// As in 060, a repair that finds the refcount structure itself
		// broken may need a second pass.
		for pass := 1; ; pass++ {
			out, _ := runErr("qemu-img", "check", "-r", "all", p)
			t.Logf("repair: %s", out)
			cr := imageCheck(t, p)
			if cr == (checkResult{}) {
				break
			}
			if pass == 2 {
				t.Fatalf("after repair: %+v", cr)
			}
		}
		d.Cmd("blockdev-add", map[string]any{"driver": "qcow2", "node-name": node, "file": map[string]any{"driver": "file", "filename": p}})
		d.Cmd("block-export-add", map[string]any{"type": "nbd", "id": node, "node-name": node, "writable": true})
		if out, err := runErr("qemu-io", "-f", "raw", "-c", "write -P 0x2a 0 512", nbdURI(sock, node)); err != nil || strings.Contains(out, "failed") {
			t.Errorf("write after repair: %v %s", err, out)
		}
		d.DelExport(node)
		d.Cmd("blockdev-del", map[string]any{"node-name": node})
		if cr := imageCheck(t, p); cr != (checkResult{}) {
			t.Errorf("after a write into the repaired image: %+v", cr)
		}
	}
}

// imageCheck runs qemu-img check and info on the image.
func imageCheck(t *testing.T, p string) checkResult {
	t.Helper()
	out, _ := runErr("qemu-img", "check", "--output=json", p)
	var cr checkResult
	if i := strings.IndexByte(out, '{'); i >= 0 {
		if err := json.Unmarshal([]byte(out[i:]), &cr); err != nil {
			t.Fatalf("qemu-img check: %v: %s", err, out)
		}
	} else {
		t.Fatalf("qemu-img check: %s", out)
	}
	info, _ := runErr("qemu-img", "info", "--output=json", "-U", p)
	cr.Corrupt = strings.Contains(info, `"corrupt": true`)
	return cr
}

// TestHeaderNamesNoProtocol: the CVE-2024-4467 class. A backing or data
// file name in an untrusted image's header that names a protocol (or is
// a json: pseudo-filename) must not make blockd connect anywhere. A
// listener stands in for the server such a name points at and counts
// connections.
//
// qsd 7.2.22 (with the CVE fix) reads a data file name as a plain file
// name, but still follows protocol and json: backing names from headers;
// blockd refuses both kinds, and a user who wants such a chain names the
// backing in blockdev-add.
func TestHeaderNamesNoProtocol(t *testing.T) {
	d := start(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var conns atomic.Int32
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns.Add(1)
			c.Close()
		}
	}()
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	nbdName := "nbd:127.0.0.1:" + port
	// The options are those of the backing's protocol node: -F raw names
	// the format.
	jsonName := `json:{"file":{"driver":"nbd","server":{"type":"inet","host":"127.0.0.1","port":"` + port + `"},"export":"x"}}`
	cases := []struct {
		name string
		make func(p string)
		// qsdFollows: qsd opens what the name says.
		qsdFollows bool
	}{
		{"backing nbd:", func(p string) {
			run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-u", "-b", nbdName, "-F", "raw", p, "1M")
		}, true},
		{"backing nbd://", func(p string) {
			run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-u", "-b", "nbd://127.0.0.1:"+port+"/x", "-F", "raw", p, "1M")
		}, true},
		{"backing json:", func(p string) {
			run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-u", "-b", jsonName, "-F", "raw", p, "1M")
		}, true},
		{"data file nbd:", func(p string) {
			run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-o", "data_file="+p+".data", p, "1M")
			run(t, "qemu-img", "amend", "-o", "data_file="+nbdName, p)
		}, false},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := d.Path(fmt.Sprintf("n%d.qcow2", i))
			c.make(p)
			before := conns.Load()
			_, qerr := d.Try("blockdev-add", map[string]any{"driver": "qcow2", "node-name": "n", "read-only": true,
				"file": map[string]any{"driver": "file", "filename": p}})
			connected := conns.Load() != before
			t.Logf("blockdev-add: %v; connected: %v", qerr, connected)
			if qerr == nil {
				d.Cmd("blockdev-del", map[string]any{"node-name": "n"})
			}
			if isQSD() && c.qsdFollows {
				// Recorded so that a change in qsd shows up here.
				if !connected {
					t.Errorf("qsd no longer follows the name")
				}
				return
			}
			if qerr == nil || connected {
				t.Errorf("the header's name was followed: error %v, connected %v", qerr, connected)
			}
		})
	}
	if n := namedNodes(d, true); len(n) != 0 {
		t.Errorf("nodes left: %v", n)
	}
}
