package iotests

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// requireFUSE skips a test where FUSE exports cannot work at all.
func requireFUSE(t *testing.T) {
	t.Helper()
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Skipf("no /dev/fuse here: %v", err)
	}
}

// mountpoint creates the regular file an export will be mounted over, and
// makes sure no mount is left on it whatever happens to the daemon (after
// kill -9 a dead mount stays until someone unmounts it).
func mountpoint(t *testing.T, d *Daemon, name string) string {
	t.Helper()
	p := d.Path(name)
	if err := os.WriteFile(p, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for mounted(p) {
			if err := syscall.Unmount(p, syscall.MNT_FORCE|syscall.MNT_DETACH); err != nil {
				t.Errorf("unmounting %s: %v", p, err)
				return
			}
		}
	})
	return p
}

// mounted tells whether something is mounted on path.
func mounted(path string) bool {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return false
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) > 4 && f[4] == path {
			return true
		}
	}
	return false
}

// addFUSE adds a FUSE export; it skips the test where the mount itself is
// not allowed here (no CAP_SYS_ADMIN, no fusermount).
func addFUSE(t *testing.T, d *Daemon, args map[string]any) {
	t.Helper()
	args["type"] = "fuse"
	_, err := d.Try("block-export-add", args)
	if err != nil && strings.HasPrefix(err.Desc, "Failed to mount FUSE session to export") &&
		(isQSD() || strings.Contains(err.Desc, "not permitted") || strings.Contains(err.Desc, "denied")) {
		t.Skipf("FUSE mounts are not allowed here: %s", err.Desc)
	}
	if err != nil {
		t.Fatalf("block-export-add %v: %v", args, err)
	}
}

// delExport deletes an export and waits for its event.
func delExport(t *testing.T, d *Daemon, id string) {
	t.Helper()
	d.Cmd("block-export-del", map[string]any{"id": id})
	if e := d.WaitEvent("BLOCK_EXPORT_DELETED", 10*time.Second); e.Data["id"] != id {
		t.Errorf("BLOCK_EXPORT_DELETED for %v, want %s", e.Data["id"], id)
	}
}

// addQcow2 makes a qcow2 image, runs the qemu-io commands on it and adds
// it as node name (its file node is name-file).
func addFuseQcow2(t *testing.T, d *Daemon, name, size string, qemuIO ...string) string {
	t.Helper()
	img := d.Path(name + ".qcow2")
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", img, size)
	for _, c := range qemuIO {
		run(t, "qemu-io", "-f", "qcow2", "-c", c, img)
	}
	d.Cmd("blockdev-add", map[string]any{"driver": "qcow2", "node-name": name,
		"file": map[string]any{"driver": "file", "node-name": name + "-file", "filename": img}})
	return img
}

