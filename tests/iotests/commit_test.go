package iotests

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
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

// TestCommitActive: qsd transcript (d) 2): top committed into base while
// top is exported writable. The mirror_top filter (named by
// filter-node-name) shows while the job runs; it gets READY by itself;
// job-complete moves the export to base, whose data is then the chain's.
func TestCommitActive(t *testing.T) {
	d := start(t)
	mkChain(t, d.Dir)
	addChain(t, d, nil)
	sock := startNBD(d)
	d.Cmd("block-export-add", map[string]any{"type": "nbd", "id": "exp0", "node-name": "top", "writable": true})
	d.ClearHistory()
	d.Cmd("block-commit", map[string]any{"job-id": "c2", "device": "top", "base-node": "base", "filter-node-name": "my-commit-filter"})
	waitJobEvent(t, d, "BLOCK_JOB_READY", "c2")
	wantEvents(t, d, "c2", "created", "running", "ready", "BLOCK_JOB_READY")
	r := eventsOf(d.History(), "BLOCK_JOB_READY", "c2")[0].Data
	if r["len"] != r["offset"] || r["type"] != "commit" {
		t.Errorf("BLOCK_JOB_READY %v", r)
	}
	if n, ok := namedNodes(d, true)["my-commit-filter"]; !ok || n.Drv != "mirror_top" {
		t.Errorf("the named mirror_top filter: %+v", n)
	}
	var bj []map[string]any
	d.CmdInto("query-block-jobs", nil, &bj)
	if len(bj) != 1 || bj[0]["status"] != "ready" || bj[0]["ready"] != true || bj[0]["type"] != "commit" {
		t.Errorf("query-block-jobs: %v", bj)
	}
	// Writes while READY reach base too.
	run(t, "qemu-io", "-f", "raw", "-c", "write -P 0x55 1M 1M", "-c", "write -P 0x56 30M 3M", nbdURI(sock, "top"))
	d.Cmd("block-job-complete", map[string]any{"device": "c2"})
	waitStatus(t, d, "c2", "null")
	wantEvents(t, d, "c2", "created", "running", "ready", "BLOCK_JOB_READY", "waiting", "pending", "BLOCK_JOB_COMPLETED", "concluded", "null")
	var exps []map[string]any
	d.CmdInto("query-block-exports", nil, &exps)
	if len(exps) != 1 || exps[0]["node-name"] != "base" {
		t.Errorf("export after the pivot: %v", exps)
	}
	if _, ok := namedNodes(d, true)["my-commit-filter"]; ok {
		t.Errorf("the filter outlived the job")
	}
	d.DelExport("exp0")
	d.Quit()
	ref := refImage(t, d)
	run(t, "qemu-io", "-f", "raw", "-c", "write -P 0x55 1M 1M", "-c", "write -P 0x56 30M 3M", ref)
	run(t, "qemu-img", "check", d.Path("base.qcow2"))
	run(t, "qemu-img", "compare", d.Path("base.qcow2"), ref)
}

// TestCommitActiveCancel: qsd transcript (d) 4) and K-5: without
// filter-node-name the filter is implicit; a cancel without force in
// READY ends the job as completed, with force as cancelled; neither
// moves anyone off top, whose data stays the chain's.
func TestCommitActiveCancel(t *testing.T) {
	for _, force := range []bool{false, true} {
		t.Run(fmt.Sprintf("force %v", force), func(t *testing.T) {
			d := start(t)
			mkChain(t, d.Dir)
			addChain(t, d, nil)
			d.MustFail("block-commit", map[string]any{"device": "top"}, "GenericError", "Invalid job ID ''")
			d.Cmd("block-commit", map[string]any{"job-id": "c3", "device": "top"})
			waitJobEvent(t, d, "BLOCK_JOB_READY", "c3")
			var implicit []string
			for name, n := range namedNodes(d, true) {
				if n.Drv == "mirror_top" {
					implicit = append(implicit, name)
				}
			}
			if len(implicit) != 1 || !strings.HasPrefix(implicit[0], "#block") {
				t.Errorf("mirror_top filters: %v", implicit)
			}
			d.ClearHistory()
			d.Cmd("block-job-cancel", map[string]any{"device": "c3", "force": force})
			waitStatus(t, d, "c3", "null")
			if force {
				wantEvents(t, d, "c3", "aborting", "BLOCK_JOB_CANCELLED", "concluded", "null")
			} else {
				wantEvents(t, d, "c3", "waiting", "pending", "BLOCK_JOB_COMPLETED", "concluded", "null")
			}
			if got := backingOf(d, "top"); got != "mid" {
				t.Errorf("top's backing after a cancel: %q", got)
			}
			sock := startNBD(d)
			d.Cmd("block-export-add", map[string]any{"type": "nbd", "id": "e0", "node-name": "top"})
			checkChainData(t, nbdURI(sock, "top"))
			d.DelExport("e0")
			d.Quit()
			run(t, "qemu-img", "check", d.Path("base.qcow2"))
		})
	}
}

