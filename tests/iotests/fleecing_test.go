package iotests

import (
	"strings"
	"testing"
	"time"
)

// Pull-mode backup ("fleecing"): a copy-before-write filter goes above
// the guest's disk, a snapshot-access node over it presents the disk as
// it was then, and a client reads that view over NBD while the guest
// writes. The layout is QEMU's image-fleecing test's: four 64 KiB
// patterns, then overwrites that each hit one of them in another way.

var (
	fleecePatterns  = [][3]string{{"0x5d", "0", "64k"}, {"0xd5", "1M", "64k"}, {"0xdc", "32M", "64k"}, {"0xcd", "0x3ff0000", "64k"}}
	fleeceOverwrite = [][3]string{
		{"0xab", "0", "64k"},         // the whole of one
		{"0xad", "0x00f8000", "64k"}, // the left half of one and before it
		{"0x1d", "0x2008000", "64k"}, // the right half of one and after it
		{"0xea", "0x3fe0000", "64k"}, // the cluster left of one
	}
	fleeceZeroes = [][3]string{{"0", "0x00f8000", "32k"}, {"0", "0x2010000", "32k"}, {"0", "0x3fe0000", "64k"}}
)

// qemuIOCmds turns patterns into qemu-io "-c" arguments of verb.
func qemuIOCmds(verb string, ps ...[][3]string) []string {
	var args []string
	for _, set := range ps {
		for _, p := range set {
			args = append(args, "-c", verb+" -P "+p[0]+" "+p[1]+" "+p[2])
		}
	}
	return args
}

// fleeceSetup makes base.qcow2 (64 MiB, the patterns written, bitmap
// b0 recording them if withBitmap) and fleece.raw, starts the daemon
// with the NBD server, adds the disk (qcow2 "source" under a raw "dev",
// exported writable as the guest's "dev"), the fleecing target "temp",
// the filter "fl-cbw" (extra options in cbw) and moves dev onto it. It
// returns the daemon and the NBD socket.
func fleeceSetup(t *testing.T, withBitmap bool, cbw map[string]any) (*Daemon, string) {
	t.Helper()
	d := start(t)
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", d.Path("base.qcow2"), "64M")
	if withBitmap {
		run(t, "qemu-img", "bitmap", "--add", d.Path("base.qcow2"), "b0")
	}
	run(t, "qemu-io", append([]string{"-f", "qcow2"}, append(qemuIOCmds("write", fleecePatterns), d.Path("base.qcow2"))...)...)
	run(t, "cp", d.Path("base.qcow2"), d.Path("ref.qcow2"))
	mkRaw(t, d.Path("fleece.raw"), "64M")
	sock := startNBD(d)
	addQcow2(d, "source", "base.qcow2", nil)
	d.Cmd("blockdev-add", map[string]any{"driver": "raw", "node-name": "dev", "file": "source"})
	d.Cmd("block-export-add", map[string]any{"type": "nbd", "id": "dev", "node-name": "dev", "writable": true})
	d.Cmd("blockdev-add", map[string]any{"driver": "file", "node-name": "temp", "filename": d.Path("fleece.raw")})
	o := map[string]any{"driver": "copy-before-write", "node-name": "fl-cbw", "file": "source", "target": "temp"}
	for k, v := range cbw {
		o[k] = v
	}
	d.Cmd("blockdev-add", o)
	d.Cmd("blockdev-reopen", map[string]any{"options": []any{map[string]any{"driver": "raw", "node-name": "dev", "file": "fl-cbw"}}})
	return d, sock
}

// fleeceAccess adds the snapshot-access node "fl-access" and exports it
// as "fl" (read-only unless writable; a writable one passes discards
// down, which the node's default discard=ignore would drop).
func fleeceAccess(d *Daemon, writable bool) {
	o := map[string]any{"driver": "snapshot-access", "node-name": "fl-access", "file": "fl-cbw"}
	if writable {
		o["discard"] = "unmap"
	}
	d.Cmd("blockdev-add", o)
	d.Cmd("block-export-add", map[string]any{"type": "nbd", "id": "fl", "name": "fl", "node-name": "fl-access", "writable": writable})
}

