package iotests

import (
	"encoding/json"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// addChain adds the reference chain (mkChain) as explicit nodes: base,
// mid and top, each with its file node (base-file, ...); extra options
// per node may be given.
func addChain(t *testing.T, d *Daemon, extra map[string]map[string]any) {
	t.Helper()
	backing := map[string]string{"mid": "base", "top": "mid"}
	for _, n := range []string{"base", "mid", "top"} {
		o := map[string]any{"driver": "qcow2", "node-name": n, "file": map[string]any{"driver": "file", "node-name": n + "-file", "filename": d.Path(n + ".qcow2")}}
		if b, ok := backing[n]; ok {
			o["backing"] = b
		}
		for k, v := range extra[n] {
			o[k] = v
		}
		d.Cmd("blockdev-add", o)
	}
}

// jobEvents returns the names of a job's events in order: status
// changes by their status, BLOCK_JOB_* by their name.
func jobEvents(ev []Event, id string) []string {
	var s []string
	for _, e := range ev {
		switch {
		case e.Event == "JOB_STATUS_CHANGE" && e.Data["id"] == id:
			s = append(s, e.Data["status"].(string))
		case strings.HasPrefix(e.Event, "BLOCK_JOB_") && (e.Data["device"] == id || e.Data["id"] == id):
			s = append(s, e.Event)
		}
	}
	return s
}

// eventsOf returns the events called name of job id.
func eventsOf(ev []Event, name, id string) []Event {
	var out []Event
	for _, e := range ev {
		if e.Event == name && (e.Data["device"] == id || e.Data["id"] == id) {
			out = append(out, e)
		}
	}
	return out
}

func wantEvents(t *testing.T, d *Daemon, id string, want ...string) {
	t.Helper()
	got := jobEvents(d.History(), id)
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("events of job %s:\n got %v\nwant %v", id, got, want)
	}
}

// headerBacking is what qemu-img info says an image's header names as its
// backing file, resolved to a path ("" for none).
func headerBacking(t *testing.T, img string) (full, format string) {
	t.Helper()
	var info struct {
		Full   string `json:"full-backing-filename"`
		Format string `json:"backing-filename-format"`
	}
	out := run(t, "qemu-img", "info", "-U", "--output=json", img)
	if err := json.Unmarshal([]byte(out), &info); err != nil {
		t.Fatalf("qemu-img info: %v\n%s", err, out)
	}
	return filepath.Clean(info.Full), info.Format
}

// backingOf is the node the graph shows as n's backing child ("" if none).
func backingOf(d *Daemon, n string) string {
	for e := range edges(d) {
		if strings.HasPrefix(e, n+" -backing-> ") {
			return strings.TrimPrefix(e, n+" -backing-> ")
		}
	}
	return ""
}

// TestStreamToBase streams mid into top (qsd transcript (c)): the job's
// events, top's new backing in the graph and in its header, and the data,
// which top now holds itself.
func TestStreamToBase(t *testing.T) {
	d := start(t)
	mkChain(t, d.Dir)
	addChain(t, d, nil)
	d.ClearHistory()
	d.Cmd("block-stream", map[string]any{"job-id": "s1", "device": "top", "base-node": "base"})
	waitStatus(t, d, "s1", "null")
	wantEvents(t, d, "s1", "created", "running", "waiting", "pending", "BLOCK_JOB_COMPLETED", "concluded", "null")
	c := eventsOf(d.History(), "BLOCK_JOB_COMPLETED", "s1")[0].Data
	if c["len"] != float64(64<<20) || c["offset"] != float64(64<<20) || c["type"] != "stream" || c["speed"] != float64(0) || c["error"] != nil {
		t.Errorf("BLOCK_JOB_COMPLETED %v", c)
	}
	if got := backingOf(d, "top"); got != "base" {
		t.Errorf("top's backing after the stream: %q", got)
	}
	// mid was added by the monitor: it stays, still backed by base.
	if got := backingOf(d, "mid"); got != "base" {
		t.Errorf("mid's backing after the stream: %q", got)
	}
	if full, format := headerBacking(t, d.Path("top.qcow2")); full != d.Path("base.qcow2") || format != "qcow2" {
		t.Errorf("top's header names %q (%s), want base.qcow2", full, format)
	}
	sock := startNBD(d)
	d.Cmd("block-export-add", map[string]any{"type": "nbd", "id": "e0", "node-name": "top"})
	checkChainData(t, nbdURI(sock, "top"))
	d.DelExport("e0")
	d.Quit()
	run(t, "qemu-img", "check", d.Path("top.qcow2"))
	// top.qcow2 alone now holds mid's data and its own.
	topOnly := `json:{"driver":"qcow2","file":{"driver":"file","filename":"` + d.Path("top.qcow2") + `"},"backing":null}`
	run(t, "qemu-io", "-r", "-c", "read -P 0x22 8M 16M", "-c", "read -P 0x33 40M 8M", "-c", "read -P 0 0 8M", topOnly)
	run(t, "qemu-img", "compare", "-f", "qcow2", "-F", "raw", d.Path("top.qcow2"), refImage(t, d))
}

// refImage writes the reference chain's data into a raw image, for
// qemu-img compare.
func refImage(t *testing.T, d *Daemon) string {
	t.Helper()
	img := d.Path("ref.raw")
	mkRaw(t, img, "64M")
	run(t, "qemu-io", "-f", "raw", "-c", "write -P 0x11 0 8M", "-c", "write -P 0x22 8M 16M", "-c", "write -P 0x11 24M 8M",
		"-c", "write -P 0x33 40M 8M", img)
	return img
}