// TestCommitActiveDefaults: qsd transcript (k) X1: block-commit with
// neither top nor base is an active commit of the whole chain into its
// bottom image; complete moves the export there.
func TestCommitActiveDefaults(t *testing.T) {
	d := start(t)
	mkChain(t, d.Dir)
	addChain(t, d, nil)
	startNBD(d)
	d.Cmd("block-export-add", map[string]any{"type": "nbd", "id": "exp0", "node-name": "top", "writable": true})
	d.Cmd("block-commit", map[string]any{"job-id": "k", "device": "top"})
	waitJobEvent(t, d, "BLOCK_JOB_READY", "k")
	r := eventsOf(d.History(), "BLOCK_JOB_READY", "k")[0].Data
	// top's 8M and mid's 16M are above base.
	if r["len"] != float64(24<<20) || r["offset"] != float64(24<<20) {
		t.Errorf("BLOCK_JOB_READY %v", r)
	}
	d.Cmd("job-complete", map[string]any{"id": "k"})
	waitStatus(t, d, "k", "null")
	var exps []map[string]any
	d.CmdInto("query-block-exports", nil, &exps)
	if len(exps) != 1 || exps[0]["node-name"] != "base" {
		t.Errorf("export after the pivot: %v", exps)
	}
	d.DelExport("exp0")
	d.Quit()
	run(t, "qemu-img", "compare", d.Path("base.qcow2"), refImage(t, d))
}

// TestCommitActiveFilters: qsd transcript (f) A6 and C: an active commit
// through a throttle filter between top and mid, and one whose device is
// a throttle filter above top; both complete into base.
func TestCommitActiveFilters(t *testing.T) {
	t.Run("filter in the chain", func(t *testing.T) {
		d := start(t)
		mkChain(t, d.Dir)
		addFilterChain(t, d, "throttle")
		startNBD(d)
		d.Cmd("block-export-add", map[string]any{"type": "nbd", "id": "e0", "node-name": "top", "writable": true})
		d.Cmd("block-commit", map[string]any{"job-id": "k4", "device": "top", "base-node": "base"})
		waitJobEvent(t, d, "BLOCK_JOB_READY", "k4")
		if r := eventsOf(d.History(), "BLOCK_JOB_READY", "k4")[0].Data; r["len"] != float64(24<<20) {
			t.Errorf("BLOCK_JOB_READY %v", r)
		}
		d.Cmd("block-job-complete", map[string]any{"device": "k4"})
		waitStatus(t, d, "k4", "null")
		var exps []map[string]any
		d.CmdInto("query-block-exports", nil, &exps)
		if len(exps) != 1 || exps[0]["node-name"] != "base" {
			t.Errorf("export after the pivot: %v", exps)
		}
		d.DelExport("e0")
		d.Quit()
		run(t, "qemu-img", "compare", d.Path("base.qcow2"), refImage(t, d))
	})
	t.Run("device is a filter", func(t *testing.T) {
		d := start(t)
		mkChain(t, d.Dir)
		addChain(t, d, nil)
		d.Cmd("object-add", map[string]any{"qom-type": "throttle-group", "id": "tg0", "limits": map[string]any{"bps-total": 100 << 20}})
		d.Cmd("blockdev-add", map[string]any{"driver": "throttle", "node-name": "thr-top", "throttle-group": "tg0", "file": "top"})
		d.MustFail("block-commit", map[string]any{"job-id": "k6", "device": "thr-top", "top-node": "nosuch", "base-node": "base"}, "GenericError", "Cannot find device='' nor node-name='nosuch'")
		d.Cmd("block-commit", map[string]any{"job-id": "k7", "device": "thr-top", "base-node": "base"})
		waitJobEvent(t, d, "BLOCK_JOB_READY", "k7")
		d.MustFail("object-del", map[string]any{"id": "tg0"}, "GenericError", "object 'tg0' is in use, can not be deleted")
		d.ClearHistory()
		// quit with a READY job: drained (standby, ready), then cancelled.
		d.Quit()
		wantEvents(t, d, "k7", "standby", "ready", "aborting", "BLOCK_JOB_CANCELLED", "concluded", "null")
	})
}

