package iotests

import (
	"strings"
	"testing"
)

// backupSource makes src.qcow2 (64 MiB: 0x11 in [0, 16M), 0x22 in
// [32M, 40M), holes elsewhere) and the empty target tgt.qcow2, and adds
// them as nodes src and tgt.
func backupSource(t *testing.T, d *Daemon) {
	t.Helper()
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", d.Path("src.qcow2"), "64M")
	run(t, "qemu-io", "-f", "qcow2", "-c", "write -P 0x11 0 16M", "-c", "write -P 0x22 32M 8M", d.Path("src.qcow2"))
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", d.Path("tgt.qcow2"), "64M")
	addQcow2(d, "src", "src.qcow2", nil)
	addQcow2(d, "tgt", "tgt.qcow2", nil)
}

// filtersOf lists the nodes of driver drv.
func filtersOf(d *Daemon, drv string) []string {
	var names []string
	for name, n := range namedNodes(d, true) {
		if n.Drv == drv {
			names = append(names, name)
		}
	}
	return names
}

// TestBackupFullUnderWrites: a full backup, slowed down so that guest
// writes through an NBD export land while it runs, leaves the target
// equal to the source as it was when the job started; the implicit
// copy-before-write filter shows while the job runs; the events are qsd's.
func TestBackupFullUnderWrites(t *testing.T) {
	d := start(t)
	backupSource(t, d)
	run(t, "cp", d.Path("src.qcow2"), d.Path("ref.qcow2"))
	sock := startNBD(d)
	d.Cmd("block-export-add", map[string]any{"type": "nbd", "id": "exp0", "node-name": "src", "writable": true})
	d.ClearHistory()
	mustCall(t, d, "blockdev-backup", map[string]any{"job-id": "b", "device": "src", "target": "tgt", "sync": "full", "speed": 1 << 20})
	wantEvents(t, d, "b", "created", "running", "paused", "running")
	if f := filtersOf(d, "copy-before-write"); len(f) != 1 || !strings.HasPrefix(f[0], "#block") {
		t.Errorf("copy-before-write filters: %v", f)
	}
	run(t, "qemu-io", "-f", "raw", "-c", "write -P 0x77 0 1M", "-c", "write -P 0x78 36M 1M",
		"-c", "write -P 0x79 60M 1M", "-c", "write -z 8M 1M", nbdURI(sock, "src"))
	if j := queryJobs(d)["b"]; j.Status != "running" {
		t.Fatalf("the writes did not land while the job ran: %+v", j)
	}
	d.Cmd("block-job-set-speed", map[string]any{"device": "b", "speed": 0})
	waitStatus(t, d, "b", "null")
	wantEvents(t, d, "b", "created", "running", "paused", "running", "waiting", "pending", "BLOCK_JOB_COMPLETED", "concluded", "null")
	c := eventsOf(d.History(), "BLOCK_JOB_COMPLETED", "b")[0].Data
	if c["len"] != float64(64<<20) || c["offset"] != float64(64<<20) || c["type"] != "backup" || c["speed"] != float64(0) || c["error"] != nil {
		t.Errorf("BLOCK_JOB_COMPLETED %v", c)
	}
	if f := filtersOf(d, "copy-before-write"); len(f) != 0 {
		t.Errorf("filters left after the job: %v", f)
	}
	d.DelExport("exp0")
	d.Quit()
	for _, img := range []string{"src.qcow2", "tgt.qcow2"} {
		run(t, "qemu-img", "check", d.Path(img))
	}
	run(t, "qemu-img", "compare", d.Path("tgt.qcow2"), d.Path("ref.qcow2"))
	run(t, "qemu-io", "-r", "-f", "qcow2", "-c", "read -P 0x11 0 16M", "-c", "read -P 0x22 32M 8M", "-c", "read -P 0 60M 1M", d.Path("tgt.qcow2"))
	run(t, "qemu-io", "-r", "-f", "qcow2", "-c", "read -P 0x77 0 1M", "-c", "read -P 0 8M 1M", "-c", "read -P 0x78 36M 1M", "-c", "read -P 0x79 60M 1M", d.Path("src.qcow2"))
}

