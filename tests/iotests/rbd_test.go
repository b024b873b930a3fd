package iotests

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/blockd/blockd/internal/cephtest"
)

// The rbd tests share one one-node Ceph cluster per run (it takes about
// two seconds to start), made in a temporary directory on first use and
// stopped, by PID, when the tests end. Where it cannot start (the Ceph
// packages missing, qsd without its rbd module, blockd built without
// librbd) the tests skip with the reason.
var (
	cephOnce    sync.Once
	cephCluster *cephtest.Cluster
	cephErr     error
	rbdSeq      atomic.Int64
)

func rbdCluster(t *testing.T) *cephtest.Cluster {
	t.Helper()
	cephOnce.Do(func() {
		if why := cephtest.Available(); why != "" {
			cephErr = fmt.Errorf("%s", why)
			return
		}
		dir, err := os.MkdirTemp("", "iotests-ceph")
		if err != nil {
			cephErr = err
			return
		}
		c, err := cephtest.Start(dir)
		if err != nil {
			os.RemoveAll(dir)
			cephErr = err
			return
		}
		cephCluster = c
		atExit = append(atExit, func() { c.Stop(); os.RemoveAll(dir) })
	})
	if cephErr != nil {
		t.Skip("no Ceph cluster for the rbd tests: ", cephErr)
	}
	if out, err := runErr("qemu-img", "--help"); err == nil && !strings.Contains(out, " rbd") {
		t.Skip("qemu-img has no rbd driver (Debian package qemu-block-extra)")
	}
	return cephCluster
}

// rbdImage is one image in the test cluster.
type rbdImage struct {
	c    *cephtest.Cluster
	name string
}

// newRBD creates a fresh image of size ("64M") with the rbd tool.
func newRBD(t *testing.T, size string) rbdImage {
	t.Helper()
	c := rbdCluster(t)
	img := rbdImage{c, fmt.Sprintf("iot%d-%d", os.Getpid(), rbdSeq.Add(1))}
	if _, err := c.RBD("create", "--size", size, cephtest.Pool+"/"+img.name); err != nil {
		t.Fatal(err)
	}
	return img
}

// newRBDName reserves a name for an image a test creates itself.
func newRBDName(t *testing.T) rbdImage {
	t.Helper()
	c := rbdCluster(t)
	return rbdImage{c, fmt.Sprintf("iot%d-%d", os.Getpid(), rbdSeq.Add(1))}
}

// uri is the image for qemu-img and qemu-io.
func (i rbdImage) uri() string {
	return "rbd:" + cephtest.Pool + "/" + i.name + ":conf=" + i.c.Conf
}

// opts are blockdev-add's options for the image, with extra members.
func (i rbdImage) opts(node string, extra ...any) map[string]any {
	o := map[string]any{"driver": "rbd", "node-name": node, "pool": cephtest.Pool, "image": i.name, "conf": i.c.Conf}
	for k := 0; k+1 < len(extra); k += 2 {
		o[extra[k].(string)] = extra[k+1]
	}
	return o
}

// rbdDaemon starts the daemon under test and checks it has an rbd
// driver that works (blockd built without librbd does not).
func rbdDaemon(t *testing.T, probe rbdImage) *Daemon {
	t.Helper()
	d := start(t)
	if _, err := d.Try("blockdev-add", probe.opts("probe", "read-only", true)); err != nil {
		if strings.Contains(err.Desc, "built without rbd support") {
			t.Skip("blockd was built without rbd support (librbd-dev missing)")
		}
		t.Fatalf("opening an rbd image: %v", err)
	}
	d.Cmd("blockdev-del", map[string]any{"node-name": "probe"})
	return d
}