// TestCommitActiveWithWriter: an active commit while a client keeps
// writing through the export: it gets READY, keeps base in sync, and
// after complete base holds every write.
func TestCommitActiveWithWriter(t *testing.T) {
	d := start(t)
	mkChain(t, d.Dir)
	addChain(t, d, nil)
	sock := startNBD(d)
	d.Cmd("block-export-add", map[string]any{"type": "nbd", "id": "e0", "node-name": "top", "writable": true})
	uri := nbdURI(sock, "top")
	d.Cmd("block-commit", map[string]any{"job-id": "k", "device": "top", "speed": 16 << 20})
	var cmds []string
	for i := 0; i < 40; i++ {
		cmds = append(cmds, "-c", fmt.Sprintf("write -P %d %dk 100k", 0x40+i%16, 1000+i*1500))
	}
	run(t, "qemu-io", append([]string{"-f", "raw"}, append(cmds, uri)...)...)
	waitJobEvent(t, d, "BLOCK_JOB_READY", "k")
	run(t, "qemu-io", append([]string{"-f", "raw"}, append(slices.Clone(cmds[:20]), uri)...)...)
	d.Cmd("block-job-complete", map[string]any{"device": "k"})
	waitStatus(t, d, "k", "null")
	if c := eventsOf(d.History(), "BLOCK_JOB_COMPLETED", "k")[0].Data; c["error"] != nil {
		t.Fatalf("BLOCK_JOB_COMPLETED %v", c)
	}
	d.DelExport("e0")
	d.Quit()
	ref := refImage(t, d)
	run(t, "qemu-io", append([]string{"-f", "raw"}, append(cmds, ref)...)...)
	run(t, "qemu-img", "check", d.Path("base.qcow2"))
	run(t, "qemu-img", "compare", d.Path("base.qcow2"), ref)
}

// waitJobEvent waits for event name of job id (BLOCK_JOB_READY comes
// after the "ready" status change: wait for the event itself).
func waitJobEvent(t *testing.T, d *Daemon, name, id string) Event {
	t.Helper()
	if !d.WaitHistory(func(ev []Event) bool { return len(eventsOf(ev, name, id)) > 0 }, 30*time.Second) {
		t.Fatalf("no %s of job %s: %v", name, id, jobEvents(d.History(), id))
	}
	return eventsOf(d.History(), name, id)[0]
}

