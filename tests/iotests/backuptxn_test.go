package iotests

import (
	"strings"
	"testing"
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
	// The names are free again.
	d.Cmd("transaction", map[string]any{"actions": []any{
		map[string]any{"type": "drive-backup", "data": map[string]any{"job-id": "b", "device": "src", "target": d.Path("drv.qcow2"), "sync": "full", "format": "qcow2"}},
	}})
	waitStatus(t, d, "b", "null")
	d.Quit()
	run(t, "qemu-img", "compare", d.Path("drv.qcow2"), d.Path("src.qcow2"))
	run(t, "qemu-img", "check", d.Path("drv.qcow2"))
}
