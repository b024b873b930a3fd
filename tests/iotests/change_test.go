package iotests

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"
)

// quorumEdges lists the edges from parent as "name=child", sorted.
func quorumEdges(d *Daemon, parent string) string {
	var out []string
	for e := range edges(d) {
		if p, rest, ok := strings.Cut(e, " -"); ok && p == parent {
			name, child, _ := strings.Cut(rest, "-> ")
			out = append(out, name+"="+child)
		}
	}
	slices.Sort(out)
	return strings.Join(out, " ")
}

// addFiles makes raw images of 1M and a file node "fN" for each.
func addFiles(t *testing.T, d *Daemon, n int) {
	t.Helper()
	for i := range n {
		img := d.Path(fmt.Sprintf("c%d.raw", i))
		mkRaw(t, img, "1M")
		d.Cmd("blockdev-add", map[string]any{"driver": "file", "node-name": fmt.Sprintf("f%d", i), "filename": img})
	}
}

// TestBlockdevChangeSteps replays a qsd 7.2 session of x-blockdev-change:
// each refusal with qsd's words (leaving the quorum as it was), and the
// names a new child gets: the next index, which goes back only when the
// child with the highest index leaves.
func TestBlockdevChangeSteps(t *testing.T) {
	d := start(t)
	addFiles(t, d, 5)
	mkRaw(t, d.Path("big.raw"), "2M")
	d.Cmd("blockdev-add", map[string]any{"driver": "file", "node-name": "big", "filename": d.Path("big.raw")})
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", d.Path("x.qcow2"), "1M")
	d.Cmd("blockdev-add", map[string]any{"driver": "file", "node-name": "ro", "filename": d.Path("c4.raw"), "read-only": true, "force-share": true})
	d.Cmd("blockdev-add", map[string]any{"driver": "qcow2", "node-name": "qc", "file": map[string]any{"driver": "file", "filename": d.Path("x.qcow2")}})
	d.Cmd("blockdev-add", map[string]any{"driver": "quorum", "node-name": "q", "vote-threshold": 2, "children": []string{"f0", "f1", "f2"}})
	const start3 = "children.0=f0 children.1=f1 children.2=f2"
	type step struct {
		args  map[string]any
		err   string // GenericError's desc; "" for success
		edges string // the quorum's children afterwards
	}
	for _, s := range []step{
		{map[string]any{"parent": "q"}, "Either child or node must be specified", start3},
		{map[string]any{"parent": "q", "child": "children.0", "node": "f3"}, "The parameters child and node are in conflict", start3},
		{map[string]any{"parent": "nope", "node": "f3"}, "Cannot find device='nope' nor node-name='nope'", start3},
		{map[string]any{"parent": "f4", "node": "f3"}, "The node f4 does not support adding a child", start3},
		{map[string]any{"parent": "f4", "child": "children.0"}, "Node 'f4' does not have child 'children.0'", start3},
		{map[string]any{"parent": "qc", "child": "file"}, "The node qc does not support removing a child", start3},
		{map[string]any{"parent": "q", "child": "children.9"}, "Node 'q' does not have child 'children.9'", start3},
		{map[string]any{"parent": "q", "child": "f0"}, "Node 'q' does not have child 'f0'", start3},
		{map[string]any{"parent": "q", "node": "nope"}, "Node 'nope' not found", start3},
		{map[string]any{"parent": "q", "node": "f0"}, "The node f0 already has a parent", start3},
		{map[string]any{"parent": "q", "node": "q"}, "Making 'q' a children.3 child of 'q' would create a cycle", start3},
		{map[string]any{"parent": "q", "node": "f3"}, "", start3 + " children.3=f3"},
		{map[string]any{"parent": "q", "child": "children.1"}, "", "children.0=f0 children.2=f2 children.3=f3"},
		{map[string]any{"parent": "q", "node": "f1"}, "", "children.0=f0 children.2=f2 children.3=f3 children.4=f1"},
		{map[string]any{"parent": "q", "child": "children.4"}, "", "children.0=f0 children.2=f2 children.3=f3"},
		{map[string]any{"parent": "q", "node": "f4"}, "", "children.0=f0 children.2=f2 children.3=f3 children.4=f4"},
		{map[string]any{"parent": "q", "child": "children.0"}, "", "children.2=f2 children.3=f3 children.4=f4"},
		{map[string]any{"parent": "q", "child": "children.2"}, "", "children.3=f3 children.4=f4"},
		{map[string]any{"parent": "q", "child": "children.3"}, "The number of children cannot be lower than the vote threshold 2", "children.3=f3 children.4=f4"},
		// A child of another size is taken; the quorum keeps its size.
		{map[string]any{"parent": "q", "node": "big"}, "", "children.3=f3 children.4=f4 children.5=big"},
	} {
		_, err := d.Try("x-blockdev-change", s.args)
		switch {
		case s.err == "" && err != nil:
			t.Fatalf("%v: %v", s.args, err)
		case s.err != "" && (err == nil || err.Class != "GenericError" || err.Desc != s.err):
			t.Fatalf("%v: %v, want GenericError: %s", s.args, err, s.err)
		}
		if got := quorumEdges(d, "q"); got != s.edges {
			t.Fatalf("%v: children %s, want %s", s.args, got, s.edges)
		}
	}
	// The quorum's file name lists its children as they are now.
	nodes := namedNodes(d, true)
	var want []string
	for _, f := range []string{"c3", "c4", "big"} {
		want = append(want, fmt.Sprintf(`{"driver": "file", "filename": %q}`, d.Path(f+".raw")))
	}
	wantFile := `json:{"children": [` + strings.Join(want, ", ") + `], "driver": "quorum", "vote-threshold": 2}`
	if got := nodes["q"].File; got != wantFile {
		t.Errorf("quorum file name\n got %s\nwant %s", got, wantFile)
	}
	if sz := nodes["q"].Image["virtual-size"]; sz != float64(1<<20) {
		t.Errorf("quorum size %v", sz)
	}

	// blkverify mode takes no new child, and refuses removals by the
	// threshold.
	d.Cmd("blockdev-add", map[string]any{"driver": "quorum", "node-name": "bv", "vote-threshold": 2, "blkverify": true, "children": []string{"f1", "f2"}})
	d.MustFail("x-blockdev-change", map[string]any{"parent": "bv", "node": "f0"}, "GenericError", "Cannot add a child to a quorum in blkverify mode")
	d.MustFail("x-blockdev-change", map[string]any{"parent": "bv", "child": "children.0"}, "GenericError", "The number of children cannot be lower than the vote threshold 2")
}

