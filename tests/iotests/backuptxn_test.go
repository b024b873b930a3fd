package iotests

import (
	"strings"
	"testing"
	"time"
)

// Backups inside a transaction, as libvirt's backup-begin sends them:
// the checkpoint's new bitmap and the backup start at the same point in
// time, and a failed action takes the job back before it ran.

// TestBackupTransactionCheckpoint: a full backup with a new bitmap in one
// transaction, then an incremental backup with the next bitmap in
// another; the incremental copies exactly the writes in between, and
// every image reads as the source did at its point in time.
func TestBackupTransactionCheckpoint(t *testing.T) {
	d := start(t)
	backupSource(t, d)
	sock := startNBD(d)
	d.Cmd("block-export-add", map[string]any{"type": "nbd", "id": "exp0", "node-name": "src", "writable": true})
	d.ClearHistory()
	d.Cmd("transaction", map[string]any{"actions": []any{
		map[string]any{"type": "block-dirty-bitmap-add", "data": map[string]any{"node": "src", "name": "c1", "persistent": true}},
		map[string]any{"type": "blockdev-backup", "data": map[string]any{"job-id": "full", "device": "src", "target": "tgt", "sync": "full"}},
	}})
	waitStatus(t, d, "full", "null")
	wantEvents(t, d, "full", "created", "running", "paused", "running", "waiting", "pending", "BLOCK_JOB_COMPLETED", "concluded", "null")
	wantBitmaps(t, d, "src", bm("c1", 65536, 0, true, true))
	run(t, "qemu-io", "-f", "raw", "-c", "write -P 0x55 5M 1M", "-c", "write -P 0x56 50M 64k", nbdURI(sock, "src"))
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-u", "-b", d.Path("tgt.qcow2"), "-F", "qcow2", d.Path("inc.qcow2"), "64M")
	addQcow2(d, "inc", "inc.qcow2", map[string]any{"backing": "tgt"})
	d.ClearHistory()
	d.Cmd("transaction", map[string]any{"actions": []any{
		map[string]any{"type": "block-dirty-bitmap-add", "data": map[string]any{"node": "src", "name": "c2", "persistent": true}},
		map[string]any{"type": "blockdev-backup", "data": map[string]any{"job-id": "inc", "device": "src", "target": "inc", "sync": "incremental", "bitmap": "c1"}},
	}})
	waitStatus(t, d, "inc", "null")
	c := eventsOf(d.History(), "BLOCK_JOB_COMPLETED", "inc")[0].Data
	if want := float64(1<<20 + 64<<10); c["len"] != want || c["offset"] != want {
		t.Errorf("BLOCK_JOB_COMPLETED %v, want len and offset %v", c, want)
	}
	// c1 was cleared of what the backup copied; c2 started with it. c1
	// lists first: the job's successor, newer than c2, took its name.
	wantBitmaps(t, d, "src", bm("c1", 65536, 0, true, true), bm("c2", 65536, 0, true, true))
	d.DelExport("exp0")
	d.Quit()
	for _, img := range []string{"src.qcow2", "tgt.qcow2", "inc.qcow2"} {
		run(t, "qemu-img", "check", d.Path(img))
	}
	run(t, "qemu-img", "compare", d.Path("inc.qcow2"), d.Path("src.qcow2"))
	out := run(t, "qemu-img", "info", "--output=json", d.Path("src.qcow2"))
	if !strings.Contains(out, `"name": "c1"`) || !strings.Contains(out, `"name": "c2"`) {
		t.Errorf("the persistent bitmaps are not in the image:\n%s", out)
	}
}

