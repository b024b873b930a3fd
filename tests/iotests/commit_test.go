package iotests

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// commitRef is the reference chain's data after mid was committed into
// base: the same as before through top (a commit never changes what top
// shows), and what base.qcow2 alone must now read.
func checkBaseHasMid(t *testing.T, d *Daemon) {
	t.Helper()
	run(t, "qemu-io", "-r", "-c", "read -P 0x11 0 8M", "-c", "read -P 0x22 8M 16M", "-c", "read -P 0x11 24M 8M", "-c", "read -P 0 32M 32M", d.Path("base.qcow2"))
}

// TestCommitIntermediate: qsd transcript (d) 1): mid committed into base
// under a writable export of top. The commit_top filter shows while the
// job runs; afterwards top backs onto base in the graph and in its
// header, base holds mid's data, and top's data is unchanged.
func TestCommitIntermediate(t *testing.T) {
	d := start(t)
	mkChain(t, d.Dir)
	addChain(t, d, nil)
	sock := startNBD(d)
	d.Cmd("block-export-add", map[string]any{"type": "nbd", "id": "exp0", "node-name": "top", "writable": true})
	d.ClearHistory()
	mustCall(t, d, "block-commit", map[string]any{"job-id": "c1", "device": "top", "top-node": "mid", "base-node": "base", "speed": 1 << 20})
	wantEvents(t, d, "c1", "created", "running")
	var bj []map[string]any
	d.CmdInto("query-block-jobs", nil, &bj)
	if len(bj) != 1 || bj[0]["type"] != "commit" || bj[0]["len"] != float64(64<<20) || bj[0]["status"] != "running" {
		t.Errorf("query-block-jobs: %v", bj)
	}
	var filters []string
	for name, n := range namedNodes(d, true) {
		if n.Drv == "commit_top" {
			filters = append(filters, name)
			if !strings.HasPrefix(name, "#block") {
				t.Errorf("implicit filter named %s", name)
			}
		}
	}
	if len(filters) != 1 {
		t.Errorf("commit_top filters while committing: %v", filters)
	}
	// The export still reads the chain's data through the filter.
	checkChainData(t, nbdURI(sock, "top"))
	d.Cmd("block-job-set-speed", map[string]any{"device": "c1", "speed": 0})
	waitStatus(t, d, "c1", "null")
	wantEvents(t, d, "c1", "created", "running", "waiting", "pending", "BLOCK_JOB_COMPLETED", "concluded", "null")
	if c := eventsOf(d.History(), "BLOCK_JOB_COMPLETED", "c1")[0].Data; c["len"] != float64(64<<20) || c["offset"] != float64(64<<20) || c["error"] != nil {
		t.Errorf("BLOCK_JOB_COMPLETED %v", c)
	}
	if got := backingOf(d, "top"); got != "base" {
		t.Errorf("top's backing after the commit: %q", got)
	}
	for name, n := range namedNodes(d, true) {
		if n.Drv == "commit_top" {
			t.Errorf("filter %s left behind", name)
		}
	}
	checkChainData(t, nbdURI(sock, "top"))
	d.DelExport("exp0")
	d.Quit()
	if full, _ := headerBacking(t, d.Path("top.qcow2")); full != d.Path("base.qcow2") {
		t.Errorf("top's header names %q", full)
	}
	run(t, "qemu-img", "check", d.Path("base.qcow2"))
	run(t, "qemu-img", "check", d.Path("top.qcow2"))
	checkBaseHasMid(t, d)
	run(t, "qemu-img", "compare", d.Path("top.qcow2"), refImage(t, d))
}

