package iotests

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Live storage migration between two daemons (issue 11): the source
// mirrors a local qcow2 chain into an nbd node that names a writable
// export of the destination, under writes, and pivots. Two processes
// always: qsd cannot be an NBD client of its own export (its one main
// loop would wait for itself).

// migrationPairs are the (source, destination) kinds a run covers: every
// pair that has the daemon under test on one side. A blockd run covers
// blockd → blockd, blockd → qsd and qsd → blockd; a qsd run qsd → qsd
// (the control) and both cross pairs again.
func migrationPairs() [][2]string {
	u := underTest()
	pairs := [][2]string{{u, u}}
	other := kindQSD
	if u == kindQSD {
		other = kindBlockd
	}
	return append(pairs, [2]string{u, other}, [2]string{other, u})
}

// migDest is the destination side of a migration: a daemon exporting a
// fresh qcow2 image, writable, as export "dst" on its NBD server.
type migDest struct {
	d    *Daemon
	img  string
	sock string
}

// startMigDest starts a destination of kind with an empty qcow2 image of
// size and its writable export.
func startMigDest(t *testing.T, kind, size string) *migDest {
	t.Helper()
	d := startKind(t, kind)
	img := d.Path("dst.qcow2")
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", img, size)
	return serveMigDest(t, d, img, d.Path("nbd.sock"))
}

// serveMigDest opens img in d and exports it writable as "dst" on a new
// NBD server at sock.
func serveMigDest(t *testing.T, d *Daemon, img, sock string) *migDest {
	t.Helper()
	d.Cmd("blockdev-add", map[string]any{"driver": "qcow2", "node-name": "dst",
		"file": map[string]any{"driver": "file", "node-name": "dst-file", "filename": img}})
	d.Cmd("nbd-server-start", map[string]any{"addr": unixAddr(sock)})
	d.Cmd("block-export-add", map[string]any{"type": "nbd", "id": "dst", "node-name": "dst", "writable": true})
	return &migDest{d: d, img: img, sock: sock}
}

// Kill ends the daemon with SIGKILL, as a crash or a lost host would.
func (d *Daemon) Kill() {
	d.t.Helper()
	if err := d.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		d.t.Fatal(err)
	}
	<-d.done
}

// checkAfterKill runs qemu-img check on an image a daemon had open when
// it was killed: leaked clusters (exit status 3) are allowed, corruption
// is not.
func checkAfterKill(t *testing.T, img string) {
	t.Helper()
	out, err := runErr("qemu-img", "check", img)
	if ex, ok := err.(*exec.ExitError); err != nil && !(ok && ex.ExitCode() == 3) {
		t.Fatalf("qemu-img check %s: %v\n%s", img, err, out)
	}
}

// startMigSource starts a source of kind with the reference chain
// (base ← mid ← top, 64M) opened node by node and exported writable as
// "top" for the write load.
func startMigSource(t *testing.T, kind string) (*Daemon, string) {
	t.Helper()
	s := startKind(t, kind)
	mkChain(t, s.Dir)
	addChain(t, s, nil)
	sock := startNBD(s)
	s.Cmd("block-export-add", map[string]any{"type": "nbd", "id": "e0", "node-name": "top", "writable": true})
	return s, sock
}

// loadWrites are qemu-io writes spread over the chain's layers and holes,
// pattern p for the i-th load.
func loadWrites(p int) []string {
	var args []string
	for i := 0; i < 24; i++ {
		off := (i*2621 + p*977) % 63 // MiB, spread over the whole disk
		args = append(args, "-c", fmt.Sprintf("write -P %#x %dM 192k", 0x40+p*16+i%16, off), "-c", fmt.Sprintf("write -z %dM 64k", (off+31)%64))
	}
	// A marker no other write touches, to read back at the end.
	return append(args, "-c", fmt.Sprintf("write -P %#x 63M 128k", 0xa0+p), "-c", "flush")
}