// TestRBDReadWrite: data written through an NBD export of an rbd node
// reads back with qemu-io on the image itself and the other way round;
// the node is described as qsd describes it, and block status through
// the export tells written objects from the rest.
func TestRBDReadWrite(t *testing.T) {
	img := newRBD(t, "64M")
	run(t, "qemu-io", "-c", "write -P 0x5a 40M 1M", img.uri())
	d := rbdDaemon(t, img)
	d.Cmd("blockdev-add", img.opts("r"))
	sock := startNBD(d)
	d.Cmd("block-export-add", map[string]any{"type": "nbd", "id": "e0", "node-name": "r", "writable": true})
	uri := nbdURI(sock, "r")
	run(t, "qemu-io", "-f", "raw", "-c", "write -P 0xa5 4M 4M", "-c", "write -P 0x11 1000 3000", "-c", "flush", uri)
	run(t, "qemu-io", "-f", "raw", "-r", "-c", "read -P 0x5a 40M 1M", "-c", "read -P 0 41M 1M", uri)

	want := fmt.Sprintf(`json:{"pool": "rbd", "image": "%s", "conf": "%s", "driver": "rbd"}`, img.name, img.c.Conf)
	n := namedNodes(d, true)["r"]
	if n.File != want || n.Image["filename"] != want || n.Image["format"] != "rbd" || n.Image["cluster-size"] != float64(4<<20) ||
		n.Image["virtual-size"] != float64(64<<20) || n.Image["dirty-flag"] != false || n.Drv != "rbd" {
		t.Errorf("rbd node: %+v", n)
	}
	if fs, _ := n.Image["format-specific"].(map[string]any); fs["type"] != "rbd" {
		t.Errorf("format-specific: %v", n.Image["format-specific"])
	}

	// Objects never written read as zeroes, written ones as data.
	for _, e := range imgMap(t, "-f", "raw", uri) {
		inWritten := e.Start < 8<<20 || (e.Start >= 40<<20 && e.Start < 44<<20)
		if e.Data != inWritten {
			t.Errorf("map: %+v (objects 0, 1 and 10 hold data)", e)
		}
	}
	d.DelExport("e0")
	d.Cmd("blockdev-del", map[string]any{"node-name": "r"})
	run(t, "qemu-io", "-r", "-c", "read -P 0 0 1000", "-c", "read -P 0x11 1000 3000", "-c", "read -P 0 4000 4190304",
		"-c", "read -P 0xa5 4M 4M", "-c", "read -P 0x5a 40M 1M", img.uri())

	// Resize through QMP shows in the image.
	d.Cmd("blockdev-add", img.opts("r"))
	d.Cmd("block_resize", map[string]any{"node-name": "r", "size": 96 << 20})
	if out := run(t, "qemu-img", "info", img.uri()); !strings.Contains(out, "virtual size: 96 MiB") {
		t.Errorf("after block_resize: %s", out)
	}
}