// TestStreamWholeChain streams everything into top: afterwards top has
// no backing, in the graph and in its header.
func TestStreamWholeChain(t *testing.T) {
	d := start(t)
	mkChain(t, d.Dir)
	addChain(t, d, nil)
	d.Cmd("block-stream", map[string]any{"job-id": "s1", "device": "top"})
	waitStatus(t, d, "s1", "null")
	if got := backingOf(d, "top"); got != "" {
		t.Errorf("top still has a backing: %q", got)
	}
	if full, _ := headerBacking(t, d.Path("top.qcow2")); full != "." {
		t.Errorf("top's header still names %q", full)
	}
	d.Quit()
	run(t, "qemu-img", "check", d.Path("top.qcow2"))
	run(t, "qemu-img", "compare", "-f", "qcow2", "-F", "raw", d.Path("top.qcow2"), refImage(t, d))
}

// TestStreamRunning: a throttled stream seen while it runs (qsd
// transcript (c)): query-block-jobs and query-jobs, the implicit
// copy-on-read filter, pause and resume with their events before the
// replies, set-speed.
func TestStreamRunning(t *testing.T) {
	d := start(t)
	mkChain(t, d.Dir)
	addChain(t, d, nil)
	d.ClearHistory()
	mustCall(t, d, "block-stream", map[string]any{"job-id": "s1", "device": "top", "base-node": "base", "speed": 1 << 20})
	if got := jobEvents(d.History(), "s1"); strings.Join(got, ",") != "created,running" {
		t.Errorf("events before the reply: %v", got)
	}
	var bj []map[string]any
	d.CmdInto("query-block-jobs", nil, &bj)
	if len(bj) != 1 || bj[0]["device"] != "s1" || bj[0]["type"] != "stream" || bj[0]["status"] != "running" || bj[0]["speed"] != float64(1<<20) ||
		bj[0]["len"] != float64(64<<20) || bj[0]["io-status"] != "ok" || bj[0]["ready"] != false || bj[0]["paused"] != false {
		t.Errorf("query-block-jobs: %v", bj)
	}
	var cor []string
	for name, n := range namedNodes(d, true) {
		if n.Drv == "copy-on-read" {
			cor = append(cor, name)
		}
	}
	if len(cor) != 1 || !strings.HasPrefix(cor[0], "#block") {
		t.Errorf("copy-on-read filters while streaming: %v", cor)
	}
	// Once the job sleeps for its rate limit, it pauses before the reply.
	// Its sleep may end between the query and the pause on a loaded
	// machine: then it pauses after the reply, and the test tries again.
	for try := 1; ; try++ {
		waitNotBusy(t, d, "s1")
		mustCall(t, d, "block-job-pause", map[string]any{"device": "s1"})
		got := jobEvents(d.History(), "s1")
		if got[len(got)-1] == "paused" {
			break
		}
		if try == 3 {
			t.Fatalf("events at the pause's reply: %v", got)
		}
		t.Logf("the job was busy again at the pause (%v): again", got)
		waitStatus(t, d, "s1", "paused")
		mustCall(t, d, "block-job-resume", map[string]any{"device": "s1"})
	}
	d.CmdInto("query-block-jobs", nil, &bj)
	if bj[0]["status"] != "paused" || bj[0]["paused"] != true || bj[0]["busy"] != false {
		t.Errorf("paused job: %v", bj)
	}
	d.MustFail("block-job-pause", map[string]any{"device": "s1"}, "GenericError", "Job is already paused")
	d.ClearHistory()
	mustCall(t, d, "block-job-resume", map[string]any{"device": "s1"})
	if got := jobEvents(d.History(), "s1"); len(got) == 0 || got[0] != "running" {
		t.Errorf("events at the resume's reply: %v", got)
	}
	d.MustFail("block-job-resume", map[string]any{"device": "s1"}, "GenericError", "Can't resume a job that was not paused")
	d.MustFail("block-job-set-speed", map[string]any{"device": "s1", "speed": -1}, "GenericError", "Parameter 'speed' expects a non-negative value")
	d.Cmd("block-job-set-speed", map[string]any{"device": "s1", "speed": 0})
	waitStatus(t, d, "s1", "null")
	if got := backingOf(d, "top"); got != "base" {
		t.Errorf("top's backing after the stream: %q", got)
	}
	for name, n := range namedNodes(d, true) {
		if n.Drv == "copy-on-read" {
			t.Errorf("copy-on-read filter %s left behind", name)
		}
	}
}

// mustCall runs a command on the raw connection, whose events arrive in
// order with its replies: what a test reads from the history right after
// the reply came before it.
func mustCall(t *testing.T, d *Daemon, name string, args any) json.RawMessage {
	t.Helper()
	r, err := d.Try(name, args)
	if err != nil {
		t.Fatalf("%s %v: %v", name, args, err)
	}
	return r
}

// addFilterChain builds qsd transcript (f)'s chain: top --backing-->
// flt (a filter of the given driver) --file--> mid --backing--> base.
func addFilterChain(t *testing.T, d *Daemon, driver string) {
	t.Helper()
	if driver == "throttle" {
		d.Cmd("object-add", map[string]any{"qom-type": "throttle-group", "id": "tg0", "limits": map[string]any{"bps-total": 100 << 20}})
	}
	d.Cmd("blockdev-add", map[string]any{"driver": "qcow2", "node-name": "base", "file": map[string]any{"driver": "file", "node-name": "base-file", "filename": d.Path("base.qcow2")}})
	d.Cmd("blockdev-add", map[string]any{"driver": "qcow2", "node-name": "mid", "file": map[string]any{"driver": "file", "node-name": "mid-file", "filename": d.Path("mid.qcow2")}, "backing": "base"})
	flt := map[string]any{"driver": driver, "node-name": "flt", "file": "mid"}
	if driver == "throttle" {
		flt["throttle-group"] = "tg0"
	}
	d.Cmd("blockdev-add", flt)
	d.Cmd("blockdev-add", map[string]any{"driver": "qcow2", "node-name": "top", "file": map[string]any{"driver": "file", "node-name": "top-file", "filename": d.Path("top.qcow2")}, "backing": "flt"})
}