// loadMarker is the read that finds loadWrites(p)'s marker.
func loadMarker(p int) string { return fmt.Sprintf("read -P %#x 63M 128k", 0xa0+p) }

// TestMigrateAcrossDaemons: blockdev-mirror (sync=full, write-blocking)
// of a local qcow2 chain to an nbd node over the destination daemon's
// export, with writes to the source while the job copies (it is held to
// 4 MiB/s so that they land mid-copy, however loaded the machine) and again while READY; complete
// pivots. The destination image then equals the chain (qemu-img compare)
// and passes qemu-img check, and reads the last load's patterns.
func TestMigrateAcrossDaemons(t *testing.T) {
	for _, p := range migrationPairs() {
		t.Run(p[0]+" to "+p[1], func(t *testing.T) {
			dst := startMigDest(t, p[1], "64M")
			src, ssock := startMigSource(t, p[0])
			src.Cmd("blockdev-add", nbdNode("tgt", dst.sock, "dst", nil))
			src.ClearHistory()
			mustCall(t, src, "blockdev-mirror", map[string]any{"job-id": "mig", "device": "top", "target": "tgt",
				"sync": "full", "copy-mode": "write-blocking", "speed": 4 << 20})

			run(t, "qemu-io", append([]string{"-f", "raw"}, append(loadWrites(0), nbdURI(ssock, "top"))...)...)
			if len(eventsOf(src.History(), "BLOCK_JOB_READY", "mig")) != 0 {
				t.Fatal("the job was READY before the first load ended: the load did not run during the copy")
			}
			src.Cmd("block-job-set-speed", map[string]any{"device": "mig", "speed": 0})
			waitJobEvent(t, src, "BLOCK_JOB_READY", "mig")
			run(t, "qemu-io", append([]string{"-f", "raw"}, append(loadWrites(1), nbdURI(ssock, "top"))...)...)

			mustCall(t, src, "block-job-complete", map[string]any{"device": "mig"})
			waitStatus(t, src, "mig", "null")
			if ev := eventsOf(src.History(), "BLOCK_JOB_COMPLETED", "mig"); len(ev) != 1 || ev[0].Data["error"] != nil {
				t.Fatalf("BLOCK_JOB_COMPLETED: %v", ev)
			}
			// After the pivot the source's export serves the destination.
			run(t, "qemu-io", "-r", "-f", "raw", "-c", loadMarker(1), nbdURI(ssock, "top"))
			src.Quit()
			dst.d.Quit()

			if out := run(t, "qemu-img", "compare", src.Path("top.qcow2"), dst.img); !strings.Contains(out, "Images are identical") {
				t.Errorf("qemu-img compare: %s", out)
			}
			run(t, "qemu-img", "check", dst.img)
			run(t, "qemu-io", "-r", "-f", "qcow2", "-c", loadMarker(1), dst.img)
		})
	}
}