// TestFUSEExportData writes through the mounted file with qemu-io, dd and
// several writers at once, reads it back, compares it with the image
// through qemu-img, and checks the image after the export is gone.
func TestFUSEExportData(t *testing.T) {
	requireFUSE(t)
	d := start(t)
	img := addFuseQcow2(t, d, "disk", "64M")
	mnt := mountpoint(t, d, "disk.mnt")
	addFUSE(t, d, map[string]any{"id": "e0", "node-name": "disk", "mountpoint": mnt, "writable": true})

	var exps []map[string]any
	d.CmdInto("query-block-exports", nil, &exps)
	if len(exps) != 1 || exps[0]["type"] != "fuse" || exps[0]["id"] != "e0" || exps[0]["node-name"] != "disk" || exps[0]["shutting-down"] != false {
		t.Errorf("query-block-exports = %v", exps)
	}
	var st syscall.Stat_t
	if err := syscall.Stat(mnt, &st); err != nil {
		t.Fatal(err)
	}
	if st.Size != 64<<20 || st.Mode != syscall.S_IFREG|0o600 || st.Nlink != 1 || int(st.Uid) != os.Getuid() {
		t.Errorf("stat: size %d mode %o nlink %d uid %d", st.Size, st.Mode, st.Nlink, st.Uid)
	}

	run(t, "qemu-io", "-f", "raw", "-c", "write -P 0x5a 1M 512k", mnt)
	run(t, "dd", "if=/dev/zero", "of="+mnt, "bs=64k", "count=4", "seek=64", "conv=notrunc,fsync", "status=none")
	run(t, "qemu-io", "-f", "raw", "-c", "write -P 0x11 2M 64k", mnt) // overwritten by dd: 4M..4M+256k is zero
	var wg sync.WaitGroup
	for i := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			off := fmt.Sprintf("%dM", 8+2*i)
			if out, err := runErr("qemu-io", "-f", "raw", "-c", fmt.Sprintf("write -P %d %s 2M", 0x21+i, off), mnt); err != nil {
				t.Errorf("writer %d: %v\n%s", i, err, out)
			}
		}()
	}
	wg.Wait()
	checks := []string{"read -P 0x5a 1M 512k", "read -P 0 4M 256k", "read -P 0x11 2M 64k", "read -P 0 0 1M"}
	for i := range 4 {
		checks = append(checks, fmt.Sprintf("read -P %d %dM 2M", 0x21+i, 8+2*i))
	}
	for _, c := range checks {
		if out := run(t, "qemu-io", "-f", "raw", "-c", c, mnt); strings.Contains(out, "Pattern verification failed") {
			t.Errorf("through the mount, %s:\n%s", c, out)
		}
	}
	// The same data through the image itself (shared: the daemon has it open).
	run(t, "qemu-img", "compare", "-U", "-f", "raw", "-F", "qcow2", mnt, img)

	// SEEK_DATA and SEEK_HOLE follow the allocation of the image.
	f, err := os.Open(mnt)
	if err != nil {
		t.Fatal(err)
	}
	if off, err := f.Seek(0, unix.SEEK_DATA); err != nil || off != 1<<20 {
		t.Errorf("SEEK_DATA from 0 = %d, %v; want 1 MiB", off, err)
	}
	if off, err := f.Seek(64<<20, unix.SEEK_HOLE); err != nil || off != 64<<20 {
		t.Errorf("SEEK_HOLE at the end = %d, %v", off, err)
	}
	f.Close()

	delExport(t, d, "e0")
	if mounted(mnt) {
		t.Errorf("%s is still mounted after block-export-del", mnt)
	}
	d.Cmd("blockdev-del", map[string]any{"node-name": "disk"}) // and its file
	run(t, "qemu-img", "check", "-q", img)
	for _, c := range checks {
		if out := run(t, "qemu-io", "-f", "qcow2", "-c", c, img); strings.Contains(out, "Pattern verification failed") {
			t.Errorf("in the image, %s:\n%s", c, out)
		}
	}
}

// TestFUSEExportReadOnly: without writable the file is 0400 and every
// change is refused with EACCES (chmod +w with EROFS), as in qsd.
func TestFUSEExportReadOnly(t *testing.T) {
	requireFUSE(t)
	d := start(t)
	img := addFuseQcow2(t, d, "disk", "4M", "write -P 0x33 0 64k")
	mnt := mountpoint(t, d, "ro.mnt")
	addFUSE(t, d, map[string]any{"id": "ro", "node-name": "disk", "mountpoint": mnt})
	var st syscall.Stat_t
	if err := syscall.Stat(mnt, &st); err != nil || st.Mode != syscall.S_IFREG|0o400 || st.Size != 4<<20 {
		t.Errorf("stat: mode %o size %d, %v", st.Mode, st.Size, err)
	}
	run(t, "qemu-io", "-f", "raw", "-r", "-c", "read -P 0x33 0 64k", mnt)
	out, err := runErr("qemu-io", "-f", "raw", "-c", "write -P 0x77 0 64k", mnt)
	if err == nil && !strings.Contains(out, "Permission denied") {
		t.Errorf("qemu-io write to a read-only export:\n%s", out)
	}
	f, err := os.OpenFile(mnt, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for name, op := range map[string]func() error{
		"write":    func() error { _, err := f.WriteAt([]byte{1}, 0); return err },
		"truncate": func() error { return f.Truncate(1 << 20) },
		"fallocate": func() error {
			return unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 0, 4096)
		},
	} {
		if err := op(); !errors.Is(err, syscall.EACCES) {
			t.Errorf("%s: %v, want EACCES", name, err)
		}
	}
	if err := os.Chmod(mnt, 0o644); !errors.Is(err, syscall.EROFS) {
		t.Errorf("chmod 0644: %v, want EROFS", err)
	}
	if err := os.Chmod(mnt, 0o440); err != nil {
		t.Errorf("chmod 0440 (allow_other is on as root): %v", err)
	}
	if err := syscall.Stat(mnt, &st); err != nil || st.Mode != syscall.S_IFREG|0o440 {
		t.Errorf("mode after chmod 0440: %o, %v", st.Mode, err)
	}
	f.Close()
	delExport(t, d, "ro")
	run(t, "qemu-io", "-f", "qcow2", "-U", "-r", "-c", "read -P 0x33 0 64k", img)
}