// TestRBDCreate: blockdev-create makes an image of the size and object
// size asked for; bad object sizes are refused as qsd refuses them.
func TestRBDCreate(t *testing.T) {
	probe := newRBD(t, "1M")
	d := rbdDaemon(t, probe)
	img := newRBDName(t)
	loc := map[string]any{"pool": cephtest.Pool, "image": img.name, "conf": img.c.Conf}
	d.Cmd("blockdev-create", map[string]any{"job-id": "c1", "options": map[string]any{"driver": "rbd", "location": loc, "size": 32 << 20, "cluster-size": 1 << 20}})
	waitStatus(t, d, "c1", "concluded")
	if j := queryJobs(d)["c1"]; j.Error != "" {
		t.Fatalf("create failed: %s", j.Error)
	}
	d.Cmd("job-dismiss", map[string]any{"id": "c1"})
	out, err := img.c.RBD("info", cephtest.Pool+"/"+img.name)
	if err != nil || !strings.Contains(out, "size 32 MiB") || !strings.Contains(out, "order 20 (1 MiB objects)") {
		t.Errorf("rbd info after create: %s %v", out, err)
	}
	run(t, "qemu-io", "-c", "write -P 0x42 0 2M", img.uri())
	d.Cmd("blockdev-add", img.opts("n"))
	if cs := namedNodes(d, true)["n"].Image["cluster-size"]; cs != float64(1<<20) {
		t.Errorf("cluster-size %v", cs)
	}

	for _, tc := range []struct {
		size any
		want string
	}{
		{3000, "obj size needs to be power of 2"},
		{2048, "obj size too small"},
	} {
		other := newRBDName(t)
		loc := map[string]any{"pool": cephtest.Pool, "image": other.name, "conf": other.c.Conf}
		_, qerr := d.Try("blockdev-create", map[string]any{"job-id": "c2", "options": map[string]any{"driver": "rbd", "location": loc, "size": 1 << 20, "cluster-size": tc.size}})
		if qerr == nil {
			waitStatus(t, d, "c2", "concluded")
			if j := queryJobs(d)["c2"]; j.Error != tc.want {
				t.Errorf("cluster-size %v: job error %q, want %q", tc.size, j.Error, tc.want)
			}
			d.Cmd("job-dismiss", map[string]any{"id": "c2"})
		} else if qerr.Desc != tc.want {
			t.Errorf("cluster-size %v: %v, want %q", tc.size, qerr, tc.want)
		}
	}
	// An existing image is not overwritten.
	_, qerr := d.Try("blockdev-create", map[string]any{"job-id": "c3", "options": map[string]any{"driver": "rbd", "location": loc, "size": 1 << 20}})
	if qerr == nil {
		waitStatus(t, d, "c3", "concluded")
		if j := queryJobs(d)["c3"]; !strings.Contains(j.Error, "File exists") {
			t.Errorf("create over an existing image: job error %q", j.Error)
		}
	}
	run(t, "qemu-io", "-r", "-c", "read -P 0x42 0 2M", img.uri())
}

// TestRBDMirrorOntoCephAndBack: a local qcow2 chain under a writable
// export is mirrored onto an rbd image (write-blocking, then pivot: the
// export moves to the cluster), and that image is then mirrored back to
// a local file. Both copies hold the chain's data with the writes made
// during the mirror.
func TestRBDMirrorOntoCephAndBack(t *testing.T) {
	img := newRBD(t, "64M")
	d := rbdDaemon(t, img)
	mkChain(t, d.Dir)
	addChain(t, d, nil)
	sock := startNBD(d)
	d.Cmd("block-export-add", map[string]any{"type": "nbd", "id": "e0", "node-name": "top", "writable": true})
	d.Cmd("blockdev-add", img.opts("tgt"))
	mustCall(t, d, "blockdev-mirror", map[string]any{"job-id": "m1", "device": "top", "target": "tgt", "sync": "full", "copy-mode": "write-blocking"})
	waitJobEvent(t, d, "BLOCK_JOB_READY", "m1")
	writes := []string{"-c", "write -P 0x77 4M 2M", "-c", "write -P 0x78 60M 1M"}
	run(t, "qemu-io", append(append([]string{"-f", "raw"}, writes...), nbdURI(sock, "top"))...)
	d.Cmd("block-job-complete", map[string]any{"device": "m1"})
	waitStatus(t, d, "m1", "null")
	var exps []map[string]any
	d.CmdInto("query-block-exports", nil, &exps)
	if len(exps) != 1 || exps[0]["node-name"] != "tgt" {
		t.Fatalf("export after the pivot: %v", exps)
	}
	// The guest keeps writing, now to the cluster.
	run(t, "qemu-io", "-f", "raw", "-c", "write -P 0x79 62M 1M", nbdURI(sock, "top"))
	ref := refImage(t, d)
	run(t, "qemu-io", append(append([]string{"-f", "raw"}, writes...), "-c", "write -P 0x79 62M 1M", ref)...)

	// And back: from the rbd node to a local raw file.
	mkRaw(t, d.Path("back.raw"), "64M")
	d.Cmd("blockdev-add", map[string]any{"driver": "raw", "node-name": "back", "file": map[string]any{"driver": "file", "filename": d.Path("back.raw")}})
	mustCall(t, d, "blockdev-mirror", map[string]any{"job-id": "m2", "device": "tgt", "target": "back", "sync": "full"})
	waitJobEvent(t, d, "BLOCK_JOB_READY", "m2")
	d.Cmd("block-job-complete", map[string]any{"device": "m2"})
	waitStatus(t, d, "m2", "null")
	d.DelExport("e0")
	d.Quit()
	run(t, "qemu-img", "compare", "-f", "raw", "-F", "raw", img.uri(), ref)
	run(t, "qemu-img", "compare", "-f", "raw", "-F", "raw", d.Path("back.raw"), ref)
}