// TestBackupTransactionAbort: a backup in a transaction that fails later
// never runs: the job goes, no filter stays, the bitmap added with it is
// gone, the target is untouched.
func TestBackupTransactionAbort(t *testing.T) {
	d := start(t)
	backupSource(t, d)
	d.ClearHistory()
	_, err := d.Try("transaction", map[string]any{"actions": []any{
		map[string]any{"type": "block-dirty-bitmap-add", "data": map[string]any{"node": "src", "name": "c1"}},
		map[string]any{"type": "blockdev-backup", "data": map[string]any{"job-id": "b", "device": "src", "target": "tgt", "sync": "full"}},
		map[string]any{"type": "abort", "data": map[string]any{}},
	}})
	if err == nil || err.Desc != "Transaction aborted using Abort action" {
		t.Fatalf("transaction: %v", err)
	}
	wantEvents(t, d, "b", "created", "aborting", "concluded", "null")
	if len(queryJobs(d)) != 0 {
		t.Errorf("jobs after the abort: %v", queryJobs(d))
	}
	if f := filtersOf(d, "copy-before-write"); len(f) != 0 {
		t.Errorf("filters after the abort: %v", f)
	}
	wantBitmaps(t, d, "src")
	// The names are free again. (The history still has the first b's
	// null: forget it, or the wait below would end at once.)
	d.ClearHistory()
	d.Cmd("transaction", map[string]any{"actions": []any{
		map[string]any{"type": "drive-backup", "data": map[string]any{"job-id": "b", "device": "src", "target": d.Path("drv.qcow2"), "sync": "full", "format": "qcow2"}},
	}})
	waitStatus(t, d, "b", "null")
	d.Quit()
	run(t, "qemu-img", "compare", d.Path("drv.qcow2"), d.Path("src.qcow2"))
	run(t, "qemu-img", "check", d.Path("drv.qcow2"))
}

// TestBackupPullLibvirt is libvirt's pull-mode incremental backup: a
// scratch qcow2 backed by the disk, a sync=none backup into it started
// together with the backup's bitmap (merged from the checkpoint's), and
// an NBD export of the scratch node serving that bitmap. The client
// reads the disk as it was at the start and learns from the bitmap
// what changed since the checkpoint, while the guest goes on writing.
func TestBackupPullLibvirt(t *testing.T) {
	d := start(t)
	backupSource(t, d)
	run(t, "cp", d.Path("src.qcow2"), d.Path("ref.qcow2"))
	sock := startNBD(d)
	d.Cmd("block-export-add", map[string]any{"type": "nbd", "id": "guest", "node-name": "src", "writable": true})
	// The checkpoint made at the last backup, and the writes since.
	addBitmap(d, "src", "c1", "persistent", true)
	run(t, "qemu-io", "-f", "raw", "-c", "write -P 0x33 2M 64k", "-c", "write -P 0x34 33M 128k", nbdURI(sock, "src"))
	run(t, "cp", d.Path("src.qcow2"), d.Path("ref.qcow2")) // what the backup must read
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", d.Path("scratch.qcow2"), "64M")
	d.Cmd("blockdev-add", map[string]any{"driver": "qcow2", "node-name": "scratch", "backing": "src",
		"file": map[string]any{"driver": "file", "filename": d.Path("scratch.qcow2")}})
	d.Cmd("transaction", map[string]any{"actions": []any{
		map[string]any{"type": "block-dirty-bitmap-add", "data": map[string]any{"node": "src", "name": "backup-src", "disabled": true}},
		map[string]any{"type": "block-dirty-bitmap-merge", "data": map[string]any{"node": "src", "target": "backup-src", "bitmaps": []any{"c1"}}},
		map[string]any{"type": "block-dirty-bitmap-add", "data": map[string]any{"node": "src", "name": "c2", "persistent": true}},
		map[string]any{"type": "blockdev-backup", "data": map[string]any{"job-id": "pull", "device": "src", "target": "scratch", "sync": "none"}},
	}})
	d.Cmd("block-export-add", map[string]any{"type": "nbd", "id": "backup", "name": "backup", "node-name": "scratch", "bitmaps": []any{"backup-src"}})
	// The guest writes while the client reads.
	run(t, "qemu-io", "-f", "raw", "-c", "write -P 0x77 2M 1M", "-c", "write -P 0x78 40M 1M", nbdURI(sock, "src"))
	backupURI := nbdURI(sock, "backup")
	run(t, "qemu-img", "compare", "-f", "raw", "-F", "qcow2", backupURI, d.Path("ref.qcow2"))
	if got, want := bitmapMap(t, sock, "backup", "backup-src"), strings.Join([]string{
		"0 2097152 0 clean", "2097152 65536 1 dirty", "2162688 32440320 0 clean",
		"34603008 131072 1 dirty", "34734080 32374784 0 clean"}, "\n"); got != want {
		t.Errorf("the export's bitmap:\n%s\nwant\n%s", got, want)
	}
	d.DelExport("backup")
	d.Cmd("block-job-cancel", map[string]any{"device": "pull"})
	waitStatus(t, d, "pull", "null")
	d.Cmd("blockdev-del", map[string]any{"node-name": "scratch"})
	d.Cmd("block-dirty-bitmap-remove", map[string]any{"node": "src", "name": "backup-src"})
	// c2 holds the guest's writes since the backup began.
	wantBitmaps(t, d, "src", bm("c2", 65536, 2<<20, true, true), bm("c1", 65536, 2<<20+128<<10, true, true))
	d.DelExport("guest")
	d.Quit()
	run(t, "qemu-img", "check", d.Path("src.qcow2"))
	run(t, "qemu-io", "-r", "-f", "qcow2", "-c", "read -P 0x77 2M 1M", "-c", "read -P 0x78 40M 1M", d.Path("src.qcow2"))
}