// fleeceTeardown takes the fleecing graph down in the order a client
// would (export, access node, the guest back onto its disk, filter,
// target), quits, and checks the disk image.
func fleeceTeardown(t *testing.T, d *Daemon) {
	t.Helper()
	d.DelExport("fl")
	d.Cmd("blockdev-del", map[string]any{"node-name": "fl-access"})
	d.Cmd("blockdev-reopen", map[string]any{"options": []any{map[string]any{"driver": "raw", "node-name": "dev", "file": "source"}}})
	d.Cmd("blockdev-del", map[string]any{"node-name": "fl-cbw"})
	d.Cmd("blockdev-del", map[string]any{"node-name": "temp"})
	d.DelExport("dev")
	d.Quit()
	run(t, "qemu-img", "check", d.Path("base.qcow2"))
}

// TestFleecingSnapshotAccess: the exported view reads as the disk did
// when the filter went in, before and after the guest overwrites parts
// of it (qemu-img compare against a copy made then); the guest's writes
// reach the disk.
func TestFleecingSnapshotAccess(t *testing.T) {
	d, sock := fleeceSetup(t, false, nil)
	fleeceAccess(d, false)
	fl, dev := nbdURI(sock, "fl"), nbdURI(sock, "dev")
	run(t, "qemu-io", append([]string{"-r", "-f", "raw"}, append(qemuIOCmds("read", fleecePatterns, fleeceZeroes), fl)...)...)
	run(t, "qemu-io", append([]string{"-f", "raw"}, append(qemuIOCmds("write", fleeceOverwrite), dev)...)...)
	run(t, "qemu-io", append([]string{"-r", "-f", "raw"}, append(qemuIOCmds("read", fleecePatterns, fleeceZeroes), fl)...)...)
	run(t, "qemu-img", "compare", "-f", "raw", "-F", "qcow2", fl, d.Path("ref.qcow2"))
	// The guest sees its own writes.
	run(t, "qemu-io", append([]string{"-r", "-f", "raw"}, append(qemuIOCmds("read", fleeceOverwrite), dev)...)...)
	fleeceTeardown(t, d)
	remainder := [][3]string{{"0xd5", "0x108000", "32k"}, {"0xdc", "32M", "32k"}, {"0xcd", "0x3ff0000", "64k"}}
	run(t, "qemu-io", append([]string{"-r", "-f", "qcow2"}, append(qemuIOCmds("read", fleeceOverwrite, remainder), d.Path("base.qcow2"))...)...)
}

// TestFleecingBitmap: with a bitmap, the view holds only the clusters
// dirty in it; a read elsewhere is refused, the rest reads as at the
// start. (The view fails such reads with EACCES, which NBD has no code
// for: the client sees EINVAL, as NBD servers send unknown errors.)
func TestFleecingBitmap(t *testing.T) {
	d, sock := fleeceSetup(t, true, map[string]any{"bitmap": map[string]any{"node": "source", "name": "b0"}})
	fleeceAccess(d, false)
	fl, dev := nbdURI(sock, "fl"), nbdURI(sock, "dev")
	run(t, "qemu-io", append([]string{"-f", "raw"}, append(qemuIOCmds("write", fleeceOverwrite), dev)...)...)
	run(t, "qemu-io", append([]string{"-r", "-f", "raw"}, append(qemuIOCmds("read", fleecePatterns), fl)...)...)
	out, _ := runErr("qemu-io", "-r", "-f", "raw", "-c", "read 2M 64k", fl)
	if !strings.Contains(out, "Invalid argument") {
		t.Errorf("a read outside the bitmap: %q, want Invalid argument", out)
	}
	fleeceTeardown(t, d)
}