// TestCommitActiveKill9: kill -9 during an active commit, while it copies
// and in READY after writes: every image passes qemu-img check (leaks
// allowed) and top, still the active layer, reads the chain's data with
// the writes.
func TestCommitActiveKill9(t *testing.T) {
	for _, when := range []string{"copying", "ready"} {
		t.Run(when, func(t *testing.T) {
			d := start(t)
			mkChain(t, d.Dir)
			addChain(t, d, nil)
			sock := startNBD(d)
			d.Cmd("block-export-add", map[string]any{"type": "nbd", "id": "e0", "node-name": "top", "writable": true})
			writes := []string{"-c", "write -P 0x61 2M 1M", "-c", "write -P 0x62 20M 2M", "-c", "flush"}
			if when == "copying" {
				d.Cmd("block-commit", map[string]any{"job-id": "k", "device": "top", "speed": 8 << 20})
				waitProgress(t, d, "k", 4<<20)
				run(t, "qemu-io", append([]string{"-f", "raw"}, append(slices.Clone(writes), nbdURI(sock, "top"))...)...)
			} else {
				d.Cmd("block-commit", map[string]any{"job-id": "k", "device": "top"})
				waitJobEvent(t, d, "BLOCK_JOB_READY", "k")
				run(t, "qemu-io", append([]string{"-f", "raw"}, append(slices.Clone(writes), nbdURI(sock, "top"))...)...)
			}
			d.cmd.Process.Signal(syscall.SIGKILL)
			<-d.done
			for _, img := range []string{"base.qcow2", "mid.qcow2", "top.qcow2"} {
				out, err := runErr("qemu-img", "check", d.Path(img))
				if ex, ok := err.(*exec.ExitError); err != nil && !(ok && ex.ExitCode() == 3) {
					t.Fatalf("qemu-img check %s after kill -9: %v\n%s", img, err, out)
				}
			}
			ref := refImage(t, d)
			run(t, "qemu-io", append([]string{"-f", "raw"}, append(slices.Clone(writes[:4]), ref)...)...)
			run(t, "qemu-img", "compare", d.Path("top.qcow2"), ref)
		})
	}
}

// TestStreamAndCommitDisjoint: a stream into an intermediate image (n2,
// from n1 down to base n0) while an active commit of the top (n4) into n3
// runs above it, as QEMU's iotest 030 does: both finish, and the chain
// reads what it read before.
func TestStreamAndCommitDisjoint(t *testing.T) {
	d := start(t)
	img := func(i int) string { return d.Path(fmt.Sprintf("img%d.qcow2", i)) }
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", img(0), "64M")
	run(t, "qemu-io", "-c", "write -P 10 0 8M", img(0))
	for i := 1; i <= 4; i++ {
		run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", filepath.Base(img(i-1)), "-F", "qcow2", img(i))
		run(t, "qemu-io", "-c", fmt.Sprintf("write -P %d %dM 8M", 10+i, i*8), img(i))
	}
	for i := 0; i <= 4; i++ {
		o := map[string]any{"driver": "qcow2", "node-name": fmt.Sprintf("n%d", i), "file": map[string]any{"driver": "file", "filename": img(i)}}
		if i > 0 {
			o["backing"] = fmt.Sprintf("n%d", i-1)
		}
		d.Cmd("blockdev-add", o)
	}
	// 1 MiB/s: the stream (8 MiB) outlasts the commit under load.
	d.Cmd("block-stream", map[string]any{"job-id": "s", "device": "n2", "base-node": "n0", "speed": 1 << 20})
	d.Cmd("block-commit", map[string]any{"job-id": "c", "device": "n4", "base-node": "n3"})
	waitJobEvent(t, d, "BLOCK_JOB_READY", "c")
	d.Cmd("block-job-complete", map[string]any{"device": "c"})
	waitStatus(t, d, "c", "null")
	d.Cmd("block-job-set-speed", map[string]any{"device": "s", "speed": 0})
	waitStatus(t, d, "s", "null")
	for _, id := range []string{"s", "c"} {
		if c := eventsOf(d.History(), "BLOCK_JOB_COMPLETED", id)[0].Data; c["error"] != nil {
			t.Errorf("job %s: %v", id, c)
		}
	}
	if got := backingOf(d, "n2"); got != "n0" {
		t.Errorf("n2's backing after the stream: %q", got)
	}
	d.Quit()
	var cmds []string
	for i := 0; i <= 4; i++ {
		cmds = append(cmds, "-c", fmt.Sprintf("read -P %d %dM 8M", 10+i, i*8))
	}
	// n3 is now the active image, holding n4's data, over n2 over n0.
	run(t, "qemu-io", append(append([]string{"-r"}, cmds...), img(3))...)
	run(t, "qemu-img", "check", img(2))
	run(t, "qemu-img", "check", img(3))
}