// TestBackupFrozenBitmap: while a bitmap backup runs, its bitmap is busy
// and shows what it held at the start, whatever the guest writes; a
// cancelled job gives it back those bits plus the writes since.
func TestBackupFrozenBitmap(t *testing.T) {
	d := start(t)
	backupSource(t, d)
	sock := startNBD(d)
	d.Cmd("block-export-add", map[string]any{"type": "nbd", "id": "exp0", "node-name": "src", "writable": true})
	addBitmap(d, "src", "b0")
	run(t, "qemu-io", "-f", "raw", "-c", "write -P 0x55 0 8M", nbdURI(sock, "src"))
	d.Cmd("blockdev-backup", map[string]any{"job-id": "b", "device": "src", "target": "tgt", "sync": "bitmap", "bitmap": "b0", "bitmap-mode": "on-success", "speed": 256 << 10})
	run(t, "qemu-io", "-f", "raw", "-c", "write -P 0x56 40M 1M", nbdURI(sock, "src"))
	// (The job's anonymous bitmaps are listed too, not alike in both.)
	var b0 bitmapInfo
	for _, b := range bitmapsOf(t, d, "src") {
		if b["name"] == "b0" {
			b0 = b
		}
	}
	if b0["count"] != float64(8<<20) || b0["busy"] != true || b0["recording"] != true {
		t.Errorf("the bitmap while the job runs: %v, want busy, recording, count 8 MiB", b0)
	}
	d.Cmd("block-job-cancel", map[string]any{"device": "b"})
	waitStatus(t, d, "b", "null")
	wantBitmaps(t, d, "src", bm("b0", 65536, 9<<20, true, false))
	d.DelExport("exp0")
	d.Quit()
}