// TestFleecingDiscard: a discard through the view drops its clusters
// from it (later reads are refused); clusters around it stay.
func TestFleecingDiscard(t *testing.T) {
	d, sock := fleeceSetup(t, false, nil)
	fleeceAccess(d, true)
	fl, dev := nbdURI(sock, "fl"), nbdURI(sock, "dev")
	run(t, "qemu-io", "-f", "raw", "-c", "discard 1M 64k", fl)
	run(t, "qemu-io", "-f", "raw", "-c", "write -P 0x99 1M 64k", dev)
	out, _ := runErr("qemu-io", "-r", "-f", "raw", "-c", "read 1M 64k", fl)
	if !strings.Contains(out, "Invalid argument") {
		t.Errorf("a read of a discarded range: %q, want Invalid argument", out)
	}
	run(t, "qemu-io", "-r", "-f", "raw", "-c", "read -P 0x5d 0 64k", "-c", "read -P 0 1088k 64k", fl)
	// The view cannot be written.
	out, _ = runErr("qemu-io", "-f", "raw", "-c", "write 0 64k", fl)
	if !strings.Contains(out, "Operation not supported") {
		t.Errorf("a write to the view: %q, want Operation not supported", out)
	}
	fleeceTeardown(t, d)
}

// TestFleecingCopyErrors: a target that fails writes (blkdebug) fails
// the guest's write by default, and with on-cbw-error=break-snapshot
// lets it through and breaks the view instead.
func TestFleecingCopyErrors(t *testing.T) {
	for _, mode := range []string{"break-guest-write", "break-snapshot"} {
		t.Run(mode, func(t *testing.T) {
			d := start(t)
			run(t, "qemu-img", "create", "-q", "-f", "qcow2", d.Path("base.qcow2"), "64M")
			run(t, "qemu-io", "-f", "qcow2", "-c", "write -P 0x5d 0 1M", d.Path("base.qcow2"))
			mkRaw(t, d.Path("fleece.raw"), "64M")
			sock := startNBD(d)
			addQcow2(d, "source", "base.qcow2", nil)
			d.Cmd("blockdev-add", map[string]any{"driver": "raw", "node-name": "temp", "file": map[string]any{
				"driver": "blkdebug", "image": map[string]any{"driver": "file", "filename": d.Path("fleece.raw")},
				"inject-error": []any{map[string]any{"event": "write_aio", "errno": 5}}}})
			d.Cmd("blockdev-add", map[string]any{"driver": "copy-before-write", "node-name": "fl-cbw", "file": "source", "target": "temp", "on-cbw-error": mode})
			d.Cmd("block-export-add", map[string]any{"type": "nbd", "id": "dev", "name": "dev", "node-name": "fl-cbw", "writable": true})
			fleeceAccess(d, false)
			fl, dev := nbdURI(sock, "fl"), nbdURI(sock, "dev")
			run(t, "qemu-io", "-r", "-f", "raw", "-c", "read -P 0x5d 0 64k", fl)
			out, err := runErr("qemu-io", "-f", "raw", "-c", "write -P 0x77 0 64k", dev)
			view, _ := runErr("qemu-io", "-r", "-f", "raw", "-c", "read -P 0x5d 128k 64k", fl)
			if mode == "break-guest-write" {
				if err == nil || !strings.Contains(out, "Input/output error") {
					t.Errorf("the guest's write: %v %q, want an I/O error", err, out)
				}
				if !strings.Contains(view, "read 65536/65536") {
					t.Errorf("the view after the failed copy: %q", view)
				}
				run(t, "qemu-io", "-r", "-f", "raw", "-c", "read -P 0x5d 0 64k", dev)
			} else {
				if err != nil || strings.Contains(out, "error") {
					t.Errorf("the guest's write: %v %q, want it through", err, out)
				}
				if !strings.Contains(view, "Invalid argument") {
					t.Errorf("the broken view: %q, want Invalid argument", view)
				}
				run(t, "qemu-io", "-r", "-f", "raw", "-c", "read -P 0x77 0 64k", dev)
			}
			d.DelExport("fl")
			d.DelExport("dev")
			d.Quit()
			run(t, "qemu-img", "check", d.Path("base.qcow2"))
		})
	}
}

