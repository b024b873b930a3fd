package iotests

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
)

// blkdebugQcow2 makes a 64 MiB qcow2 image whose first 8 MiB of guest
// data (pattern 0x22) are allocated, and returns the guest offset whose
// data lies at host sector 1024.
func blkdebugQcow2(t *testing.T, d *Daemon) (img string, guest int64) {
	t.Helper()
	img = d.Path("x.qcow2")
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", img, "64M")
	run(t, "qemu-io", "-f", "qcow2", "-c", "write -P 0x22 0 8M", img)
	var m []struct {
		Start, Length, Offset int64
		Data                  bool
	}
	if err := json.Unmarshal([]byte(run(t, "qemu-img", "map", "--output=json", img)), &m); err != nil {
		t.Fatal(err)
	}
	const host = 1024 * 512
	for _, e := range m {
		if e.Data && e.Offset <= host && host < e.Offset+e.Length {
			return img, e.Start + host - e.Offset
		}
	}
	t.Fatalf("no guest data at host offset %d: %+v", host, m)
	return "", 0
}

// exportRead reads n bytes at off of the export with qemu-io, expecting
// the pattern, and returns qemu-io's output and whether the read failed.
func exportRead(t *testing.T, uri string, off, n int64) (string, bool) {
	t.Helper()
	out, _ := runErr("qemu-io", "-r", "-f", "raw", "-c", fmt.Sprintf("read -P 0x22 %d %d", off, n), uri)
	failed := strings.Contains(out, "read failed")
	if !failed && !strings.Contains(out, fmt.Sprintf("read %d/%d bytes", n, n)) {
		t.Fatalf("qemu-io read %d+%d:\n%s", off, n, out)
	}
	return out, failed
}

// TestBlkdebugQcow2ReadAIO: qcow2 fires read_aio into its file before it
// reads guest data, so a blkdebug rule on read_aio with a sector fails
// the first guest read whose data covers that host sector, once; reads
// elsewhere are not affected.
func TestBlkdebugQcow2ReadAIO(t *testing.T) {
	d := start(t)
	img, guest := blkdebugQcow2(t, d)
	d.Cmd("blockdev-add", map[string]any{"driver": "qcow2", "node-name": "top", "file": map[string]any{
		"driver": "blkdebug", "node-name": "bd",
		"image":        map[string]any{"driver": "file", "filename": img},
		"inject-error": []any{map[string]any{"event": "read_aio", "errno": 5, "sector": 1024, "once": true}}}})
	uri := nbdURI(startNBD(d), "top")
	d.Cmd("block-export-add", map[string]any{"type": "nbd", "id": "e0", "node-name": "top"})
	if out, failed := exportRead(t, uri, 0, 65536); failed {
		t.Fatalf("a read away from host sector 1024 failed:\n%s", out)
	}
	first := guest &^ 65535
	if out, failed := exportRead(t, uri, first, 65536); !failed || !strings.Contains(out, "Input/output error") {
		t.Fatalf("the read of host sector 1024 did not fail with EIO:\n%s", out)
	}
	if out, failed := exportRead(t, uri, first, 65536); failed {
		t.Fatalf("the second read of host sector 1024 failed (once):\n%s", out)
	}
}

// TestBlkdebugQcow2L2Load: qcow2 fires l2_load into its file when it
// reads an L2 table, so a rule on l2_load fails the first guest read
// (the table is not cached yet), once; the next read loads the table
// again and succeeds. The event reaches only the node qcow2 fires it
// into: with a raw node between qcow2 and blkdebug, the rule never arms
// (as in qsd 7.2).
func TestBlkdebugQcow2L2Load(t *testing.T) {
	rule := []any{map[string]any{"event": "l2_load", "errno": 5, "once": true}}
	t.Run("file", func(t *testing.T) {
		d := start(t)
		img, _ := blkdebugQcow2(t, d)
		d.Cmd("blockdev-add", map[string]any{"driver": "qcow2", "node-name": "top", "file": map[string]any{
			"driver": "blkdebug", "node-name": "bd", "inject-error": rule,
			"image": map[string]any{"driver": "file", "filename": img}}})
		uri := nbdURI(startNBD(d), "top")
		d.Cmd("block-export-add", map[string]any{"type": "nbd", "id": "e0", "node-name": "top"})
		if out, failed := exportRead(t, uri, 0, 65536); !failed || !strings.Contains(out, "Input/output error") {
			t.Fatalf("the first read (L2 load) did not fail with EIO:\n%s", out)
		}
		for _, off := range []int64{0, 4 << 20} {
			if out, failed := exportRead(t, uri, off, 65536); failed {
				t.Fatalf("read at %d after the injected error failed:\n%s", off, out)
			}
		}
	})
	t.Run("under raw", func(t *testing.T) {
		d := start(t)
		img, _ := blkdebugQcow2(t, d)
		d.Cmd("blockdev-add", map[string]any{"driver": "qcow2", "node-name": "top", "file": map[string]any{
			"driver": "raw", "file": map[string]any{
				"driver": "blkdebug", "node-name": "bd", "inject-error": rule,
				"image": map[string]any{"driver": "file", "filename": img}}}})
		uri := nbdURI(startNBD(d), "top")
		d.Cmd("block-export-add", map[string]any{"type": "nbd", "id": "e0", "node-name": "top"})
		if out, failed := exportRead(t, uri, 0, 65536); failed {
			t.Fatalf("qcow2's l2_load reached blkdebug through a raw node:\n%s", out)
		}
	})
}