// TestRBDStreamCommitBase: a local qcow2 overlay on an rbd base. Stream
// pulls the base's data into the overlay; commit pushes the overlay's
// writes down into the rbd image.
func TestRBDStreamCommitBase(t *testing.T) {
	for _, job := range []string{"stream", "commit"} {
		t.Run(job, func(t *testing.T) {
			base := newRBD(t, "64M")
			d := rbdDaemon(t, base)
			run(t, "qemu-io", "-c", "write -P 0x11 0 32M", base.uri())
			run(t, "qemu-img", "create", "-q", "-f", "qcow2", d.Path("top.qcow2"), "64M")
			run(t, "qemu-io", "-c", "write -P 0x33 8M 8M", "-c", "write -P 0x34 40M 1M", d.Path("top.qcow2"))
			d.Cmd("blockdev-add", base.opts("base"))
			d.Cmd("blockdev-add", map[string]any{"driver": "qcow2", "node-name": "top", "backing": "base",
				"file": map[string]any{"driver": "file", "filename": d.Path("top.qcow2")}})
			ref := d.Path("ref.raw")
			mkRaw(t, ref, "64M")
			run(t, "qemu-io", "-f", "raw", "-c", "write -P 0x11 0 32M", "-c", "write -P 0x33 8M 8M", "-c", "write -P 0x34 40M 1M", ref)
			if job == "stream" {
				d.Cmd("block-stream", map[string]any{"job-id": "j", "device": "top"})
				waitStatus(t, d, "j", "null")
				d.Quit()
				run(t, "qemu-img", "compare", "-f", "qcow2", "-F", "raw", d.Path("top.qcow2"), ref)
				if out := run(t, "qemu-img", "info", d.Path("top.qcow2")); strings.Contains(out, "backing file") {
					t.Errorf("top still has a backing file after stream:\n%s", out)
				}
				return
			}
			d.Cmd("block-commit", map[string]any{"job-id": "j", "device": "top"})
			waitJobEvent(t, d, "BLOCK_JOB_READY", "j")
			d.Cmd("block-job-complete", map[string]any{"device": "j"})
			waitStatus(t, d, "j", "null")
			d.Quit()
			run(t, "qemu-img", "compare", "-f", "raw", "-F", "raw", base.uri(), ref)
		})
	}
}

// TestRBDBackup: a full backup of a local chain into an rbd image.
func TestRBDBackup(t *testing.T) {
	img := newRBD(t, "64M")
	d := rbdDaemon(t, img)
	mkChain(t, d.Dir)
	addChain(t, d, nil)
	d.Cmd("blockdev-add", img.opts("tgt"))
	d.Cmd("blockdev-backup", map[string]any{"job-id": "b", "device": "top", "target": "tgt", "sync": "full"})
	waitStatus(t, d, "b", "null")
	d.Quit()
	run(t, "qemu-img", "compare", "-f", "raw", "-F", "raw", img.uri(), refImage(t, d))
}