// TestStreamFilterInChain: qsd transcript (f) A1-A3 and B. A filter
// between top and mid: streaming to base goes through it and drops it
// with mid; the filter itself as base-node copies nothing and changes
// nothing; mid as base-node copies nothing and drops the filter from the
// chain (top backs onto mid directly). The filter and mid are
// monitor-owned and stay.
func TestStreamFilterInChain(t *testing.T) {
	for _, tc := range []struct {
		name, driver, base string
		len                float64
		backing            string // top's backing afterwards
		header             string // the image top's header names
	}{
		{"throttle, base", "throttle", "base", 64 << 20, "base", "base.qcow2"},
		{"throttle, base-node is the filter", "throttle", "flt", 0, "flt", "mid.qcow2"},
		{"throttle, base-node below the filter", "throttle", "mid", 0, "mid", "mid.qcow2"},
		{"copy-on-read, base", "copy-on-read", "base", 64 << 20, "base", "base.qcow2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := start(t)
			mkChain(t, d.Dir)
			addFilterChain(t, d, tc.driver)
			d.ClearHistory()
			mustCall(t, d, "block-stream", map[string]any{"job-id": "s", "device": "top", "base-node": tc.base})
			if tc.len == 0 {
				// Nothing to copy: the whole life before the reply.
				wantEvents(t, d, "s", "created", "running", "waiting", "pending", "BLOCK_JOB_COMPLETED", "concluded", "null")
			}
			waitStatus(t, d, "s", "null")
			if c := eventsOf(d.History(), "BLOCK_JOB_COMPLETED", "s")[0].Data; c["len"] != tc.len || c["error"] != nil {
				t.Errorf("BLOCK_JOB_COMPLETED %v", c)
			}
			if got := backingOf(d, "top"); got != tc.backing {
				t.Errorf("top's backing: %q, want %q", got, tc.backing)
			}
			e := edges(d)
			if _, ok := e["flt -file-> mid"]; !ok {
				t.Errorf("the filter lost its child: %v", e)
			}
			if got := backingOf(d, "mid"); got != "base" {
				t.Errorf("mid's backing: %q", got)
			}
			sock := startNBD(d)
			d.Cmd("block-export-add", map[string]any{"type": "nbd", "id": "e0", "node-name": "top"})
			checkChainData(t, nbdURI(sock, "top"))
			d.DelExport("e0")
			d.Quit()
			// compat(qsd-7.2): qsd writes mid's json: pseudo-filename into
			// the header when mid was added with explicit options, which
			// no tool can open again; blockd writes mid's file.
			if full, _ := headerBacking(t, d.Path("top.qcow2")); full != d.Path(tc.header) && !(isQSD() && tc.header == "mid.qcow2") {
				t.Errorf("top's header names %q, want %s", full, tc.header)
			}
			run(t, "qemu-img", "check", d.Path("top.qcow2"))
			run(t, "qemu-img", "compare", d.Path("top.qcow2"), refImage(t, d))
		})
	}
}

// TestStreamDeviceIsFilter: qsd transcript (f) C: 'device' is a throttle
// filter above the chain; the stream goes through it into top.
func TestStreamDeviceIsFilter(t *testing.T) {
	d := start(t)
	mkChain(t, d.Dir)
	addChain(t, d, nil)
	d.Cmd("object-add", map[string]any{"qom-type": "throttle-group", "id": "tg0", "limits": map[string]any{"bps-total": 100 << 20}})
	d.Cmd("blockdev-add", map[string]any{"driver": "throttle", "node-name": "thr-top", "throttle-group": "tg0", "file": "top"})
	d.Cmd("block-stream", map[string]any{"job-id": "s6", "device": "thr-top", "base-node": "base"})
	waitStatus(t, d, "s6", "null")
	if got := backingOf(d, "top"); got != "base" {
		t.Errorf("top's backing: %q", got)
	}
	if _, ok := edges(d)["thr-top -file-> top"]; !ok {
		t.Errorf("the throttle filter lost its child")
	}
	d.Quit()
	run(t, "qemu-img", "check", d.Path("top.qcow2"))
	run(t, "qemu-img", "compare", d.Path("top.qcow2"), refImage(t, d))
}

// TestStreamIntermediate: qsd transcript (k) K-2: streaming into mid
// (top's backing) with no base leaves mid without a backing file, top
// still on mid, and the data unchanged through top.
func TestStreamIntermediate(t *testing.T) {
	d := start(t)
	mkChain(t, d.Dir)
	addChain(t, d, nil)
	sock := startNBD(d)
	d.Cmd("block-export-add", map[string]any{"type": "nbd", "id": "exp0", "node-name": "top"})
	d.Cmd("block-stream", map[string]any{"job-id": "s", "device": "mid"})
	waitStatus(t, d, "s", "null")
	if got := backingOf(d, "mid"); got != "" {
		t.Errorf("mid's backing after streaming the whole chain: %q", got)
	}
	if got := backingOf(d, "top"); got != "mid" {
		t.Errorf("top's backing: %q", got)
	}
	checkChainData(t, nbdURI(sock, "top"))
	d.DelExport("exp0")
	d.Quit()
	if full, _ := headerBacking(t, d.Path("mid.qcow2")); full != "." {
		t.Errorf("mid's header still names %q", full)
	}
	run(t, "qemu-img", "check", d.Path("mid.qcow2"))
	run(t, "qemu-io", "-r", "-c", "read -P 0x11 0 8M", "-c", "read -P 0x22 8M 16M", "-c", "read -P 0x11 24M 8M", d.Path("mid.qcow2"))
}