// TestBackupIncremental: a bitmap records the writes after a full
// backup; an incremental backup into an overlay of the full one copies
// only them (the job's length) and the result reads as the source; the
// bitmap is clean and free again.
func TestBackupIncremental(t *testing.T) {
	d := start(t)
	backupSource(t, d)
	sock := startNBD(d)
	d.Cmd("block-export-add", map[string]any{"type": "nbd", "id": "exp0", "node-name": "src", "writable": true})
	addBitmap(d, "src", "b0")
	d.Cmd("blockdev-backup", map[string]any{"job-id": "full", "device": "src", "target": "tgt", "sync": "full"})
	waitStatus(t, d, "full", "null")
	run(t, "qemu-io", "-f", "raw", "-c", "write -P 0x55 5M 1M", "-c", "write -P 0x56 50M 64k", nbdURI(sock, "src"))
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-u", "-b", d.Path("tgt.qcow2"), "-F", "qcow2", d.Path("inc.qcow2"), "64M")
	addQcow2(d, "inc", "inc.qcow2", map[string]any{"backing": "tgt"})
	d.ClearHistory()
	d.Cmd("blockdev-backup", map[string]any{"job-id": "i", "device": "src", "target": "inc", "sync": "incremental", "bitmap": "b0"})
	waitStatus(t, d, "i", "null")
	c := eventsOf(d.History(), "BLOCK_JOB_COMPLETED", "i")[0].Data
	if want := float64(1<<20 + 64<<10); c["len"] != want || c["offset"] != want {
		t.Errorf("BLOCK_JOB_COMPLETED %v, want len and offset %v", c, want)
	}
	wantBitmaps(t, d, "src", bm("b0", 65536, 0, true, false))
	d.DelExport("exp0")
	d.Quit()
	for _, img := range []string{"src.qcow2", "tgt.qcow2", "inc.qcow2"} {
		run(t, "qemu-img", "check", d.Path(img))
	}
	run(t, "qemu-img", "compare", d.Path("inc.qcow2"), d.Path("src.qcow2"))
	run(t, "qemu-io", "-r", "-f", "qcow2", "-c", "read -P 0x55 5M 1M", "-c", "read -P 0x56 50M 64k", "-c", "read -P 0x11 6M 1M", d.Path("inc.qcow2"))
	// Only the written clusters are in the overlay.
	var m []mapEntry
	if err := jsonUnmarshal(run(t, "qemu-img", "map", "--output=json", d.Path("inc.qcow2")), &m); err != nil {
		t.Fatal(err)
	}
	for _, e := range m {
		if e.Depth == 0 && e.Data && (e.Start < 5<<20 || e.Start >= 6<<20) && e.Start != 50<<20 {
			t.Errorf("the overlay holds more than the writes: %+v", e)
		}
	}
}