// TestCommitErrors: qsd transcripts (d) 3) and (g) G4, and each argument
// check: qsd's messages and classes, the graph unchanged.
func TestCommitErrors(t *testing.T) {
	d := start(t)
	mkChain(t, d.Dir)
	addChain(t, d, nil)
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", d.Path("other.qcow2"), "64M")
	d.Cmd("blockdev-add", map[string]any{"driver": "qcow2", "node-name": "other", "file": map[string]any{"driver": "file", "filename": d.Path("other.qcow2")}})
	before := edges(d)
	d.MustFail("block-commit", map[string]any{"device": "nosuch"}, "DeviceNotFound", "Device 'nosuch' not found")
	for _, tc := range []struct {
		args map[string]any
		desc string
	}{
		{map[string]any{"device": "base"}, "Need a root block node"},
		{map[string]any{"job-id": "k", "device": "top", "top-node": "mid", "base-node": "mid"}, "cannot commit an image into itself"},
		{map[string]any{"job-id": "k", "device": "top", "top-node": "base", "base-node": "mid"}, "'mid' is not in this backing file chain"},
		{map[string]any{"job-id": "k", "device": "top", "top-node": "other"}, "'other' is not in this backing file chain"},
		{map[string]any{"job-id": "k", "device": "top", "top-node": "base"}, "cannot commit an image into itself"},
		{map[string]any{"job-id": "k", "device": "top", "top-node": "nosuch"}, "Cannot find device='' nor node-name='nosuch'"},
		{map[string]any{"job-id": "k", "device": "top", "top-node": "mid", "top": "mid.qcow2"}, "'top-node' and 'top' are mutually exclusive"},
		{map[string]any{"job-id": "k", "device": "top", "top-node": "mid", "base-node": "base", "base": "base.qcow2"}, "'base-node' and 'base' are mutually exclusive"},
		{map[string]any{"job-id": "k", "device": "top", "top-node": "mid", "base": "nosuch.qcow2"}, "Can't find 'nosuch.qcow2' in the backing chain"},
		{map[string]any{"job-id": "k", "device": "top", "top": "nosuch.qcow2"}, "Top image file nosuch.qcow2 not found"},
		{map[string]any{"job-id": "k", "device": "other"}, "cannot commit an image into itself"},
		{map[string]any{"job-id": "k", "device": "top", "backing-file": "x.qcow2"}, "'backing-file' specified, but 'top' is the active layer"},
		{map[string]any{"job-id": "#k", "device": "top", "top-node": "mid"}, "Invalid job ID '#k'"},
		{map[string]any{"device": "top", "top-node": "mid"}, "Invalid job ID ''"},
	} {
		d.MustFail("block-commit", tc.args, "GenericError", tc.desc)
	}
	if after := edges(d); len(after) != len(before) {
		t.Errorf("graph changed by failed commands:\n%v\n%v", before, after)
	}
	if jobs := queryJobs(d); len(jobs) != 0 {
		t.Errorf("jobs left: %v", jobs)
	}
}

// TestCommitFilterInChain: qsd transcript (f) A4 and A5: a throttle
// filter between top and mid. Committing mid into base keeps the filter
// and points it at base; committing the filter itself (top-node=flt)
// drops it from the chain and points top at base.
func TestCommitFilterInChain(t *testing.T) {
	for _, tc := range []struct {
		name, topNode string
		flt, top      string // what flt's file and top's backing point at afterwards
	}{
		{"top-node below the filter", "mid", "base", "flt"},
		{"top-node is the filter", "flt", "mid", "base"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := start(t)
			mkChain(t, d.Dir)
			addFilterChain(t, d, "throttle")
			d.Cmd("block-commit", map[string]any{"job-id": "k", "device": "top", "top-node": tc.topNode, "base-node": "base"})
			waitStatus(t, d, "k", "null")
			if c := eventsOf(d.History(), "BLOCK_JOB_COMPLETED", "k")[0].Data; c["error"] != nil {
				t.Fatalf("BLOCK_JOB_COMPLETED %v", c)
			}
			e := edges(d)
			if _, ok := e["flt -file-> "+tc.flt]; !ok {
				t.Errorf("flt's child is not %s: %v", tc.flt, e)
			}
			if got := backingOf(d, "top"); got != tc.top {
				t.Errorf("top's backing %q, want %q", got, tc.top)
			}
			sock := startNBD(d)
			d.Cmd("block-export-add", map[string]any{"type": "nbd", "id": "e0", "node-name": "top"})
			checkChainData(t, nbdURI(sock, "top"))
			d.DelExport("e0")
			d.Quit()
			run(t, "qemu-img", "check", d.Path("base.qcow2"))
			checkBaseHasMid(t, d)
		})
	}
}

