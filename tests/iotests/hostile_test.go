package iotests

import (
	"encoding/binary"
	"fmt"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"
)

// patch writes b at off into the file.
func patch(t *testing.T, path string, off int64, b []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

func be64(v uint64) []byte { return binary.BigEndian.AppendUint64(nil, v) }
func be32(v uint32) []byte { return binary.BigEndian.AppendUint32(nil, v) }

// TestHostileImages: malformed images are refused with an error (the
// wording is each daemon's own), nothing stays in the graph, and the
// daemon keeps serving.
func TestHostileImages(t *testing.T) {
	d := start(t)
	mk := func(name string) string {
		p := d.Path(name)
		run(t, "qemu-img", "create", "-q", "-f", "qcow2", p, "64M")
		run(t, "qemu-io", "-c", "write -P 0x11 0 1M", p)
		return p
	}
	cases := []struct {
		name   string
		break_ func(path string)
		// qsdHangs: qsd 7.2 never answers (it loops opening the chain).
		qsdHangs bool
	}{
		{name: "L1 table past the end", break_: func(p string) { patch(t, p, 40, be64(1<<40)) }},
		{name: "L1 table in the header", break_: func(p string) { patch(t, p, 40, be64(0)) }},
		{name: "huge L1 size", break_: func(p string) { patch(t, p, 36, be32(0x7fffffff)) }},
		{name: "cluster bits 40", break_: func(p string) { patch(t, p, 20, be32(40)) }},
		{name: "refcount table past the end", break_: func(p string) { patch(t, p, 48, be64(1<<50)) }},
		{name: "truncated file", break_: func(p string) { os.Truncate(p, 1000) }},
		{name: "unknown incompatible feature", break_: func(p string) { patch(t, p, 72, be64(1<<40)) }},
		{name: "backing file is itself", break_: func(p string) {
			run(t, "qemu-img", "rebase", "-u", "-b", p, "-F", "qcow2", p)
		}, qsdHangs: true},
	}
	sock := startNBD(d)
	for i, c := range cases {
		if c.qsdHangs && isQSD() {
			t.Logf("%s: skipped: qemu-storage-daemon 7.2 hangs opening it read-only", c.name)
			continue
		}
		p := mk("h" + string(rune('a'+i)) + ".qcow2")
		c.break_(p)
		// Read-only: both daemons check some tables only when they use
		// them; then the read must fail cleanly.
		_, err := d.Try("blockdev-add", map[string]any{"driver": "qcow2", "node-name": "h", "read-only": true, "file": map[string]any{"driver": "file", "filename": p}})
		if err != nil {
			t.Logf("%s: refused: %s", c.name, err.Desc)
			continue
		}
		d.Cmd("block-export-add", map[string]any{"type": "nbd", "id": "h", "node-name": "h"})
		out, rerr := runErr("qemu-io", "-r", "-f", "raw", "-c", "read 0 1M", nbdURI(sock, "h"))
		t.Logf("%s: opened; reading it: %v %s", c.name, rerr, out)
		d.Cmd("block-export-del", map[string]any{"id": "h", "mode": "hard"})
		d.WaitEvent("BLOCK_EXPORT_DELETED", 10e9)
		d.Cmd("blockdev-del", map[string]any{"node-name": "h"})
	}
	if n := namedNodes(d, true); len(n) != 0 {
		t.Errorf("nodes left after failed opens: %v", n)
	}
	d.Cmd("query-version", nil)
}

// TestHostileFIFOBacking: an image whose header names a FIFO as its
// backing file is refused with a clear error instead of hanging the
// daemon in open(2).
func TestHostileFIFOBacking(t *testing.T) {
	skipOnQSD(t, "qsd 7.2 hangs in open(2) of the FIFO")
	d := start(t)
	fifo := d.Path("fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	// The format is given: without one, qemu-img cannot make the image
	// (blockd's probe of such a path is covered by a unit test).
	for i, format := range []string{"raw", "qcow2"} {
		img := d.Path(fmt.Sprintf("img%d.qcow2", i))
		run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-u", "-b", fifo, "-F", format, img, "1M")
		errc := make(chan *QMPError, 1)
		go func() {
			_, qerr := d.Try("blockdev-add", map[string]any{"driver": "qcow2", "node-name": fmt.Sprint("n", i),
				"file": map[string]any{"driver": "file", "filename": img}})
			errc <- qerr
		}()
		select {
		case qerr := <-errc:
			want := fmt.Sprintf("'file' driver requires '%s' to be either a regular file or a block device", fifo)
			if qerr == nil || !strings.Contains(qerr.Desc, want) {
				t.Errorf("image %d: %v, want an error containing %q", i, qerr, want)
			}
		case <-time.After(20 * time.Second):
			t.Fatalf("image %d: blockdev-add hangs on a FIFO backing file", i)
		}
	}
}