// TestBackupTransactionGrouped: with completion-mode grouped, two
// backups finish together; when one fails, the other is cancelled and
// both abort, with qsd's events.
func TestBackupTransactionGrouped(t *testing.T) {
	d := start(t)
	backupSource(t, d)
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", d.Path("tgt2.qcow2"), "64M")
	addQcow2(d, "tgt2", "tgt2.qcow2", nil)
	mkRaw(t, d.Path("bad.raw"), "64M")
	d.Cmd("blockdev-add", map[string]any{"driver": "raw", "node-name": "bad", "file": map[string]any{
		"driver": "blkdebug", "image": map[string]any{"driver": "file", "filename": d.Path("bad.raw")},
		"inject-error": []any{map[string]any{"event": "write_aio", "errno": 5}}}})
	grouped := map[string]any{"completion-mode": "grouped"}
	backup := func(id, target string, extra ...any) map[string]any {
		data := map[string]any{"job-id": id, "device": "src", "target": target, "sync": "full"}
		for i := 0; i+1 < len(extra); i += 2 {
			data[extra[i].(string)] = extra[i+1]
		}
		return map[string]any{"type": "blockdev-backup", "data": data}
	}
	d.ClearHistory()
	d.Cmd("transaction", map[string]any{"properties": grouped, "actions": []any{backup("a", "tgt"), backup("b", "tgt2")}})
	waitStatus(t, d, "a", "null")
	waitStatus(t, d, "b", "null")
	for _, id := range []string{"a", "b"} {
		wantEvents(t, d, id, "created", "running", "paused", "running", "waiting", "pending", "BLOCK_JOB_COMPLETED", "concluded", "null")
	}
	// A target that fails: the other, slow job is cancelled.
	d.ClearHistory()
	d.Cmd("transaction", map[string]any{"properties": grouped, "actions": []any{backup("slow", "tgt2", "speed", 1<<20), backup("bad", "bad")}})
	waitStatus(t, d, "slow", "null")
	waitStatus(t, d, "bad", "null")
	wantEvents(t, d, "bad", "created", "running", "paused", "running", "BLOCK_JOB_ERROR", "aborting", "BLOCK_JOB_COMPLETED", "concluded", "null")
	got := strings.ReplaceAll(strings.Join(jobEvents(d.History(), "slow"), ","), "paused,running,", "")
	if want := "created,running,aborting,BLOCK_JOB_CANCELLED,concluded,null"; got != want {
		t.Errorf("events of job slow: got %s, want %s", got, want)
	}
	// The group's jobs end newest first, one after the other (each
	// goes to aborting as soon as it stops).
	badEnd, slowEnd := -1, -1
	for i, e := range d.History() {
		switch {
		case e.Event == "JOB_STATUS_CHANGE" && e.Data["id"] == "bad" && e.Data["status"] == "null":
			badEnd = i
		case e.Event == "BLOCK_JOB_CANCELLED" && e.Data["device"] == "slow":
			slowEnd = i
		}
	}
	if badEnd < 0 || slowEnd < badEnd {
		t.Errorf("job slow ended (event %d) before job bad (event %d)", slowEnd, badEnd)
	}
	if e := eventsOf(d.History(), "BLOCK_JOB_COMPLETED", "bad"); len(e) != 1 || e[0].Data["error"] != "Input/output error" {
		t.Errorf("BLOCK_JOB_COMPLETED of bad: %v", e)
	}
	d.Quit()
	run(t, "qemu-img", "compare", d.Path("tgt.qcow2"), d.Path("src.qcow2"))
}