// TestCommitUnderCopyOnRead: qsd transcript (f) B: a copy-on-read filter
// above mid. qsd refuses to commit mid ("Block node is read-only", after
// 'created' and 'null'): its commit_top filter is read-only and the
// copy-on-read filter above it wants to write. blockd commits, and the
// filter ends up over base.
func TestCommitUnderCopyOnRead(t *testing.T) {
	d := start(t)
	mkChain(t, d.Dir)
	addFilterChain(t, d, "copy-on-read")
	d.ClearHistory()
	_, err := d.Try("block-commit", map[string]any{"job-id": "k5", "device": "top", "top-node": "mid", "base-node": "base"})
	if isQSD() {
		if err == nil || err.Desc != "Block node is read-only" {
			t.Fatalf("qsd: %v", err)
		}
		wantEvents(t, d, "k5", "created", "null")
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	waitStatus(t, d, "k5", "null")
	if _, ok := edges(d)["flt -file-> base"]; !ok {
		t.Errorf("the copy-on-read filter does not sit over base: %v", edges(d))
	}
	d.Quit()
	checkBaseHasMid(t, d)
}

// TestCommitRelativeNames: images in a subdirectory name their backing
// files relatively; the daemon runs elsewhere. The commit finds them,
// and the rewritten header stays relative (qsd writes an absolute path).
func TestCommitRelativeNames(t *testing.T) {
	d := start(t)
	sub := d.Path("images")
	if err := os.Mkdir(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	mkChain(t, sub)
	// Only top is added: its chain opens from the headers.
	d.Cmd("blockdev-add", map[string]any{"driver": "qcow2", "node-name": "top", "file": map[string]any{"driver": "file", "filename": filepath.Join(sub, "top.qcow2")}})
	d.Cmd("block-commit", map[string]any{"job-id": "k", "device": "top", "top": filepath.Join(sub, "mid.qcow2"), "base": "base.qcow2"})
	waitStatus(t, d, "k", "null")
	if c := eventsOf(d.History(), "BLOCK_JOB_COMPLETED", "k")[0].Data; c["error"] != nil {
		t.Fatalf("BLOCK_JOB_COMPLETED %v", c)
	}
	d.Quit()
	var info struct {
		Backing string `json:"backing-filename"`
		Full    string `json:"full-backing-filename"`
	}
	out := run(t, "qemu-img", "info", "--output=json", filepath.Join(sub, "top.qcow2"))
	if err := jsonUnmarshal(out, &info); err != nil {
		t.Fatal(err)
	}
	if filepath.Clean(info.Full) != filepath.Join(sub, "base.qcow2") {
		t.Errorf("top's header resolves to %q", info.Full)
	}
	if !isQSD() && info.Backing != "base.qcow2" {
		t.Errorf("top's header names %q, want the relative base.qcow2", info.Backing)
	}
	run(t, "qemu-img", "check", filepath.Join(sub, "top.qcow2"))
	run(t, "qemu-img", "compare", filepath.Join(sub, "top.qcow2"), refImage(t, d))
}

// TestChangeBackingFile: change-backing-file rewrites the header string
// only (the graph keeps its links), with qsd's checks.
func TestChangeBackingFile(t *testing.T) {
	d := start(t)
	mkChain(t, d.Dir)
	addChain(t, d, nil)
	d.MustFail("change-backing-file", map[string]any{"device": "mid", "image-node-name": "mid", "backing-file": "x"}, "GenericError", "Need a root block node")
	d.MustFail("change-backing-file", map[string]any{"device": "top", "image-node-name": "nosuch", "backing-file": "x"}, "GenericError", "Cannot find device='' nor node-name='nosuch'")
	d.MustFail("change-backing-file", map[string]any{"device": "top", "image-node-name": "base", "backing-file": "x"}, "GenericError", "not allowing backing file change on an image without a backing file")
	d.Cmd("change-backing-file", map[string]any{"device": "top", "image-node-name": "mid", "backing-file": "renamed-base.qcow2"})
	if got := backingOf(d, "mid"); got != "base" {
		t.Errorf("the graph changed: mid backs onto %q", got)
	}
	d.Quit()
	var info struct {
		Backing string `json:"backing-filename"`
	}
	jsonUnmarshal(run(t, "qemu-img", "info", "--output=json", d.Path("mid.qcow2")), &info)
	if info.Backing != "renamed-base.qcow2" {
		t.Errorf("mid's header names %q", info.Backing)
	}
}

// TestCommitKill9: kill -9 while an intermediate commit copies: base
// passes qemu-img check (leaks allowed) and the chain through top still
// reads the original data (top still names mid until the commit ended).
func TestCommitKill9(t *testing.T) {
	for _, at := range []int64{4 << 20, 16 << 20} {
		t.Run(fmt.Sprintf("at %d", at), func(t *testing.T) {
			d := start(t)
			mkChain(t, d.Dir)
			addChain(t, d, nil)
			d.Cmd("block-commit", map[string]any{"job-id": "k", "device": "top", "top-node": "mid", "base-node": "base", "speed": 32 << 20})
			waitProgress(t, d, "k", at)
			d.cmd.Process.Signal(syscall.SIGKILL)
			<-d.done
			for _, img := range []string{"base.qcow2", "mid.qcow2", "top.qcow2"} {
				out, err := runErr("qemu-img", "check", d.Path(img))
				if ex, ok := err.(*exec.ExitError); err != nil && !(ok && ex.ExitCode() == 3) {
					t.Fatalf("qemu-img check %s after kill -9: %v\n%s", img, err, out)
				}
			}
			run(t, "qemu-img", "compare", d.Path("top.qcow2"), refImage(t, d))
		})
	}
}

func jsonUnmarshal(s string, v any) error { return json.Unmarshal([]byte(s), v) }