// TestFUSEExportSize: growable writes past the end grow the node, plain
// writable ones stop at the end; truncate and fallocate resize a writable
// export, punch-hole and zero-range zero it (punch-hole discards: the node
// must drop data on discard for the hole to read as zeroes).
func TestFUSEExportSize(t *testing.T) {
	requireFUSE(t)
	d := start(t)
	raw := d.Path("a.raw")
	mkRaw(t, raw, "1M")
	d.Cmd("blockdev-add", map[string]any{"driver": "raw", "node-name": "r", "discard": "unmap",
		"file": map[string]any{"driver": "file", "filename": raw, "discard": "unmap"}})
	grow := mountpoint(t, d, "grow.mnt")
	addFUSE(t, d, map[string]any{"id": "g", "node-name": "r", "mountpoint": grow, "writable": true, "growable": true})
	run(t, "dd", "if=/dev/urandom", "of="+grow, "bs=4k", "count=1", "seek=256", "conv=notrunc", "status=none")
	wantSize(t, grow, raw, 1<<20+4096)
	delExport(t, d, "g")

	mnt := mountpoint(t, d, "fixed.mnt")
	addFUSE(t, d, map[string]any{"id": "w", "node-name": "r", "mountpoint": mnt, "writable": true})
	out, err := runErr("dd", "if=/dev/zero", "of="+mnt, "bs=4k", "count=2", "seek=256", "conv=notrunc", "status=none")
	if err == nil || !strings.Contains(out, "Input/output error") {
		t.Errorf("dd across the end of a fixed-size export: %v\n%s", err, out)
	}
	wantSize(t, mnt, raw, 1<<20+4096)
	run(t, "truncate", "-s", "2M", mnt)
	wantSize(t, mnt, raw, 2<<20)
	run(t, "truncate", "-s", "1M", mnt)
	wantSize(t, mnt, raw, 1<<20)
	run(t, "fallocate", "-o", "1M", "-l", "64k", mnt)
	wantSize(t, mnt, raw, 1<<20+64<<10)
	if out, err := runErr("fallocate", "-o", "0", "-l", "64k", mnt); err == nil || !strings.Contains(out, "Operation not supported") {
		t.Errorf("fallocate inside the file: %v\n%s", err, out)
	}
	run(t, "qemu-io", "-f", "raw", "-c", "write -P 0x44 0 128k", mnt)
	run(t, "fallocate", "-p", "-o", "0", "-l", "64k", mnt)
	run(t, "fallocate", "-z", "-o", "1M", "-l", "1M", mnt)
	wantSize(t, mnt, raw, 2<<20)
	run(t, "qemu-io", "-f", "raw", "-c", "read -P 0 0 64k", "-c", "read -P 0x44 64k 64k", "-c", "read -P 0 1M 1M", mnt)
	run(t, "sync", mnt)
	delExport(t, d, "w")
	run(t, "qemu-io", "-f", "raw", "-U", "-r", "-c", "read -P 0 0 64k", "-c", "read -P 0x44 64k 64k", raw)
}