// TestBlockdevChangeInlineChild: a removed child that the quorum opened
// itself is closed; one the monitor added stays.
func TestBlockdevChangeInlineChild(t *testing.T) {
	d := start(t)
	addFiles(t, d, 1)
	mkRaw(t, d.Path("inline.raw"), "1M")
	d.Cmd("blockdev-add", map[string]any{"driver": "quorum", "node-name": "q", "vote-threshold": 1,
		"children": []any{"f0", map[string]any{"driver": "file", "node-name": "inl", "filename": d.Path("inline.raw")}}})
	d.Cmd("x-blockdev-change", map[string]any{"parent": "q", "child": "children.1"})
	if _, ok := namedNodes(d, true)["inl"]; ok {
		t.Errorf("the removed inline child is still open")
	}
	d.MustFail("x-blockdev-change", map[string]any{"parent": "q", "child": "children.0"}, "GenericError", "The number of children cannot be lower than the vote threshold 1")
	d.Cmd("blockdev-add", map[string]any{"driver": "file", "node-name": "f1", "filename": d.Path("inline.raw")})
	d.Cmd("x-blockdev-change", map[string]any{"parent": "q", "node": "f1"})
	d.Cmd("x-blockdev-change", map[string]any{"parent": "q", "child": "children.0"})
	if _, ok := namedNodes(d, true)["f0"]; !ok {
		t.Errorf("the removed monitor-owned child was closed")
	}
	if got := quorumEdges(d, "q"); got != "children.1=f1" {
		t.Errorf("children %s", got)
	}
}