// TestBackupErrors: every refused backup with qsd's message, the graph
// unchanged; a busy bitmap and a busy target; a sync=none job runs until
// cancelled, and a cancelled backup ends with BLOCK_JOB_CANCELLED.
func TestBackupErrors(t *testing.T) {
	d := start(t)
	backupSource(t, d)
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", d.Path("small.qcow2"), "32M")
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", d.Path("tgt2.qcow2"), "64M")
	addQcow2(d, "small", "small.qcow2", nil)
	addQcow2(d, "tgt2", "tgt2.qcow2", nil)
	addBitmap(d, "src", "b0")
	before := edges(d)
	bk := func(extra map[string]any) map[string]any {
		a := map[string]any{"job-id": "j", "device": "src", "target": "tgt", "sync": "full"}
		for k, v := range extra {
			a[k] = v
		}
		return a
	}
	for _, tc := range []struct {
		args map[string]any
		desc string
	}{
		{bk(map[string]any{"device": "nosuch"}), "Cannot find device='nosuch' nor node-name='nosuch'"},
		{bk(map[string]any{"target": "nosuch"}), "Cannot find device='nosuch' nor node-name='nosuch'"},
		{bk(map[string]any{"target": "src"}), "Source and target cannot be the same"},
		{bk(map[string]any{"sync": "bitmap"}), "must provide a valid bitmap name for 'bitmap' sync mode"},
		{bk(map[string]any{"sync": "incremental"}), "must provide a valid bitmap name for 'incremental' sync mode"},
		{bk(map[string]any{"bitmap": "nosuch"}), "Bitmap 'nosuch' could not be found"},
		{bk(map[string]any{"bitmap": "b0"}), "Bitmap sync mode must be given when providing a bitmap"},
		{bk(map[string]any{"bitmap-mode": "always"}), "Cannot specify bitmap sync mode without a bitmap"},
		{bk(map[string]any{"sync": "incremental", "bitmap": "b0", "bitmap-mode": "always"}), "Bitmap sync mode must be 'on-success' when using sync mode 'incremental'"},
		{bk(map[string]any{"sync": "none", "bitmap": "b0", "bitmap-mode": "on-success"}), "sync mode 'none' does not produce meaningful bitmap outputs"},
		{bk(map[string]any{"bitmap": "b0", "bitmap-mode": "never"}), "Bitmap sync mode 'never' has no meaningful effect when combined with sync mode 'full'"},
		{bk(map[string]any{"target": "small"}), "Source and target image have different sizes"},
		{bk(map[string]any{"x-perf": map[string]any{"max-workers": 0}}), "max-workers must be between 1 and 2147483647"},
		{bk(map[string]any{"x-perf": map[string]any{"max-chunk": -1}}), "max-chunk must be zero (which means no limit) or positive"},
		{bk(map[string]any{"x-perf": map[string]any{"max-chunk": 1000}}), "Required max-chunk (1000) is less than backup cluster size (65536)"},
		{bk(map[string]any{"filter-node-name": "tgt"}), "Could not create node: Duplicate nodes with node-name='tgt'"},
		{bk(map[string]any{"speed": -1}), "Parameter 'speed' expects a non-negative value"},
		{bk(map[string]any{"job-id": "j/"}), "Invalid job ID 'j/'"},
		{bk(map[string]any{"sync": "bogus"}), "Parameter 'sync' does not accept value 'bogus'"},
		{bk(map[string]any{"bitmap": "b0", "bitmap-mode": "sometimes"}), "Parameter 'bitmap-mode' does not accept value 'sometimes'"},
	} {
		d.MustFail("blockdev-backup", tc.args, "GenericError", tc.desc)
	}
	if after := edges(d); len(after) != len(before) {
		t.Errorf("graph changed by failed commands:\n%v\n%v", before, after)
	}
	// sync=none copies only what guests overwrite, until cancelled; its
	// bitmap stays busy meanwhile, and its target may not be used again.
	d.ClearHistory()
	d.Cmd("blockdev-backup", bk(map[string]any{"job-id": "n", "sync": "full", "speed": 1, "bitmap": "b0", "bitmap-mode": "always", "filter-node-name": "f1"}))
	if f := filtersOf(d, "copy-before-write"); len(f) != 1 || f[0] != "f1" {
		t.Errorf("copy-before-write filters: %v", f)
	}
	d.MustFail("blockdev-backup", bk(map[string]any{"target": "tgt2", "bitmap": "b0", "bitmap-mode": "always"}), "GenericError", "Bitmap 'b0' is currently in use by another operation and cannot be used")
	d.MustFail("block-dirty-bitmap-clear", map[string]any{"node": "src", "name": "b0"}, "GenericError", "Bitmap 'b0' is currently in use by another operation and cannot be used")
	d.MustFail("blockdev-backup", bk(map[string]any{"device": "tgt2"}), "GenericError", "Node 'tgt' is busy: block device is in use by block job: backup")
	d.MustFail("blockdev-backup", bk(map[string]any{"device": "f1", "target": "tgt2"}), "GenericError", "Node 'f1' is busy: block device is in use by block job: backup")
	d.Cmd("block-job-cancel", map[string]any{"device": "n"})
	waitStatus(t, d, "n", "null")
	// qsd drains the source for each refused backup too: the job pauses
	// and resumes in between.
	got := strings.Join(jobEvents(d.History(), "n"), ",")
	got = strings.ReplaceAll(got, "paused,running,", "")
	if want := "created,running,aborting,BLOCK_JOB_CANCELLED,concluded,null"; got != want {
		t.Errorf("events of job n: got %s, want %s with pauses between", got, want)
	}
	// A failed 'always' keeps in the bitmap what was not copied.
	if b := bitmapsOf(t, d, "src"); len(b) != 1 || b[0]["count"].(float64) < 60<<20 || b[0]["busy"] != false {
		t.Errorf("bitmap after a cancelled 'always' backup: %v", b)
	}
	d.ClearHistory()
	d.Cmd("blockdev-backup", bk(map[string]any{"job-id": "none", "sync": "none", "target": "tgt2"}))
	if j := queryJobs(d)["none"]; j.Status != "running" {
		t.Errorf("sync=none job: %+v", j)
	}
	d.Cmd("job-cancel", map[string]any{"id": "none"})
	waitStatus(t, d, "none", "null")
	wantEvents(t, d, "none", "created", "running", "paused", "running", "aborting", "BLOCK_JOB_CANCELLED", "concluded", "null")
	if after := edges(d); len(after) != len(before) {
		t.Errorf("graph changed by the jobs:\n%v\n%v", before, after)
	}
}

