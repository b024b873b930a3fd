package iotests

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/blockd/blockd/internal/cookbook"
)

// The cookbook (docs/cookbook.md) is rendered from these flows, and this
// test runs each of them, so the document shows only what works.
const cookbookDir = "testdata/cookbook"

var updateGraphs = flag.Bool("update", false, "rewrite the cookbook's graph files (testdata/cookbook/*.dot) from what blockctl graph prints")

// cookbookKnownBugs are checks (a $ line or a graph, keyed by the flow's
// name and the line as written) that blockd fails and qsd passes: on
// blockd such a step is a skipped subtest naming the bug, and the flow
// goes on. Only checks may be here: skipping a command would break the
// steps after it.
var cookbookKnownBugs = map[string]string{
	"04-stream: $ qemu-img info -U top.qcow2 | grep -q '^backing file: .*/base.qcow2$'":   "block-stream without backing-file writes the backing file name of the old header (base.qcow2) into top, qsd the base node's filename (the absolute path it was opened with)",
	"06-mirror-copy: = graph ready The mirror, READY: its filter is under the export":     "during blockdev-mirror blockd's x-debug-query-block-graph reports the job's hold on the target as a second block-job node of the same name with a 'target' edge (perm write, shared write-unchanged); qsd has an anonymous BlockBackend with a 'root' edge there and the job's 'target' edge takes no permission",
	"05-commit: = graph active-ready The active commit, READY: its filter sits above top": "during an active commit blockd's x-debug-query-block-graph has no job BlockBackend on the base (qsd: an anonymous backend, root edge perm write) and no job -> top 'source' edge; blockd puts perm write on the job's 'target' edge instead",
}

// TestCookbook runs every flow twice on fresh daemons: the QMP track
// sends each -> line as written and matches each reply and event to the
// <- patterns; the blockctl track runs the % lines. Both run the $ lines
// (preparing images, checking them with qemu-img).
func TestCookbook(t *testing.T) {
	flows, err := cookbook.Load(cookbookDir)
	if err != nil {
		t.Fatal(err)
	}
	bin := buildBlockctl(t)
	for _, f := range flows {
		t.Run(f.Name+"/qmp", func(t *testing.T) { runFlow(t, f, bin, false) })
		t.Run(f.Name+"/blockctl", func(t *testing.T) { runFlow(t, f, bin, true) })
	}
}

// flowRun is one track of a flow on its daemon.
type flowRun struct {
	t      *testing.T
	f      *cookbook.Flow
	d      *Daemon
	ctl    blockctl
	cursor int // events before this index of the history are matched
	last   string
}

func runFlow(t *testing.T, f *cookbook.Flow, bin string, blockctlTrack bool) {
	d, ctl := startForBlockctl(t, bin)
	t.Cleanup(func() { stopPidfiles(d.Dir) })
	r := &flowRun{t: t, f: f, d: d, ctl: ctl}
	for _, l := range f.Lines {
		if l.Kind == cookbook.Prose || blockctlTrack != (l.Kind == cookbook.Blockctl) && l.Kind != cookbook.Shell {
			continue // not this track's
		}
		if reason, ok := cookbookKnownBugs[f.Name+": "+l.Raw()]; ok && !isQSD() {
			t.Run(fmt.Sprintf("line %d", l.Num), func(t *testing.T) {
				t.Skipf("%s: blockd differs from qsd: %s", l.Where(f), reason)
			})
			continue
		}
		switch l.Kind {
		case cookbook.Shell, cookbook.Blockctl:
			r.shell(l)
		case cookbook.Send:
			r.send(l)
		case cookbook.Expect:
			r.expect(l)
		case cookbook.Graph:
			r.graph(l)
		}
	}
}

// stopPidfiles stops what a flow started in the background and left
// running (a flow that failed before it stopped its qemu-nbd): every
// process named by a *.pid file in dir whose command line names dir (a
// pid file left by a process that ended may name someone else by now).
func stopPidfiles(dir string) {
	files, _ := filepath.Glob(filepath.Join(dir, "*.pid"))
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil || pid <= 1 {
			continue
		}
		if cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); err == nil && bytes.Contains(cmdline, []byte(dir)) {
			_ = syscall.Kill(pid, syscall.SIGTERM)
		}
	}
}

// expand puts the image directory in for $DIR.
func (r *flowRun) expand(s string) string {
	return strings.ReplaceAll(s, "$DIR", r.d.Dir)
}