// wantSize checks the size of the mounted file and of the image under it.
func wantSize(t *testing.T, mnt, img string, want int64) {
	t.Helper()
	if st, err := os.Stat(mnt); err != nil || st.Size() != want {
		t.Errorf("mounted file size: %v, want %d", err, want)
		if err == nil {
			t.Errorf("  it is %d", st.Size())
		}
	}
	if st, err := os.Stat(img); err != nil || st.Size() != want {
		t.Errorf("image size: %v, want %d", err, want)
	}
}

// TestFUSEExportErrors: each bad block-export-add gets qsd's error and
// leaves the graph and the mountpoint as they were.
func TestFUSEExportErrors(t *testing.T) {
	requireFUSE(t)
	d := start(t)
	addFuseQcow2(t, d, "disk", "1M")
	d.Cmd("blockdev-add", map[string]any{"driver": "null-co", "node-name": "ro", "read-only": true})
	mnt := mountpoint(t, d, "disk.mnt")
	if err := os.Mkdir(d.Path("dir"), 0o755); err != nil {
		t.Fatal(err)
	}
	fuse := func(kv ...any) map[string]any {
		m := map[string]any{"type": "fuse", "id": "e1", "node-name": "disk", "mountpoint": mnt}
		for i := 0; i < len(kv); i += 2 {
			if kv[i+1] == nil {
				delete(m, kv[i].(string))
			} else {
				m[kv[i].(string)] = kv[i+1]
			}
		}
		return m
	}
	for _, tc := range []struct {
		args map[string]any
		want string
	}{
		{fuse("mountpoint", d.Path("nosuch")), "Failed to stat '" + d.Path("nosuch") + "': No such file or directory"},
		{fuse("mountpoint", d.Path("dir")), "'" + d.Path("dir") + "' is not a regular file"},
		{fuse("mountpoint", ""), "Failed to stat '': No such file or directory"},
		{fuse("mountpoint", nil), "Parameter 'mountpoint' is missing"},
		{fuse("node-name", "nosuch"), "Cannot find device='' nor node-name='nosuch'"},
		{fuse("id", ""), "Invalid block export id"},
		{fuse("allow-other", "maybe"), "Parameter 'allow-other' does not accept value 'maybe'"},
		{fuse("growable", "yes"), "Invalid parameter type for 'growable', expected: boolean"},
		{fuse("name", "x"), "Parameter 'name' is unexpected"},
		{fuse("iothread", "nosuch"), "iothread \"nosuch\" not found"},
		{fuse("node-name", "ro", "writable", true, "iothread", "nosuch"), "Cannot export read-only node as writable"},
		{fuse("node-name", "nosuch", "iothread", "nosuch"), "Cannot find device='' nor node-name='nosuch'"},
		// qcow2 does not share write on its file: the node is in use.
		{fuse("node-name", "disk-file", "writable", true), "Permission conflict on node 'disk-file': permissions 'write' are both required by an unnamed block device (uses node 'disk-file' as 'root' child) and unshared by node 'disk' (uses node 'disk-file' as 'file' child)."},
	} {
		d.MustFail("block-export-add", tc.args, "GenericError", tc.want)
	}
	if got := string(d.Cmd("query-block-exports", nil)); got != "[]" {
		t.Errorf("failed adds left exports: %s", got)
	}
	if mounted(mnt) {
		t.Errorf("a failed add left %s mounted", mnt)
	}
	// An NBD export of the node does not share resize, which a writable
	// FUSE export needs.
	startNBD(d)
	d.Cmd("block-export-add", map[string]any{"type": "nbd", "id": "n0", "node-name": "disk"})
	d.MustFail("block-export-add", fuse("writable", true), "GenericError", "Permission conflict on node 'disk': permissions 'resize' are both required by an unnamed block device (uses node 'disk' as 'root' child) and unshared by an unnamed block device (uses node 'disk' as 'root' child).")
	d.Cmd("nbd-server-stop", nil)
	d.WaitEvent("BLOCK_EXPORT_DELETED", 10*time.Second)
	addFUSE(t, d, fuse("id", "e0"))
	d.MustFail("block-export-add", fuse("id", "e0", "mountpoint", d.Path("other")), "GenericError", "Block export id 'e0' is already in use")
	d.MustFail("block-export-add", fuse(), "GenericError", "There already is a FUSE export on '"+mnt+"'")
	d.MustFail("block-export-del", map[string]any{"id": "nosuch"}, "GenericError", "Export 'nosuch' is not found")
	// The node is in use by the export.
	if _, err := d.Try("blockdev-del", map[string]any{"node-name": "disk"}); err == nil {
		t.Errorf("blockdev-del of an exported node succeeded")
	}
	delExport(t, d, "e0")
	d.Cmd("blockdev-del", map[string]any{"node-name": "disk"})
}