// TestMigrateTargetLost: the destination goes away mid-copy. Killed,
// with the default on-target-error (report): the job fails with EIO at
// once, nothing hangs, and the source chain is unchanged. With
// reconnect-delay, when the destination's NBD server stops (its
// connections drop) and starts again on the same socket within the
// delay, the requests are sent again and the migration completes. (A
// killed destination cannot be reconnected to safely: writes it had
// acknowledged but not flushed, qcow2 metadata among them, die with it,
// and the mirror has already counted them as copied.)
func TestMigrateTargetLost(t *testing.T) {
	u := underTest()
	for _, mode := range []string{"killed", "reconnect"} {
		t.Run(mode, func(t *testing.T) {
			dst := startMigDest(t, u, "64M")
			src, _ := startMigSource(t, u)
			var extra map[string]any
			if mode == "reconnect" {
				extra = map[string]any{"reconnect-delay": 20}
			}
			src.Cmd("blockdev-add", nbdNode("tgt", dst.sock, "dst", extra))
			src.ClearHistory()
			mustCall(t, src, "blockdev-mirror", map[string]any{"job-id": "mig", "device": "top", "target": "tgt",
				"sync": "full", "copy-mode": "write-blocking", "speed": 2 << 20})
			waitProgress(t, src, "mig", 4<<20)

			if mode == "killed" {
				dst.d.Kill()
				waitStatus(t, src, "mig", "null")
				ev := eventsOf(src.History(), "BLOCK_JOB_COMPLETED", "mig")
				if len(ev) != 1 || ev[0].Data["error"] != "Input/output error" {
					t.Fatalf("BLOCK_JOB_COMPLETED: %v", ev)
				}
				// The daemon still answers, and the target goes.
				src.Cmd("blockdev-del", map[string]any{"node-name": "tgt"})
				src.DelExport("e0")
				src.Quit()
				run(t, "qemu-img", "check", src.Path("top.qcow2"))
				run(t, "qemu-img", "compare", src.Path("top.qcow2"), refImage(t, src))
				checkAfterKill(t, dst.img)
				return
			}

			// The server stops (the export goes with it) and comes back.
			dst.d.Cmd("nbd-server-stop", nil)
			dst.d.WaitEvent("BLOCK_EXPORT_DELETED", 10*time.Second)
			os.Remove(dst.sock)
			dst.d.Cmd("nbd-server-start", map[string]any{"addr": unixAddr(dst.sock)})
			dst.d.Cmd("block-export-add", map[string]any{"type": "nbd", "id": "dst", "node-name": "dst", "writable": true})
			src.Cmd("block-job-set-speed", map[string]any{"device": "mig", "speed": 0})
			waitJobEvent(t, src, "BLOCK_JOB_READY", "mig")
			mustCall(t, src, "block-job-complete", map[string]any{"device": "mig"})
			waitStatus(t, src, "mig", "null")
			if ev := eventsOf(src.History(), "BLOCK_JOB_COMPLETED", "mig"); len(ev) != 1 || ev[0].Data["error"] != nil {
				t.Fatalf("BLOCK_JOB_COMPLETED: %v", ev)
			}
			src.Quit()
			dst.d.Quit()
			run(t, "qemu-img", "check", dst.img)
			if out := run(t, "qemu-img", "compare", src.Path("top.qcow2"), dst.img); !strings.Contains(out, "Images are identical") {
				t.Errorf("qemu-img compare: %s", out)
			}
		})
	}
}

// TestMigrateBadTarget: an export smaller than the source fails the
// migration with a clear error (the destination cannot grow); a wrong
// export name fails the nbd node's blockdev-add; in both the source
// chain is unchanged.
func TestMigrateBadTarget(t *testing.T) {
	u := underTest()
	dst := startMigDest(t, u, "32M")
	src, _ := startMigSource(t, u)
	src.MustFail("blockdev-add", nbdNode("tgt", dst.sock, "nope", nil), "GenericError", "Requested export not available")
	src.Cmd("blockdev-add", nbdNode("tgt", dst.sock, "dst", nil))
	src.ClearHistory()
	// compat(qsd-7.2): the job starts, then fails on the sizes.
	mustCall(t, src, "blockdev-mirror", map[string]any{"job-id": "mig", "device": "top", "target": "tgt", "sync": "full"})
	waitStatus(t, src, "mig", "null")
	if ev := eventsOf(src.History(), "BLOCK_JOB_COMPLETED", "mig"); len(ev) != 1 || ev[0].Data["error"] != "Source and target image have different sizes" {
		t.Errorf("BLOCK_JOB_COMPLETED: %v", ev)
	}
	var nodes []map[string]any
	src.CmdInto("query-named-block-nodes", nil, &nodes)
	if len(nodes) != 7 {
		t.Errorf("%d nodes after the failures, want the chain's six and tgt", len(nodes))
	}
	src.Quit()
	dst.d.Quit()
	run(t, "qemu-img", "compare", src.Path("top.qcow2"), refImage(t, src))
	run(t, "qemu-img", "check", dst.img)
}