// shell runs a $ or % line with sh in the image directory, blockctl on
// the PATH and its socket in BLOCKCTL_SOCKET.
func (r *flowRun) shell(l cookbook.Line) {
	r.t.Helper()
	cmd := exec.Command("sh", "-c", l.Text)
	cmd.Dir = r.d.Dir
	cmd.Env = append(os.Environ(), "DIR="+r.d.Dir, "BLOCKCTL_SOCKET="+r.ctl.sock,
		"PATH="+filepath.Dir(r.ctl.bin)+string(os.PathListSeparator)+os.Getenv("PATH"))
	if out, err := cmd.CombinedOutput(); err != nil {
		r.t.Fatalf("%s: %s: %v\n%s", l.Where(r.f), l.Text, err, out)
	}
}

// send writes a -> line to the daemon as it is and keeps the reply for
// the <- line that follows.
func (r *flowRun) send(l cookbook.Line) {
	r.t.Helper()
	if r.last != "" {
		r.t.Fatalf("%s: the reply to the command before has no <- line", l.Where(r.f))
	}
	raw := r.d.raw
	if _, err := raw.c.Write([]byte(r.expand(l.Text) + "\n")); err != nil {
		r.t.Fatalf("%s: %v", l.Where(r.f), err)
	}
	select {
	case line, ok := <-raw.replies:
		if !ok {
			r.t.Fatalf("%s: the daemon closed the connection", l.Where(r.f))
		}
		r.last = string(line)
	case <-time.After(60 * time.Second):
		r.t.Fatalf("%s: no reply", l.Where(r.f))
	}
}

// expect matches a <- line: a reply to the last command, or the next
// event of the history (at or after the cursor) that matches. Events
// the flow does not show are passed over; the ones it shows must come
// in its order.
func (r *flowRun) expect(l cookbook.Line) {
	r.t.Helper()
	pattern := []byte(r.expand(l.Text))
	var probe struct {
		Event string `json:"event"`
	}
	if err := json.Unmarshal(pattern, &probe); err != nil {
		r.t.Fatalf("%s: not JSON: %v", l.Where(r.f), err)
	}
	if probe.Event == "" {
		if r.last == "" {
			r.t.Fatalf("%s: a reply pattern without a command before it", l.Where(r.f))
		}
		if err := cookbook.MatchJSON(pattern, []byte(r.last)); err != nil {
			r.t.Fatalf("%s: %v\ngot:  %s\nwant: %s", l.Where(r.f), err, r.last, pattern)
		}
		r.last = ""
		return
	}
	var lastErr error
	found := r.d.WaitHistory(func(h []Event) bool {
		for i := r.cursor; i < len(h); i++ {
			got, _ := json.Marshal(map[string]any{"event": h[i].Event, "data": h[i].Data})
			if h[i].Data == nil {
				got, _ = json.Marshal(map[string]any{"event": h[i].Event})
			}
			if lastErr = cookbook.MatchJSON(pattern, got); lastErr == nil {
				r.cursor = i + 1
				return true
			}
		}
		return false
	}, 60*time.Second)
	if !found {
		var seen []string
		for _, e := range r.d.History()[r.cursor:] {
			b, _ := json.Marshal(map[string]any{"event": e.Event, "data": e.Data})
			seen = append(seen, string(b))
		}
		r.t.Fatalf("%s: no event %s after the ones matched so far; came:\n%s", l.Where(r.f), pattern, strings.Join(seen, "\n"))
	}
}

// graph compares what blockctl graph prints now with the flow's graph
// file (or writes the file with -update).
func (r *flowRun) graph(l cookbook.Line) {
	r.t.Helper()
	got := r.ctl.ok("graph")
	path := filepath.Join(cookbookDir, r.f.GraphFile(l.GraphName()))
	if *updateGraphs {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			r.t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		r.t.Fatalf("%s: %v (run this test with -update to write it)", l.Where(r.f), err)
	}
	if !bytes.Equal(want, []byte(got)) {
		r.t.Fatalf("%s: blockctl graph differs from %s:\n%s", l.Where(r.f), path, lineDiff(string(want), got))
	}
}

// lineDiff lists the lines only one of a and b has.
func lineDiff(a, b string) string {
	in := func(s string) map[string]bool {
		m := map[string]bool{}
		for _, l := range strings.Split(s, "\n") {
			m[l] = true
		}
		return m
	}
	ina, inb := in(a), in(b)
	var out []string
	for _, l := range strings.Split(a, "\n") {
		if !inb[l] {
			out = append(out, "- "+l)
		}
	}
	for _, l := range strings.Split(b, "\n") {
		if !ina[l] {
			out = append(out, "+ "+l)
		}
	}
	return strings.Join(out, "\n")
}