// TestFUSEExportDelWithOpenFile: deleting an export whose file is open
// (or being read) succeeds at once, as in qsd: the mount goes away and
// the open file's requests fail with ENOTCONN. A reader killed in the
// middle of its reads does not disturb the daemon.
func TestFUSEExportDelWithOpenFile(t *testing.T) {
	requireFUSE(t)
	d := start(t)
	// 1 TiB: dd never reaches the end before the export goes.
	d.Cmd("blockdev-add", map[string]any{"driver": "null-co", "node-name": "zero", "size": 1 << 40, "read-zeroes": true})
	mnt := mountpoint(t, d, "zero.mnt")
	addFUSE(t, d, map[string]any{"id": "z", "node-name": "zero", "mountpoint": mnt})

	// A reader killed mid-stream.
	dd := exec.Command("dd", "if="+mnt, "of=/dev/null", "bs=1M", "iflag=direct")
	if err := dd.Start(); err != nil {
		t.Fatal(err)
	}
	waitRead(t, dd.Process.Pid, 16<<20)
	dd.Process.Kill()
	dd.Wait()
	run(t, "qemu-io", "-f", "raw", "-r", "-c", "read -P 0 1023M 1M", mnt)

	// One that is still reading when the export goes.
	dd = exec.Command("dd", "if="+mnt, "of=/dev/null", "bs=1M", "iflag=direct")
	var ddOut strings.Builder
	dd.Stderr = &ddOut
	if err := dd.Start(); err != nil {
		t.Fatal(err)
	}
	waitRead(t, dd.Process.Pid, 16<<20)
	f, err := os.Open(mnt)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.ReadAt(make([]byte, 4096), 0); err != nil {
		t.Fatal(err)
	}
	delExport(t, d, "z")
	if err := dd.Wait(); err == nil || !strings.Contains(ddOut.String(), "Transport endpoint is not connected") {
		t.Errorf("reader during block-export-del: %v\n%s", err, ddOut.String())
	}
	if _, err := f.ReadAt(make([]byte, 4096), 1<<20); !errors.Is(err, syscall.ENOTCONN) {
		t.Errorf("read from a file left open: %v, want ENOTCONN", err)
	}
	if mounted(mnt) {
		t.Errorf("%s is still mounted", mnt)
	}
	d.Cmd("blockdev-del", map[string]any{"node-name": "zero"})
}

// waitRead waits until process pid has read at least n bytes.
func waitRead(t *testing.T, pid int, n int64) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/io", pid))
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "rchar: "); ok {
				if r, _ := strconv.ParseInt(v, 10, 64); r >= n {
					return
				}
			}
		}
		// Polling: a reader's progress sends no event.
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("process %d did not read %d bytes", pid, n)
}

