package iotests

import (
	"encoding/json"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// startQemuNBD serves img (of format fmt) with qemu-nbd on a UNIX socket
// as export "exp", writable unless extra says -r, for up to 4 clients at
// once, and stops it at the end of the test. It returns the socket's path
// and a function that stops it earlier.
func startQemuNBD(t *testing.T, dir, img, fmt string, extra ...string) (string, func()) {
	t.Helper()
	sock := filepath.Join(dir, filepath.Base(img)+".sock")
	args := append([]string{"-f", fmt, "-k", sock, "-x", "exp", "-t", "-e", "4", "--cache=writeback"}, extra...)
	cmd := exec.Command("qemu-nbd", append(args, img)...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	stopped := false
	stop := func() {
		if !stopped {
			stopped = true
			cmd.Process.Kill()
			<-done
		}
	}
	t.Cleanup(stop)
	if err := waitSocket(sock, done); err != nil {
		t.Fatal(err)
	}
	return sock, stop
}

func nbdNode(name, sock, export string, extra map[string]any) map[string]any {
	o := map[string]any{"driver": "nbd", "node-name": name,
		"server": map[string]any{"type": "unix", "path": sock}, "export": export}
	for k, v := range extra {
		o[k] = v
	}
	return o
}

// TestNBDClientQemuNBD: an nbd node over qemu-nbd reads what qemu-io
// wrote, takes writes through a raw node over it that land in the image,
// and reports holes through base:allocation (qemu-img map over the
// daemon's own export of the node); the node's filename is the NBD URI.
func TestNBDClientQemuNBD(t *testing.T) {
	d := start(t)
	img := d.Path("back.raw")
	mkRaw(t, img, "16M")
	run(t, "qemu-io", "-f", "raw", "-c", "write -P 0x5a 1M 64k", img)
	qsock, stop := startQemuNBD(t, d.Dir, img, "raw")

	d.Cmd("blockdev-add", nbdNode("n0", qsock, "exp", nil))
	d.Cmd("blockdev-add", map[string]any{"driver": "raw", "node-name": "r0", "file": "n0"})
	var nodes []struct {
		NodeName string `json:"node-name"`
		Drv      string `json:"drv"`
		File     string `json:"file"`
		RO       bool   `json:"ro"`
	}
	d.CmdInto("query-named-block-nodes", nil, &nodes)
	found := false
	for _, n := range nodes {
		if n.NodeName == "n0" {
			found = true
			if n.Drv != "nbd" || n.File != "nbd+unix:///exp?socket="+qsock || n.RO {
				t.Errorf("n0 in query-named-block-nodes: %+v", n)
			}
		}
	}
	if !found {
		t.Fatalf("no n0 in %+v", nodes)
	}

	sock := startNBD(d)
	d.Cmd("block-export-add", map[string]any{"type": "nbd", "id": "e0", "node-name": "r0", "writable": true})
	run(t, "qemu-io", "-f", "raw", "-c", "read -P 0x5a 1M 64k", "-c", "read -P 0 0 1M", nbdURI(sock, "r0"))
	run(t, "qemu-io", "-f", "raw", "-c", "write -P 0x33 4M 128k", "-c", "flush", nbdURI(sock, "r0"))

	// Block status across both hops: data where written, holes elsewhere.
	var m []struct {
		Start  int64 `json:"start"`
		Length int64 `json:"length"`
		Data   bool  `json:"data"`
	}
	if err := json.Unmarshal([]byte(run(t, "qemu-img", "map", "-f", "raw", "--output=json", nbdURI(sock, "r0"))), &m); err != nil {
		t.Fatal(err)
	}
	var data []int64
	for _, e := range m {
		if e.Data && e.Start != 0 { // qemu-img create allocates the first block of a raw file
			data = append(data, e.Start, e.Length)
		}
	}
	if len(data) != 4 || data[0] != 1<<20 || data[1] != 64<<10 || data[2] != 4<<20 || data[3] != 128<<10 {
		t.Errorf("data extents (start, length...) %v, map %+v", data, m)
	}

	d.Cmd("block-export-del", map[string]any{"id": "e0"})
	d.WaitEvent("BLOCK_EXPORT_DELETED", 10*time.Second)
	d.Cmd("blockdev-del", map[string]any{"node-name": "r0"})
	d.Cmd("blockdev-del", map[string]any{"node-name": "n0"})
	stop()
	run(t, "qemu-io", "-f", "raw", "-c", "read -P 0x33 4M 128k", "-c", "read -P 0x5a 1M 64k", img)
}

// TestNBDClientErrors: a wrong export, a missing server, a bad address
// and read-only exports, with qsd's errors; the graph is unchanged.
func TestNBDClientErrors(t *testing.T) {
	d := start(t)
	img := d.Path("back.raw")
	mkRaw(t, img, "1M")
	qsock, _ := startQemuNBD(t, d.Dir, img, "raw")
	d.MustFail("blockdev-add", nbdNode("n0", qsock, "nope", nil), "GenericError", "Requested export not available")
	d.MustFail("blockdev-add", nbdNode("n0", d.Path("none.sock"), "exp", nil), "GenericError",
		"Failed to connect to '"+d.Path("none.sock")+"': No such file or directory")
	d.MustFail("blockdev-add", map[string]any{"driver": "nbd", "node-name": "n0", "server": map[string]any{"type": "unix"}},
		"GenericError", "Parameter 'server.path' is missing")
	d.MustFail("blockdev-add", map[string]any{"driver": "nbd", "node-name": "n0"}, "GenericError", "Parameter 'server' is missing")

	// A read-only export (not the daemon's own: qsd cannot be a client
	// of its own NBD server, its one main loop would wait for itself):
	// refused read-write, a read-only node with auto-read-only.
	mkRaw(t, d.Path("ro.raw"), "1M")
	rosock, _ := startQemuNBD(t, d.Dir, d.Path("ro.raw"), "raw", "-r")
	d.MustFail("blockdev-add", nbdNode("n1", rosock, "exp", nil), "GenericError", "Could not open image: Permission denied")
	d.Cmd("blockdev-add", nbdNode("n1", rosock, "exp", map[string]any{"auto-read-only": true}))
	d.Cmd("blockdev-del", map[string]any{"node-name": "n1"})
	d.Cmd("blockdev-add", nbdNode("n1", rosock, "exp", map[string]any{"read-only": true}))
	d.Cmd("blockdev-del", map[string]any{"node-name": "n1"})

	if !isQSD() {
		// qsd looks the credentials up (and has TLS); blockd has no TLS.
		d.MustFail("blockdev-add", nbdNode("n0", qsock, "exp", map[string]any{"tls-creds": "t0"}), "GenericError",
			"blockd does not support TLS for NBD yet")
	}
	var nodes []map[string]any
	d.CmdInto("query-named-block-nodes", nil, &nodes)
	if len(nodes) != 0 {
		t.Errorf("nodes after the failures: %v", nodes)
	}
}

// TestNBDClientMirrorToQemuNBD: the migration path of issue 11: a local
// qcow2 chain mirrored (sync=full) to an nbd node served by qemu-nbd,
// with writes while READY, completed; the destination then equals the
// source and passes qemu-img check.
func TestNBDClientMirrorToQemuNBD(t *testing.T) {
	d := start(t)
	src, dst := d.Path("src.qcow2"), d.Path("dst.qcow2")
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", src, "32M")
	run(t, "qemu-io", "-f", "qcow2", "-c", "write -P 0x11 0 1M", "-c", "write -P 0x22 8M 3M", "-c", "write -z 20M 1M", src)
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", dst, "32M")
	qsock, stop := startQemuNBD(t, d.Dir, dst, "qcow2")

	addQcow2(d, "src", "src.qcow2", nil)
	d.Cmd("blockdev-add", nbdNode("tgt", qsock, "exp", nil))
	sock := startNBD(d)
	d.Cmd("block-export-add", map[string]any{"type": "nbd", "id": "e0", "node-name": "src", "writable": true})
	d.ClearHistory()
	mustCall(t, d, "blockdev-mirror", map[string]any{"job-id": "m1", "device": "src", "target": "tgt", "sync": "full"})
	waitJobEvent(t, d, "BLOCK_JOB_READY", "m1")
	run(t, "qemu-io", "-f", "raw", "-c", "write -P 0x44 2M 1M", "-c", "write -P 0x55 31M 1M", nbdURI(sock, "src"))
	d.Cmd("block-job-complete", map[string]any{"device": "m1"})
	waitStatus(t, d, "m1", "null")
	if ev := eventsOf(d.History(), "BLOCK_JOB_COMPLETED", "m1"); len(ev) != 1 || ev[0].Data["error"] != nil {
		t.Fatalf("BLOCK_JOB_COMPLETED: %v", ev)
	}
	d.Cmd("block-export-del", map[string]any{"id": "e0"})
	d.WaitEvent("BLOCK_EXPORT_DELETED", 10*time.Second)
	d.Cmd("blockdev-del", map[string]any{"node-name": "tgt"})
	d.Cmd("blockdev-del", map[string]any{"node-name": "src"})
	stop()
	if out := run(t, "qemu-img", "compare", src, dst); !strings.Contains(out, "Images are identical") {
		t.Errorf("qemu-img compare: %s", out)
	}
	run(t, "qemu-img", "check", dst)
	run(t, "qemu-io", "-f", "qcow2", "-c", "read -P 0x44 2M 1M", "-c", "read -P 0x22 8M 3M", "-c", "read -P 0x55 31M 1M", dst)
}