// TestBlockdevChangeData changes the children of a quorum exported over
// NBD between writes: a new child gets the quorum's permissions, is
// outvoted where it differs, receives the writes made after it came, and
// a removed child none after it left. The files are checked with qemu-io
// once the daemon has stopped.
func TestBlockdevChangeData(t *testing.T) {
	d := start(t)
	addFiles(t, d, 3)
	d.Cmd("blockdev-add", map[string]any{"driver": "file", "node-name": "ro", "filename": d.Path("c2.raw"), "read-only": true, "force-share": true})
	d.Cmd("blockdev-add", map[string]any{"driver": "quorum", "node-name": "q", "vote-threshold": 1, "children": []string{"f0", "f1"}})
	sock := startNBD(d)
	d.Cmd("block-export-add", map[string]any{"type": "nbd", "id": "e0", "node-name": "q", "writable": true})
	uri := nbdURI(sock, "q")
	run(t, "qemu-io", "-f", "raw", "-c", "write -P 0x11 0 64k", uri)

	// Taking write on a read-only node fails, and changes nothing.
	d.MustFail("x-blockdev-change", map[string]any{"parent": "q", "node": "ro"}, "GenericError", "Block node is read-only")
	d.Cmd("blockdev-del", map[string]any{"node-name": "ro"})
	d.Cmd("x-blockdev-change", map[string]any{"parent": "q", "node": "f2"})
	if got, want := edges(d)["q -children.2-> f2"], "[consistent-read,write] [consistent-read,write-unchanged]"; got != want {
		t.Errorf("new child's permissions %s, want %s", got, want)
	}

	// f2 holds zeroes where the others hold 0x11: outvoted and reported.
	d.ClearHistory()
	run(t, "qemu-io", "-f", "raw", "-c", "read -P 0x11 0 64k", uri)
	if !d.WaitHistory(func(ev []Event) bool {
		for _, e := range ev {
			if e.Event == "QUORUM_REPORT_BAD" && e.Data["node-name"] == "f2" && e.Data["type"] == "read" {
				return true
			}
		}
		return false
	}, 10*time.Second) {
		b, _ := json.Marshal(d.History())
		t.Errorf("no QUORUM_REPORT_BAD for f2: %s", b)
	}
	run(t, "qemu-io", "-f", "raw", "-c", "write -P 0x22 64k 64k", uri)
	d.Cmd("x-blockdev-change", map[string]any{"parent": "q", "child": "children.0"})
	run(t, "qemu-io", "-f", "raw", "-c", "write -P 0x33 128k 64k", uri)
	d.DelExport("e0")
	d.Quit()

	for _, c := range []struct{ file, checks string }{
		{"c0.raw", "read -P 0x11 0 64k;read -P 0x22 64k 64k;read -P 0 128k 64k"},
		{"c1.raw", "read -P 0x11 0 64k;read -P 0x22 64k 64k;read -P 0x33 128k 64k"},
		{"c2.raw", "read -P 0 0 64k;read -P 0x22 64k 64k;read -P 0x33 128k 64k"},
	} {
		args := []string{"-f", "raw"}
		for _, chk := range strings.Split(c.checks, ";") {
			args = append(args, "-c", chk)
		}
		out := run(t, "qemu-io", append(args, d.Path(c.file))...)
		if strings.Contains(out, "Pattern verification failed") {
			t.Errorf("%s: %s", c.file, out)
		}
	}
}