// TestRBDBadInput: every mistake is a clear error in qsd's words and
// changes nothing; a snapshot is read-only.
func TestRBDBadInput(t *testing.T) {
	img := newRBD(t, "8M")
	run(t, "qemu-io", "-c", "write -P 0x21 0 1M", img.uri())
	if _, err := img.c.RBD("snap", "create", cephtest.Pool+"/"+img.name+"@s1"); err != nil {
		t.Fatal(err)
	}
	run(t, "qemu-io", "-c", "write -P 0x22 0 1M", img.uri())
	d := rbdDaemon(t, img)
	conf := img.c.Conf
	for _, tc := range []struct {
		opts map[string]any
		want string
	}{
		{map[string]any{"pool": "nopool", "image": img.name, "conf": conf}, "error opening pool nopool: No such file or directory"},
		{map[string]any{"pool": "rbd", "image": "noimage", "conf": conf}, "error reading header from noimage: No such file or directory"},
		{map[string]any{"pool": "rbd", "image": img.name, "conf": "/nonexistent/ceph.conf"}, "error reading conf file /nonexistent/ceph.conf: No such file or directory"},
		{map[string]any{"pool": "rbd", "namespace": "nons", "image": img.name, "conf": conf}, "namespace 'nons' does not exist"},
		{map[string]any{"pool": "rbd", "image": img.name, "conf": conf, "snapshot": "s1"}, "rbd snapshots are read-only"},
		{map[string]any{"pool": "rbd", "image": img.name, "conf": conf, "snapshot": "nosnap", "read-only": true}, "error reading header from " + img.name + ": No such file or directory"},
		{map[string]any{"pool": "rbd", "conf": conf}, "Parameter 'image' is missing"},
	} {
		o := map[string]any{"driver": "rbd", "node-name": "x"}
		for k, v := range tc.opts {
			o[k] = v
		}
		d.MustFail("blockdev-add", o, "GenericError", tc.want)
	}
	if n := namedNodes(d, true); len(n) != 0 {
		t.Errorf("nodes after failed adds: %v", n)
	}

	// The snapshot reads as it was; it cannot be written.
	d.Cmd("blockdev-add", img.opts("snap", "snapshot", "s1", "read-only", true))
	if n := namedNodes(d, true)["snap"]; !n.RO {
		t.Errorf("snapshot node not read-only: %+v", n)
	}
	sock := startNBD(d)
	d.MustFail("block-export-add", map[string]any{"type": "nbd", "id": "e0", "node-name": "snap", "writable": true}, "GenericError", "Cannot export read-only node as writable")
	d.Cmd("block-export-add", map[string]any{"type": "nbd", "id": "e0", "node-name": "snap"})
	run(t, "qemu-io", "-f", "raw", "-r", "-c", "read -P 0x21 0 1M", nbdURI(sock, "snap"))
	if out, err := runErr("qemu-io", "-f", "raw", "-c", "write -P 0x23 0 4k", nbdURI(sock, "snap")); err == nil && !strings.Contains(out, "read-only") && !strings.Contains(out, "Permission denied") {
		t.Errorf("write to the snapshot's export: %s", out)
	}
	run(t, "qemu-io", "-r", "-c", "read -P 0x22 0 1M", img.uri())
}

// TestRBDClusterDown: a cluster that does not answer fails the open with
// qsd's error within the mount timeout; meanwhile blockd keeps serving
// other clients (qsd's monitor is blocked until the open gives up).
func TestRBDClusterDown(t *testing.T) {
	img := newRBD(t, "1M")
	d := rbdDaemon(t, img)
	dead := d.Path("dead.conf")
	if err := os.WriteFile(dead, []byte(fmt.Sprintf("[global]\nmon host = v2:127.0.0.1:%s\nauth client required = none\nclient mount timeout = 3\nkeyring = /dev/null\n", freePort(t))), 0o644); err != nil {
		t.Fatal(err)
	}
	type result struct {
		err *QMPError
		dur time.Duration
	}
	done := make(chan result, 1)
	go func() {
		t0 := time.Now()
		_, qerr := d.Try("blockdev-add", map[string]any{"driver": "rbd", "node-name": "x", "pool": "rbd", "image": img.name, "conf": dead})
		done <- result{qerr, time.Since(t0)}
	}()
	time.Sleep(500 * time.Millisecond)
	if !isQSD() {
		t0 := time.Now()
		// The other monitor connection: its graph query must not wait.
		d.Cmd("query-named-block-nodes", nil)
		// Under 2 s: the open waits out its 3 s mount timeout, a query
		// that waited for it would take at least 2.5 s.
		if w := time.Since(t0); w > 2*time.Second {
			t.Errorf("another client waited %v for query-named-block-nodes during the open", w)
		}
	}
	r := <-done
	if r.err == nil || r.err.Desc != "error connecting: Connection timed out" {
		t.Errorf("open with the cluster down: %v", r.err)
	}
	if r.dur > 10*time.Second {
		t.Errorf("open with the cluster down took %v (mount timeout 3 s)", r.dur)
	}
}