// TestStreamErrors: qsd transcript (g) G1, G2 and K-2: every argument
// error, with qsd's message, and the graph unchanged.
func TestStreamErrors(t *testing.T) {
	d := start(t)
	mkChain(t, d.Dir)
	addChain(t, d, nil)
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", d.Path("other.qcow2"), "64M")
	d.Cmd("blockdev-add", map[string]any{"driver": "qcow2", "node-name": "other", "file": map[string]any{"driver": "file", "filename": d.Path("other.qcow2")}})
	before := edges(d)
	for _, tc := range []struct {
		args map[string]any
		desc string
	}{
		{map[string]any{"job-id": "s", "device": "top", "base-node": "other"}, "Node 'other' is not a backing image of 'top'"},
		{map[string]any{"job-id": "s", "device": "top", "base-node": "nosuch"}, "Cannot find device='' nor node-name='nosuch'"},
		{map[string]any{"job-id": "s", "device": "top", "base-node": "base", "base": d.Path("base.qcow2")}, "'base' and 'base-node' cannot be specified at the same time"},
		{map[string]any{"job-id": "s", "device": "nosuch"}, "Cannot find device='nosuch' nor node-name='nosuch'"},
		{map[string]any{"job-id": "s", "device": "top", "base-node": "top"}, "Node 'top' is not a backing image of 'top'"},
		{map[string]any{"job-id": "s", "device": "top", "bottom": "mid", "base-node": "base"}, "'bottom' and 'base-node' cannot be specified at the same time"},
		{map[string]any{"job-id": "s", "device": "top", "bottom": "mid", "base": "base.qcow2"}, "'base' and 'bottom' cannot be specified at the same time"},
		{map[string]any{"job-id": "s", "device": "top", "base": "nosuch.qcow2"}, "Can't find 'nosuch.qcow2' in the backing chain"},
		{map[string]any{"job-id": "s", "device": "top", "bottom": "other"}, "Node 'other' is not in a chain starting from 'top'"},
		{map[string]any{"job-id": "s", "device": "top", "backing-file": "x.qcow2"}, "backing file specified, but streaming the entire chain"},
		{map[string]any{"device": "top"}, "Invalid job ID ''"},
		{map[string]any{"job-id": "#x", "device": "top"}, "Invalid job ID '#x'"},
		{map[string]any{"job-id": "1x", "device": "top"}, "Invalid job ID '1x'"},
		{map[string]any{"job-id": "", "device": "top"}, "Invalid job ID ''"},
		{map[string]any{"job-id": "s", "device": "top", "on-error": "bogus"}, "Parameter 'on-error' does not accept value 'bogus'"},
		{map[string]any{"job-id": "s", "device": "top", "bogus": 1}, "Parameter 'bogus' is unexpected"},
		{map[string]any{"job-id": "s"}, "Parameter 'device' is missing"},
	} {
		d.MustFail("block-stream", tc.args, "GenericError", tc.desc)
	}
	// A negative speed is refused after the job was created (qsd K-2).
	d.ClearHistory()
	d.MustFail("block-stream", map[string]any{"job-id": "s2", "device": "top", "speed": -1}, "GenericError", "Parameter 'speed' expects a non-negative value")
	wantEvents(t, d, "s2", "created", "null")
	if after := edges(d); len(after) != len(before) {
		t.Errorf("graph changed by failed commands:\n%v\n%v", before, after)
	}
	for name, n := range namedNodes(d, true) {
		if n.Drv == "copy-on-read" {
			t.Errorf("filter %s left behind", name)
		}
	}
	if jobs := queryJobs(d); len(jobs) != 0 {
		t.Errorf("jobs left: %v", jobs)
	}
}