// TestDriveBackup: drive-backup makes the target image itself (sync=full:
// an image of its own; sync=top: an image naming the source's backing
// file, holding only the top's data), opens it for the job and closes it
// when the job ends; mode=existing backs up into an image made before.
func TestDriveBackup(t *testing.T) {
	d := start(t)
	base, top := d.Path("base.qcow2"), d.Path("top.qcow2")
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", base, "16M")
	run(t, "qemu-io", "-f", "qcow2", "-c", "write -P 0x11 0 8M", base)
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", top)
	run(t, "qemu-io", "-f", "qcow2", "-c", "write -P 0x22 4M 1M", top)
	addQcow2(d, "base", "base.qcow2", map[string]any{"read-only": true})
	addQcow2(d, "top", "top.qcow2", map[string]any{"backing": "base"})
	before := len(namedNodes(d, true))

	backupTo := func(id, target, sync string, extra map[string]any) {
		t.Helper()
		args := map[string]any{"job-id": id, "device": "top", "target": target, "sync": sync}
		for k, v := range extra {
			args[k] = v
		}
		d.Cmd("drive-backup", args)
		waitStatus(t, d, id, "null")
		if n := len(namedNodes(d, true)); n != before {
			t.Errorf("%s: %d nodes after the job, %d before: the target was not closed", id, n, before)
		}
	}
	backupTo("full", d.Path("full.qcow2"), "full", nil)
	backupTo("top", d.Path("topcopy.qcow2"), "top", nil)
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", d.Path("existing.qcow2"), "16M")
	backupTo("existing", d.Path("existing.qcow2"), "full", map[string]any{"mode": "existing"})
	d.MustFail("drive-backup", map[string]any{"device": "nosuch", "target": d.Path("x.qcow2"), "sync": "full"},
		"GenericError", "Cannot find device='nosuch' nor node-name='nosuch'")
	d.Quit()

	for _, img := range []string{"full.qcow2", "topcopy.qcow2", "existing.qcow2"} {
		run(t, "qemu-img", "check", d.Path(img))
	}
	run(t, "qemu-img", "compare", d.Path("full.qcow2"), top)
	run(t, "qemu-img", "compare", d.Path("existing.qcow2"), top)
	// sync=top: the copy names the backing file and holds only the top's
	// cluster range; through its backing it reads as the source.
	if info := run(t, "qemu-img", "info", d.Path("topcopy.qcow2")); !strings.Contains(info, "backing file: "+base) {
		t.Errorf("sync=top image does not name the source's backing file:\n%s", info)
	}
	run(t, "qemu-img", "compare", d.Path("topcopy.qcow2"), top)
	var m []mapEntry
	if err := jsonUnmarshal(run(t, "qemu-img", "map", "--output=json", d.Path("topcopy.qcow2")), &m); err != nil {
		t.Fatal(err)
	}
	for _, e := range m {
		if e.Depth == 0 && e.Data && (e.Start < 4<<20 || e.Start >= 5<<20) {
			t.Errorf("the sync=top copy holds more than the top's data: %+v", e)
		}
	}
}