// TestFleecingErrors: the filter's bitmap must exist; a snapshot-access
// node over a node that keeps no view opens, and its reads fail with
// ENOTSUP.
func TestFleecingErrors(t *testing.T) {
	d := start(t)
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", d.Path("base.qcow2"), "64M")
	mkRaw(t, d.Path("fleece.raw"), "64M")
	sock := startNBD(d)
	addQcow2(d, "source", "base.qcow2", nil)
	d.Cmd("blockdev-add", map[string]any{"driver": "file", "node-name": "temp", "filename": d.Path("fleece.raw")})
	cbw := func(bitmap map[string]any) map[string]any {
		return map[string]any{"driver": "copy-before-write", "node-name": "fl-cbw", "file": "source", "target": "temp", "bitmap": bitmap}
	}
	d.MustFail("blockdev-add", cbw(map[string]any{"node": "nosuch", "name": "b0"}), "GenericError", "Node 'nosuch' not found")
	d.MustFail("blockdev-add", cbw(map[string]any{"node": "source", "name": "b0"}), "GenericError", "Dirty bitmap 'b0' not found")
	if n := filtersOf(d, "copy-before-write"); len(n) != 0 {
		t.Errorf("a failed blockdev-add left %v", n)
	}
	d.Cmd("blockdev-add", map[string]any{"driver": "snapshot-access", "node-name": "sa", "file": "source"})
	d.Cmd("block-export-add", map[string]any{"type": "nbd", "id": "sa", "node-name": "sa"})
	out, _ := runErr("qemu-io", "-r", "-f", "raw", "-c", "read 0 64k", nbdURI(sock, "sa"))
	if !strings.Contains(out, "Operation not supported") {
		t.Errorf("a read of snapshot-access over a qcow2 node: %q, want Operation not supported", out)
	}
	d.DelExport("sa")
	d.Quit()
}

// TestFleecingTimeout: a copy slower than cbw-timeout (the target is
// throttled) with on-cbw-error=break-snapshot lets the guest's write
// through after the timeout and breaks the view; the copy still running
// then does not keep the daemon from quitting cleanly.
func TestFleecingTimeout(t *testing.T) {
	d := start(t)
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", d.Path("base.qcow2"), "64M")
	run(t, "qemu-io", "-f", "qcow2", "-c", "write -P 0x5d 0 2M", d.Path("base.qcow2"))
	mkRaw(t, d.Path("fleece.raw"), "64M")
	sock := startNBD(d)
	addQcow2(d, "source", "base.qcow2", nil)
	d.Cmd("object-add", map[string]any{"qom-type": "throttle-group", "id": "tg", "limits": map[string]any{"bps-write": 128 << 10}})
	d.Cmd("blockdev-add", map[string]any{"driver": "throttle", "node-name": "temp", "throttle-group": "tg",
		"file": map[string]any{"driver": "file", "filename": d.Path("fleece.raw")}})
	d.Cmd("blockdev-add", map[string]any{"driver": "copy-before-write", "node-name": "fl-cbw", "file": "source", "target": "temp",
		"on-cbw-error": "break-snapshot", "cbw-timeout": 1})
	d.Cmd("block-export-add", map[string]any{"type": "nbd", "id": "dev", "name": "dev", "node-name": "fl-cbw", "writable": true})
	fleeceAccess(d, false)
	fl, dev := nbdURI(sock, "fl"), nbdURI(sock, "dev")
	run(t, "qemu-io", "-r", "-f", "raw", "-c", "read -P 0x5d 0 64k", fl)
	// A copy passes the throttle when its bucket is (nearly) empty, and
	// fills it: after a 1 MiB copy the next waits about eight seconds.
	// One qemu-io makes both writes, so the bucket has no time to drain
	// between them however slowly the process starts.
	start := time.Now()
	run(t, "qemu-io", "-f", "raw", "-c", "write -P 0x66 0 1M", "-c", "write -P 0x77 1M 512k", dev)
	if el := time.Since(start); el > 6*time.Second {
		t.Errorf("the guest's writes took %v: the 1 s timeout did not let the second through", el)
	}
	out, _ := runErr("qemu-io", "-r", "-f", "raw", "-c", "read 0 64k", fl)
	if !strings.Contains(out, "Invalid argument") {
		t.Errorf("the view after a timed-out copy: %q, want Invalid argument", out)
	}
	d.DelExport("fl")
	d.DelExport("dev")
	d.Quit()
	run(t, "qemu-img", "check", d.Path("base.qcow2"))
	run(t, "qemu-io", "-r", "-f", "qcow2", "-c", "read -P 0x66 0 1M", "-c", "read -P 0x77 1M 512k", d.Path("base.qcow2"))
}