// TestStreamFrozenChain: qsd transcript (g) G5: while a throttled stream
// runs, its chain is frozen and its nodes blocked; a reopen that would
// change a frozen link is refused after the drain paused and resumed the
// job; verbs in the wrong state are refused; a cancel ends the job before
// its reply.
func TestStreamFrozenChain(t *testing.T) {
	d := start(t)
	mkChain(t, d.Dir)
	addChain(t, d, nil)
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", d.Path("other.qcow2"), "64M")
	d.Cmd("blockdev-add", map[string]any{"driver": "qcow2", "node-name": "other", "file": map[string]any{"driver": "file", "filename": d.Path("other.qcow2")}})
	d.Cmd("block-stream", map[string]any{"job-id": "s1", "device": "top", "base-node": "base", "speed": 65536})
	waitNotBusy(t, d, "s1")
	d.MustFail("block-stream", map[string]any{"job-id": "s1", "device": "other"}, "GenericError", "Job ID 's1' already in use")
	d.MustFail("block-stream", map[string]any{"job-id": "s2", "device": "mid"}, "GenericError", "Node 'mid' is busy: block device is in use by block job: stream")
	d.MustFail("blockdev-del", map[string]any{"node-name": "mid"}, "GenericError", "Node 'mid' is busy: block device is in use by block job: stream")
	d.MustFail("blockdev-del", map[string]any{"node-name": "top"}, "GenericError", "Node 'top' is busy: block device is in use by block job: stream")
	d.ClearHistory()
	d.MustFail("blockdev-reopen", map[string]any{"options": []any{map[string]any{"driver": "qcow2", "node-name": "top", "file": "top-file", "backing": nil}}},
		"GenericError", "Cannot change frozen 'backing' link from 'top' to 'mid'")
	wantEvents(t, d, "s1", "paused", "running")
	d.MustFail("block-job-finalize", map[string]any{"id": "s1"}, "GenericError", "Job 's1' in state 'running' cannot accept command verb 'finalize'")
	d.MustFail("block-job-dismiss", map[string]any{"id": "s1"}, "GenericError", "Job 's1' in state 'running' cannot accept command verb 'dismiss'")
	d.MustFail("block-job-complete", map[string]any{"device": "s1"}, "GenericError", "Job 's1' in state 'running' cannot accept command verb 'complete'")
	d.ClearHistory()
	mustCall(t, d, "block-job-cancel", map[string]any{"device": "s1"})
	wantEvents(t, d, "s1", "aborting", "BLOCK_JOB_CANCELLED", "concluded", "null")
	c := eventsOf(d.History(), "BLOCK_JOB_CANCELLED", "s1")[0].Data
	if c["len"] != float64(64<<20) || c["speed"] != float64(65536) || c["offset"].(float64) >= 64<<20 {
		t.Errorf("BLOCK_JOB_CANCELLED %v", c)
	}
	// Nothing changed: top still backs onto mid, no filter left, and the
	// chain is no longer frozen.
	if got := backingOf(d, "top"); got != "mid" {
		t.Errorf("top's backing after the cancel: %q", got)
	}
	d.Cmd("blockdev-reopen", map[string]any{"options": []any{map[string]any{"driver": "qcow2", "node-name": "top", "file": "top-file", "backing": "mid"}}})
	d.Cmd("blockdev-del", map[string]any{"node-name": "top"})
	d.Quit()
	run(t, "qemu-img", "check", d.Path("top.qcow2"))
}

// TestStreamManualFinalize: qsd transcript (g) G7: with auto-finalize and
// auto-dismiss off, the job waits in pending (BLOCK_JOB_PENDING) and
// changes the chain only on job-finalize; it stays listed, concluded,
// until job-dismiss.
func TestStreamManualFinalize(t *testing.T) {
	d := start(t)
	mkChain(t, d.Dir)
	addChain(t, d, nil)
	d.ClearHistory()
	d.Cmd("block-stream", map[string]any{"job-id": "s3", "device": "top", "base-node": "base", "auto-finalize": false, "auto-dismiss": false})
	d.WaitHistory(func(ev []Event) bool { return len(eventsOf(ev, "BLOCK_JOB_PENDING", "s3")) > 0 }, 30*time.Second)
	wantEvents(t, d, "s3", "created", "running", "waiting", "pending", "BLOCK_JOB_PENDING")
	var bj []map[string]any
	d.CmdInto("query-block-jobs", nil, &bj)
	if len(bj) != 1 || bj[0]["status"] != "pending" || bj[0]["auto-finalize"] != false || bj[0]["auto-dismiss"] != false || bj[0]["offset"] != float64(64<<20) {
		t.Errorf("query-block-jobs: %v", bj)
	}
	if got := backingOf(d, "top"); got != "mid" {
		t.Errorf("top's backing before finalize: %q", got)
	}
	d.MustFail("job-dismiss", map[string]any{"id": "s3"}, "GenericError", "Job 's3' in state 'pending' cannot accept command verb 'dismiss'")
	d.ClearHistory()
	mustCall(t, d, "job-finalize", map[string]any{"id": "s3"})
	wantEvents(t, d, "s3", "BLOCK_JOB_COMPLETED", "concluded")
	if got := backingOf(d, "top"); got != "base" {
		t.Errorf("top's backing after finalize: %q", got)
	}
	if j := queryJobs(d)["s3"]; j.Status != "concluded" || j.CurrentProgress != 64<<20 || j.Error != "" {
		t.Errorf("query-jobs: %+v", j)
	}
	d.MustFail("block-job-pause", map[string]any{"device": "s3"}, "GenericError", "Job 's3' in state 'concluded' cannot accept command verb 'pause'")
	d.MustFail("job-cancel", map[string]any{"id": "s3"}, "GenericError", "Job 's3' in state 'concluded' cannot accept command verb 'cancel'")
	d.ClearHistory()
	mustCall(t, d, "job-dismiss", map[string]any{"id": "s3"})
	wantEvents(t, d, "s3", "null")
	d.MustFail("job-dismiss", map[string]any{"id": "s3"}, "GenericError", "Job not found")
}

// TestStreamCancelKeepsJob: qsd transcript (g) G8: a stream with nothing
// to copy ends before its reply; cancelling a running one with
// auto-dismiss off leaves a concluded job whose error is "Operation
// canceled".
func TestStreamCancelKeepsJob(t *testing.T) {
	d := start(t)
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", d.Path("tgt.qcow2"), "64M")
	d.Cmd("blockdev-add", map[string]any{"driver": "qcow2", "node-name": "tgt", "file": map[string]any{"driver": "file", "filename": d.Path("tgt.qcow2")}})
	d.ClearHistory()
	mustCall(t, d, "block-stream", map[string]any{"job-id": "s4", "device": "tgt", "speed": 1, "auto-dismiss": false})
	wantEvents(t, d, "s4", "created", "running", "waiting", "pending", "BLOCK_JOB_COMPLETED", "concluded")
	c := eventsOf(d.History(), "BLOCK_JOB_COMPLETED", "s4")[0].Data
	if c["len"] != float64(0) || c["speed"] != float64(1) {
		t.Errorf("BLOCK_JOB_COMPLETED %v", c)
	}
	d.Cmd("job-dismiss", map[string]any{"id": "s4"})

	mkChain(t, d.Dir)
	d.Cmd("blockdev-add", map[string]any{"driver": "qcow2", "node-name": "a1", "file": map[string]any{"driver": "file", "filename": d.Path("top.qcow2")}})
	mustCall(t, d, "block-stream", map[string]any{"job-id": "s5", "device": "a1", "speed": 65536, "auto-dismiss": false})
	waitNotBusy(t, d, "s5")
	d.ClearHistory()
	mustCall(t, d, "block-job-cancel", map[string]any{"device": "s5"})
	wantEvents(t, d, "s5", "aborting", "BLOCK_JOB_CANCELLED", "concluded")
	j := queryJobs(d)["s5"]
	if j.Status != "concluded" || j.Error != "Operation canceled" || j.TotalProgress != 64<<20 {
		t.Errorf("query-jobs after a cancel: %+v", j)
	}
	d.Cmd("job-dismiss", map[string]any{"id": "s5"})
	d.Quit()
	run(t, "qemu-img", "check", d.Path("top.qcow2"))
}