// TestFUSEExportShutdown: quit and SIGTERM unmount every export (with
// their events on quit) and leave the image clean; nbd-server-stop
// leaves FUSE exports alone.
func TestFUSEExportShutdown(t *testing.T) {
	requireFUSE(t)
	for _, how := range []string{"quit", "SIGTERM"} {
		t.Run(how, func(t *testing.T) {
			d := start(t)
			img := addFuseQcow2(t, d, "disk", "4M")
			mnt := mountpoint(t, d, "disk.mnt")
			addFUSE(t, d, map[string]any{"id": "f0", "node-name": "disk", "mountpoint": mnt, "writable": true})
			startNBD(d)
			d.Cmd("blockdev-add", map[string]any{"driver": "null-co", "node-name": "nul"})
			d.Cmd("block-export-add", map[string]any{"type": "nbd", "id": "n0", "node-name": "nul"})
			d.Cmd("nbd-server-stop", nil)
			var exps []map[string]any
			d.CmdInto("query-block-exports", nil, &exps)
			if len(exps) != 1 || exps[0]["id"] != "f0" || exps[0]["type"] != "fuse" {
				t.Errorf("after nbd-server-stop: %v", exps)
			}
			run(t, "qemu-io", "-f", "raw", "-c", "write -P 0x66 0 1M", mnt)
			d.ClearHistory()
			shutdown(t, d, how)
			if mounted(mnt) {
				t.Errorf("%s is still mounted after %s", mnt, how)
			}
			if how == "quit" {
				var ids []any
				for _, e := range d.History() {
					if e.Event == "BLOCK_EXPORT_DELETED" {
						ids = append(ids, e.Data["id"])
					}
				}
				if len(ids) != 1 || ids[0] != "f0" {
					t.Errorf("BLOCK_EXPORT_DELETED on quit: %v", ids)
				}
			}
			run(t, "qemu-img", "check", "-q", img)
			run(t, "qemu-io", "-f", "qcow2", "-c", "read -P 0x66 0 1M", img)
		})
	}
}

// TestFUSEExportKilled: after kill -9 the mount stays, dead (its files
// answer ENOTCONN), until someone unmounts it; mountpoint's cleanup does.
func TestFUSEExportKilled(t *testing.T) {
	requireFUSE(t)
	d := start(t)
	d.Cmd("blockdev-add", map[string]any{"driver": "null-co", "node-name": "nul"})
	mnt := mountpoint(t, d, "nul.mnt")
	addFUSE(t, d, map[string]any{"id": "e0", "node-name": "nul", "mountpoint": mnt})
	d.cmd.Process.Kill()
	<-d.done
	if !mounted(mnt) {
		t.Fatalf("%s is not mounted any more after kill -9", mnt)
	}
	if _, err := os.ReadFile(mnt); !errors.Is(err, syscall.ENOTCONN) {
		t.Errorf("reading a dead mount: %v, want ENOTCONN", err)
	}
}

// TestFUSEExportCommandLine: --export type=fuse,... mounts at start-up.
func TestFUSEExportCommandLine(t *testing.T) {
	requireFUSE(t)
	dir := t.TempDir()
	raw := dir + "/a.raw"
	mkRaw(t, raw, "2M")
	run(t, "qemu-io", "-f", "raw", "-c", "write -P 0x12 0 1M", raw)
	mnt := dir + "/a.mnt"
	if err := os.WriteFile(mnt, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if mounted(mnt) {
			_ = syscall.Unmount(mnt, syscall.MNT_FORCE|syscall.MNT_DETACH)
		}
	})
	d := start(t, "--blockdev", "driver=file,node-name=f,filename="+raw,
		"--export", "type=fuse,id=e0,node-name=f,mountpoint="+mnt+",writable=on,growable=off,allow-other=auto")
	var exps []map[string]any
	d.CmdInto("query-block-exports", nil, &exps)
	if len(exps) != 1 || exps[0]["type"] != "fuse" || exps[0]["id"] != "e0" {
		t.Fatalf("query-block-exports = %v", exps)
	}
	run(t, "qemu-io", "-f", "raw", "-c", "read -P 0x12 0 1M", "-c", "write -P 0x13 1M 1M", mnt)
	d.Quit()
	run(t, "qemu-io", "-f", "raw", "-c", "read -P 0x13 1M 1M", raw)
}