// TestRBDInternalSnapshot: blockdev-snapshot-internal-sync on an rbd node
// makes an rbd snapshot (listed by rbd and in the node's image info);
// blockdev-snapshot-delete-internal-sync removes it.
func TestRBDInternalSnapshot(t *testing.T) {
	img := newRBD(t, "8M")
	d := rbdDaemon(t, img)
	d.Cmd("blockdev-add", img.opts("r"))
	d.Cmd("blockdev-snapshot-internal-sync", map[string]any{"device": "r", "name": "sn1"})
	if out, err := img.c.RBD("snap", "ls", cephtest.Pool+"/"+img.name); err != nil || !strings.Contains(out, "sn1") {
		t.Errorf("rbd snap ls after the snapshot: %s %v", out, err)
	}
	snaps, _ := namedNodes(d, true)["r"].Image["snapshots"].([]any)
	if len(snaps) != 1 || snaps[0].(map[string]any)["name"] != "sn1" || snaps[0].(map[string]any)["id"] != "sn1" ||
		snaps[0].(map[string]any)["vm-state-size"] != float64(8<<20) {
		t.Errorf("snapshots in the image info: %v", snaps)
	}
	d.Cmd("blockdev-snapshot-delete-internal-sync", map[string]any{"device": "r", "name": "sn1"})
	if out, err := img.c.RBD("snap", "ls", cephtest.Pool+"/"+img.name); err != nil || strings.Contains(out, "sn1") {
		t.Errorf("rbd snap ls after the deletion: %s %v", out, err)
	}
}