// blkdebugChain builds qsd transcript (h)'s chain: mid's file is a
// blkdebug node that fails reads of host sector 1024 (inside mid's data)
// with EIO, once or always.
func blkdebugChain(t *testing.T, d *Daemon, once bool) {
	t.Helper()
	d.Cmd("blockdev-add", map[string]any{"driver": "qcow2", "node-name": "base", "file": map[string]any{"driver": "file", "filename": d.Path("base.qcow2")}})
	d.Cmd("blockdev-add", map[string]any{"driver": "qcow2", "node-name": "mid", "backing": "base", "file": map[string]any{"driver": "blkdebug", "node-name": "dbg",
		"image":        map[string]any{"driver": "file", "filename": d.Path("mid.qcow2")},
		"inject-error": []any{map[string]any{"event": "read_aio", "errno": 5, "sector": 1024, "once": once}}}})
	d.Cmd("blockdev-add", map[string]any{"driver": "qcow2", "node-name": "top", "file": map[string]any{"driver": "file", "filename": d.Path("top.qcow2")}, "backing": "mid"})
}

func delChain(d *Daemon) {
	for _, n := range []string{"top", "mid", "base"} {
		d.Cmd("blockdev-del", map[string]any{"node-name": n})
	}
}

// TestStreamOnError: qsd transcript (h). A read error under mid, with
// each on-error policy: stop (BLOCK_JOB_ERROR, paused, io-status failed;
// resume retries), report (the job ends with the error), ignore (it goes
// to the end and still reports the error), stop with a permanent error
// (resume fails again; block-job-cancel needs force, job-cancel does
// not).
func TestStreamOnError(t *testing.T) {
	d := start(t)
	mkChain(t, d.Dir)

	t.Run("stop, once", func(t *testing.T) {
		blkdebugChain(t, d, true)
		d.ClearHistory()
		d.Cmd("block-stream", map[string]any{"job-id": "s1", "device": "top", "base-node": "base", "on-error": "stop"})
		waitStatus(t, d, "s1", "paused")
		if e := eventsOf(d.History(), "BLOCK_JOB_ERROR", "s1"); len(e) != 1 || e[0].Data["operation"] != "read" || e[0].Data["action"] != "stop" {
			t.Errorf("BLOCK_JOB_ERROR %v", e)
		}
		var bj []map[string]any
		d.CmdInto("query-block-jobs", nil, &bj)
		if bj[0]["io-status"] != "failed" || bj[0]["paused"] != true || bj[0]["status"] != "paused" {
			t.Errorf("query-block-jobs: %v", bj)
		}
		d.Cmd("block-job-resume", map[string]any{"device": "s1"})
		waitStatus(t, d, "s1", "null")
		if c := eventsOf(d.History(), "BLOCK_JOB_COMPLETED", "s1")[0].Data; c["error"] != nil || c["offset"] != float64(64<<20) {
			t.Errorf("BLOCK_JOB_COMPLETED %v", c)
		}
		if got := backingOf(d, "top"); got != "base" {
			t.Errorf("top's backing: %q", got)
		}
		delChain(d)
	})
	mkChain(t, d.Dir) // fresh images: the stream changed top

	t.Run("report", func(t *testing.T) {
		blkdebugChain(t, d, false)
		d.ClearHistory()
		d.Cmd("block-stream", map[string]any{"job-id": "s2", "device": "top", "base-node": "base", "auto-dismiss": false})
		waitStatus(t, d, "s2", "concluded")
		wantEvents(t, d, "s2", "created", "running", "BLOCK_JOB_ERROR", "aborting", "BLOCK_JOB_COMPLETED", "concluded")
		if c := eventsOf(d.History(), "BLOCK_JOB_COMPLETED", "s2")[0].Data; c["error"] != "Input/output error" {
			t.Errorf("BLOCK_JOB_COMPLETED %v", c)
		}
		if e := eventsOf(d.History(), "BLOCK_JOB_ERROR", "s2")[0].Data; e["action"] != "report" {
			t.Errorf("BLOCK_JOB_ERROR %v", e)
		}
		var bj []map[string]any
		d.CmdInto("query-block-jobs", nil, &bj)
		if bj[0]["error"] != "Input/output error" || bj[0]["io-status"] != "ok" {
			t.Errorf("query-block-jobs: %v", bj)
		}
		if j := queryJobs(d)["s2"]; j.Error != "Input/output error" {
			t.Errorf("query-jobs: %+v", j)
		}
		d.Cmd("job-dismiss", map[string]any{"id": "s2"})
		if got := backingOf(d, "top"); got != "mid" {
			t.Errorf("top's backing after a failed stream: %q", got)
		}
		delChain(d)
	})

	t.Run("ignore", func(t *testing.T) {
		blkdebugChain(t, d, false)
		d.ClearHistory()
		d.Cmd("block-stream", map[string]any{"job-id": "s3", "device": "top", "base-node": "base", "on-error": "ignore"})
		waitStatus(t, d, "s3", "null")
		c := eventsOf(d.History(), "BLOCK_JOB_COMPLETED", "s3")[0].Data
		if c["error"] != "Input/output error" || c["offset"] != c["len"] {
			t.Errorf("BLOCK_JOB_COMPLETED %v", c)
		}
		if e := eventsOf(d.History(), "BLOCK_JOB_ERROR", "s3"); len(e) == 0 || e[0].Data["action"] != "ignore" {
			t.Errorf("BLOCK_JOB_ERROR %v", e)
		}
		if got := backingOf(d, "top"); got != "mid" {
			t.Errorf("top's backing after an ignored error: %q", got)
		}
		delChain(d)
	})

	for _, force := range []bool{false, true} {
		t.Run("stop, permanent, force "+map[bool]string{false: "no", true: "yes"}[force], func(t *testing.T) {
			blkdebugChain(t, d, false)
			d.ClearHistory()
			d.Cmd("block-stream", map[string]any{"job-id": "s4", "device": "top", "base-node": "base", "on-error": "stop"})
			waitStatus(t, d, "s4", "paused")
			d.Cmd("block-job-resume", map[string]any{"device": "s4"})
			if !d.WaitHistory(func(ev []Event) bool { return len(eventsOf(ev, "BLOCK_JOB_ERROR", "s4")) == 2 }, 10*time.Second) {
				t.Fatalf("no second BLOCK_JOB_ERROR: %v", jobEvents(d.History(), "s4"))
			}
			waitStatus(t, d, "s4", "paused")
			if !force {
				d.MustFail("block-job-cancel", map[string]any{"device": "s4"}, "GenericError", "The block job for device 's4' is currently paused")
			}
			d.ClearHistory()
			if force {
				mustCall(t, d, "block-job-cancel", map[string]any{"device": "s4", "force": true})
			} else {
				mustCall(t, d, "job-cancel", map[string]any{"id": "s4"})
			}
			wantEvents(t, d, "s4", "running", "aborting", "BLOCK_JOB_CANCELLED", "concluded", "null")
			delChain(d)
		})
	}
	d.Quit()
	run(t, "qemu-img", "check", d.Path("top.qcow2"))
}

