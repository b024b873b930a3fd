package iotests

import (
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
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
	// The job sleeps for its rate limit: it pauses before the reply.
	mustCall(t, d, "block-job-pause", map[string]any{"device": "s1"})
	if got := jobEvents(d.History(), "s1"); got[len(got)-1] != "paused" {
		t.Errorf("events at the pause's reply: %v", got)
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