// TestRBDClusterLost: the cluster's only OSD is killed while a mirror
// from a local qcow2 image copies into an rbd image. With `rados osd op
// timeout` in the client's conf, librbd fails the requests after that
// time (without it they wait for the OSD forever, and so does the job);
// the job then fails (on-target-error=report) or pauses (stop, then a
// forced cancel ends it). Meanwhile the daemon keeps answering QMP, the
// daemon quits within bounded time, and the local image is clean. The
// test runs a cluster of its own: it breaks it.
func TestRBDClusterLost(t *testing.T) {
	for _, policy := range []string{"report", "stop"} {
		t.Run(policy, func(t *testing.T) {
			shared := newRBD(t, "1M") // skips where there is no cluster
			dir, err := os.MkdirTemp("", "iotests-ceph-lost")
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { os.RemoveAll(dir) })
			c, err := cephtest.Start(dir)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(c.Stop)
			const opTimeout = 5
			conf := filepath.Join(dir, "client.conf")
			base, err := os.ReadFile(c.Conf)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(conf, append(base, fmt.Sprintf("\n[client]\nrados osd op timeout = %d\n", opTimeout)...), 0o644); err != nil {
				t.Fatal(err)
			}
			img := rbdImage{c, "lost"}
			if _, err := c.RBD("create", "--size", "64M", cephtest.Pool+"/"+img.name); err != nil {
				t.Fatal(err)
			}
			d := rbdDaemon(t, shared)
			run(t, "qemu-img", "create", "-q", "-f", "qcow2", d.Path("src.qcow2"), "64M")
			run(t, "qemu-io", "-c", "write -P 0x5a 0 64M", d.Path("src.qcow2"))
			d.Cmd("blockdev-add", map[string]any{"driver": "qcow2", "node-name": "src",
				"file": map[string]any{"driver": "file", "filename": d.Path("src.qcow2")}})
			tgt := img.opts("tgt")
			tgt["conf"] = conf
			d.Cmd("blockdev-add", tgt)
			// 8 MiB/s: the job is still copying when the OSD goes.
			d.Cmd("blockdev-mirror", map[string]any{"job-id": "m", "device": "src", "target": "tgt", "sync": "full",
				"speed": 8 << 20, "on-target-error": policy, "auto-dismiss": false})
			time.Sleep(1500 * time.Millisecond)
			c.StopOSD()
			t0 := time.Now()

			// Until the job gives up, query-jobs answers well within the
			// op timeout (with room for a loaded machine).
			want := map[string]string{"report": "concluded", "stop": "paused"}[policy]
			deadline := t0.Add(time.Duration(opTimeout)*time.Second + 50*time.Second)
			for {
				q0 := time.Now()
				j, ok := queryJobs(d)["m"]
				if w := time.Since(q0); w > opTimeout*time.Second/2 { // not waiting out the op timeout
					t.Errorf("query-jobs took %v with the OSD gone", w)
				}
				if !ok {
					t.Fatal("job m disappeared")
				}
				if j.Status == want {
					break
				}
				if j.Status == "concluded" || j.Status == "null" {
					t.Fatalf("job ended %s (%q), want %s", j.Status, j.Error, want)
				}
				if time.Now().After(deadline) {
					t.Fatalf("job still %s %v after the OSD was killed", j.Status, time.Since(t0))
				}
				time.Sleep(250 * time.Millisecond)
			}
			t.Logf("job %s %v after the OSD was killed", want, time.Since(t0).Round(100*time.Millisecond))
			e := eventsOf(d.History(), "BLOCK_JOB_ERROR", "m")
			if len(e) == 0 || e[0].Data["operation"] != "write" || e[0].Data["action"] != policy {
				t.Errorf("BLOCK_JOB_ERROR %v", e)
			}
			if policy == "stop" {
				d.Cmd("block-job-cancel", map[string]any{"device": "m", "force": true})
				if !d.WaitHistory(func(ev []Event) bool {
					s := statuses(ev, "m")
					return len(s) > 0 && s[len(s)-1] == "concluded"
				}, time.Duration(opTimeout)*time.Second+50*time.Second) {
					t.Fatalf("cancelled job did not conclude: %v", statuses(d.History(), "m"))
				}
			}
			j := queryJobs(d)["m"]
			if j.Status != "concluded" || j.Error == "" {
				t.Errorf("job at the end: %+v", j)
			}
			t.Logf("job error: %s", j.Error)
			d.Cmd("job-dismiss", map[string]any{"id": "m"})
			if !isQSD() {
				// qsd reads the first bytes of an rbd image in the monitor
				// to describe it (its LUKS probe): with the OSD gone this
				// command waits out the op timeout and then fails ("cannot
				// read image start for probe"). blockd does not read.
				q0 := time.Now()
				d.Cmd("query-named-block-nodes", nil)
				if w := time.Since(q0); w > opTimeout*time.Second/2 { // not waiting out the op timeout
					t.Errorf("query-named-block-nodes took %v with the OSD gone", w)
				}
			}
			q0 := time.Now()
			d.Quit()
			t.Logf("quit took %v", time.Since(q0).Round(100*time.Millisecond))
			run(t, "qemu-img", "check", d.Path("src.qcow2"))
			run(t, "qemu-io", "-r", "-c", "read -P 0x5a 0 64M", d.Path("src.qcow2"))
		})
	}
}