// TestStreamOptions: backing-file overrides the name written into top's
// header; filter-node-name names the filter, which then shows; bottom
// streams down to a node and keeps what is below it.
func TestStreamOptions(t *testing.T) {
	d := start(t)
	mkChain(t, d.Dir)
	addChain(t, d, nil)
	d.Cmd("block-stream", map[string]any{"job-id": "s", "device": "top", "base-node": "base", "backing-file": "base.qcow2",
		"filter-node-name": "stream-filter", "speed": 1 << 20})
	if n, ok := namedNodes(d, true)["stream-filter"]; !ok || n.Drv != "copy-on-read" {
		t.Errorf("named filter while streaming: %+v", n)
	}
	d.Cmd("block-job-set-speed", map[string]any{"device": "s", "speed": 0})
	waitStatus(t, d, "s", "null")
	if _, ok := namedNodes(d, true)["stream-filter"]; ok {
		t.Errorf("named filter left behind")
	}
	d.Cmd("blockdev-del", map[string]any{"node-name": "top"})
	var info struct {
		Backing string `json:"backing-filename"`
	}
	json.Unmarshal([]byte(run(t, "qemu-img", "info", "--output=json", d.Path("top.qcow2"))), &info)
	if info.Backing != "base.qcow2" {
		t.Errorf("header names %q, want the backing-file argument", info.Backing)
	}
	// bottom=mid: mid's data is copied, base stays below.
	d.Cmd("blockdev-del", map[string]any{"node-name": "mid"})
	d.Cmd("blockdev-del", map[string]any{"node-name": "base"})
	mkChain(t, d.Dir)
	addChain(t, d, nil)
	d.ClearHistory()
	d.Cmd("block-stream", map[string]any{"job-id": "s", "device": "top", "bottom": "mid"})
	waitStatus(t, d, "s", "null")
	if got := backingOf(d, "top"); got != "base" {
		t.Errorf("top's backing after bottom=mid: %q", got)
	}
	d.Quit()
	run(t, "qemu-img", "compare", d.Path("top.qcow2"), refImage(t, d))
}

// TestStreamReadOnlyDevice: a read-only device is reopened read-write for
// the stream and read-only again afterwards.
func TestStreamReadOnlyDevice(t *testing.T) {
	d := start(t)
	mkChain(t, d.Dir)
	addChain(t, d, map[string]map[string]any{"top": {"read-only": true}})
	d.Cmd("block-stream", map[string]any{"job-id": "s", "device": "top", "base-node": "base"})
	waitStatus(t, d, "s", "null")
	if n := namedNodes(d, true)["top"]; !n.RO {
		t.Errorf("top is read-write after the stream")
	}
	if got := backingOf(d, "top"); got != "base" {
		t.Errorf("top's backing: %q", got)
	}
	d.Quit()
	run(t, "qemu-img", "check", d.Path("top.qcow2"))
	run(t, "qemu-img", "compare", d.Path("top.qcow2"), refImage(t, d))
}