// TestBackupTransactionGroupedFinalize: jobs of a grouped transaction
// finalize as one, as QEMU's job transactions do: every job is pending
// before any completes, and where one waits for job-finalize, one
// job-finalize (on any job of the group, even one that would finalize
// by itself) finalizes them all; job-cancel of one pending job aborts
// them all. Each step takes the jobs newest first, one after the other.
func TestBackupTransactionGroupedFinalize(t *testing.T) {
	d := start(t)
	backupSource(t, d)
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", d.Path("tgt2.qcow2"), "64M")
	addQcow2(d, "tgt2", "tgt2.qcow2", nil)
	backup := func(id, target string, autoFinalize bool) map[string]any {
		return map[string]any{"type": "blockdev-backup", "data": map[string]any{
			"job-id": id, "device": "src", "target": target, "sync": "full", "auto-finalize": autoFinalize}}
	}
	// tail is the group's events from the first pending on, as
	// "job:event" (JOB_STATUS_CHANGE as the status).
	tail := func() string {
		var out []string
		for _, e := range d.History() {
			id, _ := e.Data["id"].(string)
			if dev, ok := e.Data["device"].(string); ok {
				id = dev
			}
			name := e.Event
			if name == "JOB_STATUS_CHANGE" {
				name = e.Data["status"].(string)
			} else if !strings.HasPrefix(name, "BLOCK_JOB_") {
				continue
			}
			if name == "pending" || len(out) > 0 {
				out = append(out, id+":"+name)
			}
		}
		return strings.Join(out, " ")
	}
	// QEMU takes a transaction's jobs newest first: b, then a.
	const completions = "b:BLOCK_JOB_COMPLETED b:concluded b:null a:BLOCK_JOB_COMPLETED a:concluded a:null"
	cases := []struct {
		name         string
		autoA, autoB bool
		finalize     string // the job job-finalize names; "" for none
		pending      string // the events of going to pending
	}{
		{"both finalize by themselves", true, true, "", "b:pending a:pending"},
		{"both wait, one job-finalize", false, false, "a", "b:pending b:BLOCK_JOB_PENDING a:pending a:BLOCK_JOB_PENDING"},
		{"one waits, job-finalize on the other", false, true, "b", "b:pending a:pending a:BLOCK_JOB_PENDING"},
	}
	for _, tc := range cases {
		d.ClearHistory()
		d.Cmd("transaction", map[string]any{"properties": map[string]any{"completion-mode": "grouped"},
			"actions": []any{backup("a", "tgt", tc.autoA), backup("b", "tgt2", tc.autoB)}})
		if tc.finalize != "" {
			waitStatus(t, d, "a", "pending")
			waitStatus(t, d, "b", "pending")
			time.Sleep(100 * time.Millisecond) // neither may finalize by itself
			for _, id := range []string{"a", "b"} {
				if s := statuses(d.History(), id); s[len(s)-1] != "pending" {
					t.Fatalf("%s: job %s went on to %s before job-finalize", tc.name, id, s[len(s)-1])
				}
			}
			d.Cmd("job-finalize", map[string]any{"id": tc.finalize})
		}
		waitStatus(t, d, "a", "null")
		waitStatus(t, d, "b", "null")
		if got, want := tail(), tc.pending+" "+completions; got != want {
			t.Errorf("%s: events from pending on:\n got %s\nwant %s", tc.name, got, want)
		}
		for _, id := range []string{"a", "b"} {
			if e := eventsOf(d.History(), "BLOCK_JOB_COMPLETED", id); len(e) != 1 || e[0].Data["error"] != nil {
				t.Errorf("%s: BLOCK_JOB_COMPLETED of %s: %v", tc.name, id, e)
			}
		}
	}
	// job-cancel of a pending job aborts the whole group.
	d.ClearHistory()
	d.Cmd("transaction", map[string]any{"properties": map[string]any{"completion-mode": "grouped"},
		"actions": []any{backup("a", "tgt", false), backup("b", "tgt2", false)}})
	waitStatus(t, d, "a", "pending")
	waitStatus(t, d, "b", "pending")
	d.Cmd("job-cancel", map[string]any{"id": "a"})
	waitStatus(t, d, "a", "null")
	waitStatus(t, d, "b", "null")
	want := "b:pending b:BLOCK_JOB_PENDING a:pending a:BLOCK_JOB_PENDING " +
		"b:aborting b:BLOCK_JOB_CANCELLED b:concluded b:null a:aborting a:BLOCK_JOB_CANCELLED a:concluded a:null"
	if got := tail(); got != want {
		t.Errorf("job-cancel of a pending job: events from pending on:\n got %s\nwant %s", got, want)
	}
	d.Quit()
	run(t, "qemu-img", "compare", d.Path("tgt.qcow2"), d.Path("src.qcow2"))
	run(t, "qemu-img", "compare", d.Path("tgt2.qcow2"), d.Path("src.qcow2"))
}