// TestBlockdevAmend replays qsd 7.2's answers to x-blockdev-amend: the
// checks before a job exists, then an "amend" job (not a block job) that
// succeeds for a qcow2 node without encrypt and fails, as qsd does for an
// image without encryption, with it. The image is left as it was.
func TestBlockdevAmend(t *testing.T) {
	d := start(t)
	img := d.Path("x.qcow2")
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", img, "1M")
	mkRaw(t, d.Path("r.raw"), "1M")
	d.Cmd("blockdev-add", map[string]any{"driver": "qcow2", "node-name": "qc", "file": map[string]any{"driver": "file", "node-name": "qf", "filename": img}})
	d.Cmd("blockdev-add", map[string]any{"driver": "raw", "node-name": "r", "file": map[string]any{"driver": "file", "node-name": "rf", "filename": d.Path("r.raw")}})
	d.ClearHistory()

	for _, tt := range []struct {
		name, err string
		args      map[string]any
	}{
		{"raw node", "Driver does not support x-blockdev-amend", map[string]any{"node-name": "r", "options": map[string]any{"driver": "raw"}}},
		{"file node", "Driver does not support x-blockdev-amend", map[string]any{"node-name": "rf", "options": map[string]any{"driver": "file"}}},
		{"unknown node", "Cannot find device='' nor node-name='nope'", map[string]any{"node-name": "nope", "options": map[string]any{"driver": "qcow2"}}},
		{"unknown node before a bad job id", "Cannot find device='' nor node-name='nope'", map[string]any{"job-id": "#x", "node-name": "nope", "options": map[string]any{"driver": "qcow2"}}},
		{"another driver", "x-blockdev-amend doesn't support changing the block driver", map[string]any{"node-name": "qc", "options": map[string]any{"driver": "raw"}}},
		{"qcow2 options for a file node", "x-blockdev-amend doesn't support changing the block driver", map[string]any{"node-name": "qf", "options": map[string]any{"driver": "qcow2"}}},
		{"luks", "x-blockdev-amend doesn't support changing the block driver", map[string]any{"node-name": "qc", "options": map[string]any{"driver": "luks", "state": "active"}}},
		{"a driver qsd lacks", "Block driver 'blkreplay' not found or not supported", map[string]any{"node-name": "qc", "options": map[string]any{"driver": "blkreplay"}}},
		{"bad driver", "Parameter 'driver' does not accept value 'bogus'", map[string]any{"node-name": "qc", "options": map[string]any{"driver": "bogus"}}},
		{"no driver", "Parameter 'options.driver' is missing", map[string]any{"node-name": "qc", "options": map[string]any{}}},
		{"options not an object", "Invalid parameter type for 'options', expected: object", map[string]any{"node-name": "qc", "options": 5}},
		{"unexpected member", "Parameter 'options.foo' is unexpected", map[string]any{"node-name": "qc", "options": map[string]any{"driver": "qcow2", "foo": 1}}},
		{"encrypt without format", "Parameter 'options.encrypt.format' is missing", map[string]any{"node-name": "qc", "options": map[string]any{"driver": "qcow2", "encrypt": map[string]any{}}}},
		{"encrypt format aes", "Parameter 'format' does not accept value 'aes'", map[string]any{"node-name": "qc", "options": map[string]any{"driver": "qcow2", "encrypt": map[string]any{"format": "aes"}}}},
		{"luks encrypt without state", "Parameter 'options.encrypt.state' is missing", map[string]any{"node-name": "qc", "options": map[string]any{"driver": "qcow2", "encrypt": map[string]any{"format": "luks"}}}},
		{"qcow encrypt with a member", "Parameter 'options.encrypt.x' is unexpected", map[string]any{"node-name": "qc", "options": map[string]any{"driver": "qcow2", "encrypt": map[string]any{"format": "qcow", "x": 1}}}},
		{"luks driver without state", "Parameter 'options.state' is missing", map[string]any{"job-id": "#x", "node-name": "qc", "options": map[string]any{"driver": "luks"}}},
		{"bad job id", "Invalid job ID '#x'", map[string]any{"job-id": "#x", "node-name": "qc", "options": map[string]any{"driver": "qcow2"}}},
	} {
		args := map[string]any{"job-id": "a0"}
		for k, v := range tt.args {
			args[k] = v
		}
		d.MustFail("x-blockdev-amend", args, "GenericError", tt.err)
	}
	if jobs := queryJobs(d); len(jobs) != 0 {
		t.Errorf("jobs after refused amends: %v", jobs)
	}

	// Without encrypt: a job that succeeds and stays until job-dismiss.
	d.Cmd("x-blockdev-amend", map[string]any{"job-id": "a1", "node-name": "qc", "options": map[string]any{"driver": "qcow2"}, "force": true})
	waitConcluded(t, d, "a1")
	if j := queryJobs(d)["a1"]; j.Type != "amend" || j.CurrentProgress != 1 || j.TotalProgress != 1 || j.Error != "" {
		t.Errorf("amend job %+v", j)
	}
	if got := string(d.Cmd("query-block-jobs", nil)); got != "[]" {
		t.Errorf("query-block-jobs shows an amend job: %s", got)
	}
	d.MustFail("x-blockdev-amend", map[string]any{"job-id": "a1", "node-name": "qc", "options": map[string]any{"driver": "qcow2"}}, "GenericError", "Job ID 'a1' already in use")
	d.Cmd("job-dismiss", map[string]any{"id": "a1"})
	waitStatus(t, d, "a1", "null")

	// With encrypt, on an image without encryption: the job fails.
	for i, enc := range []map[string]any{{"format": "luks", "state": "active", "new-secret": "s"}, {"format": "qcow"}} {
		id := fmt.Sprintf("e%d", i)
		d.Cmd("x-blockdev-amend", map[string]any{"job-id": id, "node-name": "qc", "options": map[string]any{"driver": "qcow2", "encrypt": enc}})
		waitConcluded(t, d, id)
		if j := queryJobs(d)[id]; j.Type != "amend" || j.CurrentProgress != 1 || j.TotalProgress != 1 || j.Error != "image is not encrypted, can't amend" {
			t.Errorf("amend job with encrypt %+v", j)
		}
		d.Cmd("job-dismiss", map[string]any{"id": id})
		waitStatus(t, d, id, "null")
	}
	ev := d.History()
	for id, want := range map[string]string{
		"a1": `["created","running","waiting","pending","concluded","null"]`,
		"e0": `["created","running","aborting","concluded","null"]`,
		"e1": `["created","running","aborting","concluded","null"]`,
	} {
		if got, _ := json.Marshal(statuses(ev, id)); string(got) != want {
			t.Errorf("%s: status changes %s, want %s", id, got, want)
		}
	}
	for _, e := range ev {
		if strings.HasPrefix(e.Event, "BLOCK_JOB_") {
			t.Errorf("block job event for an amend job: %+v", e)
		}
	}
	d.Quit()
	run(t, "qemu-img", "check", "-q", img)
	if out := run(t, "qemu-img", "info", "--output=json", img); strings.Contains(out, "encrypt") {
		t.Errorf("image gained encryption: %s", out)
	}
}

// TestQuorumReopenRefused: QEMU's quorum has no reopen handler, so qsd
// refuses blockdev-reopen of a quorum node even with its options as they
// are; the quorum keeps working.
func TestQuorumReopenRefused(t *testing.T) {
	d := start(t)
	addFiles(t, d, 3)
	opts := map[string]any{"driver": "quorum", "node-name": "q", "vote-threshold": 2, "children": []string{"f0", "f1", "f2"}}
	d.Cmd("blockdev-add", opts)
	d.MustFail("blockdev-reopen", map[string]any{"options": []any{opts}}, "GenericError",
		"Block format 'quorum' used by node 'q' does not support reopening files")
	d.Cmd("blockdev-del", map[string]any{"node-name": "q"})
}