// waitNotBusy polls query-block-jobs until job id is not busy: a verb
// then reaches it at its pause point (qsd and blockd both act on it
// before the reply), rather than in the middle of a request (after it).
// The job sends no event when it goes to sleep, so this polls.
func waitNotBusy(t *testing.T, d *Daemon, id string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		var bj []map[string]any
		d.CmdInto("query-block-jobs", nil, &bj)
		for _, j := range bj {
			if j["device"] == id && j["busy"] == false {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("job %s stays busy: %v", id, bj)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestStreamKill9 kills the daemon with SIGKILL at several points of a
// stream: while it copies, and around its end (the graph change and the
// header rewrite). Afterwards top.qcow2 passes qemu-img check (leaked
// clusters allowed) and the chain its header names reads exactly the
// original data: the header never names base before top holds mid's data.
func TestStreamKill9(t *testing.T) {
	for _, at := range []int64{4 << 20, 16 << 20, 30 << 20, -1} {
		t.Run(fmt.Sprintf("at %d", at), func(t *testing.T) {
			if at < 0 || at >= 24<<20 {
				// Measured: qsd 7.2 rewrites the header to name base while
				// top's new L2 entries are still only in its cache, so a
				// kill right after the copy loses mid's data.
				skipOnQSD(t, "a kill -9 after the copy loses data (the header is rewritten before the L2 tables are written)")
			}
			d := start(t)
			mkChain(t, d.Dir)
			addChain(t, d, nil)
			d.Cmd("block-stream", map[string]any{"job-id": "s", "device": "top", "base-node": "base", "speed": 32 << 20})
			if at < 0 {
				// Right after the end: the header was rewritten last.
				waitStatus(t, d, "s", "null")
			} else {
				waitProgress(t, d, "s", at)
			}
			d.cmd.Process.Signal(syscall.SIGKILL)
			<-d.done
			out, err := runErr("qemu-img", "check", d.Path("top.qcow2"))
			if ex, ok := err.(*exec.ExitError); err != nil && !(ok && ex.ExitCode() == 3) {
				t.Fatalf("qemu-img check after kill -9: %v\n%s", err, out)
			}
			run(t, "qemu-img", "compare", d.Path("top.qcow2"), refImage(t, d))
		})
	}
}

// waitProgress polls query-jobs until job id got at least n bytes far
// (or ended): progress sends no event.
func waitProgress(t *testing.T, d *Daemon, id string, n int64) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		j, ok := queryJobs(d)[id]
		if !ok || j.CurrentProgress >= n {
			return
		}
		time.Sleep(2 * time.Millisecond)
	}
	t.Fatalf("job %s made no progress to %d", id, n)
}

// TestStreamQuit: quit and SIGTERM while a stream runs cancel it (its
// events come before quit's reply) and leave the images consistent and
// their data unchanged.
func TestStreamQuit(t *testing.T) {
	for _, how := range []string{"quit", "SIGTERM"} {
		t.Run(how, func(t *testing.T) {
			d := start(t)
			mkChain(t, d.Dir)
			addChain(t, d, nil)
			d.Cmd("block-stream", map[string]any{"job-id": "s", "device": "top", "base-node": "base", "speed": 4 << 20})
			waitProgress(t, d, "s", 9<<20)
			d.ClearHistory()
			if how == "quit" {
				d.Quit()
				// Both daemons drain every node first: the job pauses.
				wantEvents(t, d, "s", "paused", "running", "aborting", "BLOCK_JOB_CANCELLED", "concluded", "null")
			} else {
				d.cmd.Process.Signal(syscall.SIGTERM)
				select {
				case err := <-d.done:
					if err != nil {
						t.Errorf("exit after SIGTERM: %v", err)
					}
				case <-time.After(30 * time.Second):
					t.Fatal("no exit after SIGTERM")
				}
			}
			run(t, "qemu-img", "check", d.Path("top.qcow2"))
			run(t, "qemu-img", "compare", d.Path("top.qcow2"), refImage(t, d))
			if full, _ := headerBacking(t, d.Path("top.qcow2")); full != d.Path("mid.qcow2") {
				t.Errorf("a cancelled stream changed top's header: %q", full)
			}
		})
	}
}

// TestStreamWithWriter: a client writes through an export of top while a
// stream copies mid's data up (its writes reach the copy-on-read filter,
// which serialises them with the copies); afterwards top holds the
// client's data where it wrote and the chain's elsewhere.
func TestStreamWithWriter(t *testing.T) {
	d := start(t)
	mkChain(t, d.Dir)
	addChain(t, d, nil)
	sock := startNBD(d)
	d.Cmd("block-export-add", map[string]any{"type": "nbd", "id": "e0", "node-name": "top", "writable": true})
	uri := nbdURI(sock, "top")
	d.Cmd("block-stream", map[string]any{"job-id": "s", "device": "top", "base-node": "base", "speed": 8 << 20})
	// Writes inside mid's data (some before the copy reaches them, some
	// after), in base's, and in a hole, each 192 KiB and unaligned.
	writes := []struct{ off, pat string }{{"8200k", "0x41"}, {"23000k", "0x42"}, {"1000k", "0x43"}, {"33000k", "0x44"}, {"12345k", "0x45"}}
	for _, w := range writes {
		run(t, "qemu-io", "-f", "raw", "-c", "write -P "+w.pat+" "+w.off+" 192k", uri)
	}
	d.Cmd("block-job-set-speed", map[string]any{"device": "s", "speed": 0})
	waitStatus(t, d, "s", "null")
	d.DelExport("e0")
	d.Quit()
	ref := refImage(t, d)
	for _, w := range writes {
		run(t, "qemu-io", "-f", "raw", "-c", "write -P "+w.pat+" "+w.off+" 192k", ref)
	}
	run(t, "qemu-img", "check", d.Path("top.qcow2"))
	run(t, "qemu-img", "compare", d.Path("top.qcow2"), ref)
}
