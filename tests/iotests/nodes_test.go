package iotests

import (
	"encoding/json"
	"os"
	"strings"
	"testing"
)

func mkRaw(t *testing.T, path string, size string) {
	t.Helper()
	run(t, "qemu-img", "create", "-q", "-f", "raw", path, size)
}

// TestBlockdevAddErrors: each bad blockdev-add gets qsd's error and leaves
// the graph as it was.
func TestBlockdevAddErrors(t *testing.T) {
	d := start(t)
	mkRaw(t, d.Path("a.raw"), "1M")
	if err := os.Mkdir(d.Path("dir"), 0o755); err != nil {
		t.Fatal(err)
	}
	d.Cmd("blockdev-add", map[string]any{"driver": "null-co", "node-name": "top"})
	d.Cmd("blockdev-add", map[string]any{"driver": "file", "node-name": "f", "filename": d.Path("a.raw")})
	tests := []struct {
		args map[string]any
		desc string
	}{
		{map[string]any{"driver": "null-co", "node-name": "top"}, "Duplicate nodes with node-name='top'"},
		{map[string]any{"driver": "null-co", "node-name": "#n"}, "Invalid node-name: '#n'"},
		{map[string]any{"driver": "null-co", "node-name": "1abc"}, "Invalid node-name: '1abc'"},
		{map[string]any{"driver": "null-co", "node-name": "a b"}, "Invalid node-name: 'a b'"},
		{map[string]any{"driver": "null-co", "node-name": strings.Repeat("a", 32)}, "Node name too long"},
		{map[string]any{"driver": "null-co"}, "'node-name' must be specified for the root node"},
		{map[string]any{"driver": "nosuch", "node-name": "x"}, "Parameter 'driver' does not accept value 'nosuch'"},
		{map[string]any{"driver": "raw", "node-name": "x"}, "Parameter 'file' is missing"},
		{map[string]any{"driver": "raw", "node-name": "x", "file": "nosuch"}, "Cannot find device='nosuch' nor node-name='nosuch'"},
		{map[string]any{"driver": "file", "node-name": "x", "filename": "/nonexistent/x"}, "Could not open '/nonexistent/x': No such file or directory"},
		{map[string]any{"driver": "file", "node-name": "x", "filename": d.Path("dir")}, "Could not open '" + d.Path("dir") + "': Is a directory"},
		{map[string]any{"driver": "null-co", "node-name": "x", "size": "big"}, "Invalid parameter type for 'size', expected: integer"},
		{map[string]any{"driver": "null-co", "node-name": "x", "bogus": 1}, "Parameter 'bogus' is unexpected"},
		{map[string]any{"driver": "null-co", "node-name": "x", "detect-zeroes": "maybe"}, "Parameter 'detect-zeroes' does not accept value 'maybe'"},
		{map[string]any{"driver": "file", "node-name": "x", "filename": d.Path("a.raw"), "aio": "native"}, "aio=native was specified, but it requires cache.direct=on, which was not specified."},
		// The inline child was opened before the parent failed: it must go too.
		{map[string]any{"driver": "raw", "node-name": "x", "file": map[string]any{"driver": "file", "node-name": "xf", "filename": d.Path("a.raw")}, "size": 1000}, "Specified size is not multiple of 512"},
	}
	var before []map[string]any
	d.CmdInto("query-named-block-nodes", nil, &before)
	for _, tt := range tests {
		d.MustFail("blockdev-add", tt.args, "GenericError", tt.desc)
	}
	var after []map[string]any
	d.CmdInto("query-named-block-nodes", nil, &after)
	if len(after) != len(before) {
		t.Errorf("%d nodes after failed blockdev-adds, want %d", len(after), len(before))
	}
	// A name of 31 characters is fine.
	d.Cmd("blockdev-add", map[string]any{"driver": "null-co", "node-name": strings.Repeat("a", 31)})
}

type nodeInfo struct {
	NodeName         string         `json:"node-name"`
	Drv              string         `json:"drv"`
	RO               bool           `json:"ro"`
	File             string         `json:"file"`
	BackingFileDepth int            `json:"backing_file_depth"`
	Image            map[string]any `json:"image"`
	Cache            map[string]any `json:"cache"`
	DetectZeroes     string         `json:"detect_zeroes"`
	WriteThreshold   int64          `json:"write_threshold"`
}

func namedNodes(d *Daemon, flat bool) map[string]nodeInfo {
	var list []nodeInfo
	d.CmdInto("query-named-block-nodes", map[string]any{"flat": flat}, &list)
	m := map[string]nodeInfo{}
	for _, n := range list {
		m[n.NodeName] = n
	}
	return m
}

// TestQueryNamedBlockNodes checks what is reported for file, raw and
// null-co nodes, and that nodes are listed newest first.
func TestQueryNamedBlockNodes(t *testing.T) {
	d := start(t)
	mkRaw(t, d.Path("a.raw"), "1M")
	d.Cmd("blockdev-add", map[string]any{"driver": "raw", "node-name": "r", "file": map[string]any{"driver": "file", "node-name": "rf", "filename": d.Path("a.raw")}})
	d.Cmd("blockdev-add", map[string]any{"driver": "null-co", "node-name": "n"})
	d.Cmd("blockdev-add", map[string]any{"driver": "null-co", "node-name": "z", "size": 4096, "read-zeroes": true, "cache": map[string]any{"direct": true}, "read-only": true})
	var list []nodeInfo
	d.CmdInto("query-named-block-nodes", nil, &list)
	var order []string
	for _, n := range list {
		order = append(order, n.NodeName)
	}
	if got := strings.Join(order, ","); got != "z,n,r,rf" {
		t.Errorf("order = %s, want newest first z,n,r,rf", got)
	}
	nodes := namedNodes(d, true)
	rf := nodes["rf"]
	if rf.Drv != "file" || rf.File != d.Path("a.raw") || rf.Image["format"] != "file" || rf.Image["virtual-size"] != float64(1<<20) || rf.Image["dirty-flag"] != false {
		t.Errorf("file node: %+v", rf)
	}
	if _, ok := rf.Image["actual-size"]; !ok {
		t.Errorf("file node lacks actual-size: %+v", rf.Image)
	}
	r := nodes["r"]
	if r.Drv != "raw" || r.File != d.Path("a.raw") || r.Image["format"] != "raw" || r.RO {
		t.Errorf("raw node: %+v", r)
	}
	n := nodes["n"]
	if n.File != "null-co://" || n.Image["virtual-size"] != float64(1<<30) || n.Image["actual-size"] != float64(0) {
		t.Errorf("null-co node: %+v", n)
	}
	z := nodes["z"]
	if !z.RO || z.Cache["direct"] != true || z.Cache["writeback"] != true || z.Image["virtual-size"] != float64(4096) || !strings.HasPrefix(z.File, "json:") {
		t.Errorf("null-co node with options: %+v", z)
	}
	var opts map[string]any
	if err := json.Unmarshal([]byte(strings.TrimPrefix(z.File, "json:")), &opts); err != nil || opts["driver"] != "null-co" || opts["read-zeroes"] != true || opts["size"] != float64(4096) {
		t.Errorf("json: filename %s does not describe the options", z.File)
	}
	if _, ok := z.Image["dirty-flag"]; ok {
		t.Errorf("null-co reports a dirty flag: %+v", z.Image)
	}
}

type graphQuery struct {
	Nodes []struct {
		ID   int    `json:"id"`
		Type string `json:"type"`
		Name string `json:"name"`
	} `json:"nodes"`
	Edges []struct {
		Parent int      `json:"parent"`
		Child  int      `json:"child"`
		Name   string   `json:"name"`
		Perm   []string `json:"perm"`
		Shared []string `json:"shared-perm"`
	} `json:"edges"`
}

// edges renders the block graph as "parent -name-> child [perm] [shared]"
// lines with anonymous parents called by their type.
func edges(d *Daemon) map[string]string {
	var g graphQuery
	d.CmdInto("x-debug-query-block-graph", nil, &g)
	name := map[int]string{}
	for _, n := range g.Nodes {
		name[n.ID] = n.Name
		if n.Name == "" {
			name[n.ID] = n.Type
		}
	}
	out := map[string]string{}
	for _, e := range g.Edges {
		out[name[e.Parent]+" -"+e.Name+"-> "+name[e.Child]] = "[" + strings.Join(sortPerms(e.Perm), ",") + "] [" + strings.Join(sortPerms(e.Shared), ",") + "]"
	}
	return out
}

func sortPerms(p []string) []string {
	order := []string{"consistent-read", "write", "write-unchanged", "resize"}
	var out []string
	for _, o := range order {
		for _, x := range p {
			if x == o {
				out = append(out, x)
			}
		}
	}
	return out
}

// TestBlockGraphPermissions checks the permissions each edge takes and
// shares: a raw format passes its users' needs through; an export takes
// what a writer takes.
func TestBlockGraphPermissions(t *testing.T) {
	d := start(t)
	mkRaw(t, d.Path("a.raw"), "1M")
	d.Cmd("blockdev-add", map[string]any{"driver": "raw", "node-name": "r", "file": map[string]any{"driver": "file", "node-name": "rf", "filename": d.Path("a.raw")}})
	got := edges(d)
	want := map[string]string{"r -file-> rf": "[] [consistent-read,write,write-unchanged,resize]"}
	if len(got) != len(want) || got["r -file-> rf"] != want["r -file-> rf"] {
		t.Errorf("edges = %v, want %v", got, want)
	}
	d.Cmd("nbd-server-start", map[string]any{"addr": map[string]any{"type": "unix", "data": map[string]any{"path": d.Path("nbd.sock")}}})
	d.Cmd("block-export-add", map[string]any{"type": "nbd", "id": "e0", "node-name": "r", "writable": true})
	got = edges(d)
	want = map[string]string{
		"block-backend -root-> r": "[consistent-read,write] [consistent-read,write,write-unchanged]",
		"r -file-> rf":            "[consistent-read,write] [consistent-read,write,write-unchanged]",
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("edge %s = %q, want %q", k, got[k], v)
		}
	}
	// rf is written through r: another writer of the file is refused by
	// the image lock, and blockdev-del refuses both nodes.
	d.MustFail("blockdev-del", map[string]any{"node-name": "r"}, "GenericError", "Node r is in use")
	d.MustFail("blockdev-del", map[string]any{"node-name": "rf"}, "GenericError", "Node rf is not owned by the monitor")
	d.DelExport("e0")
	d.WaitEvent("BLOCK_EXPORT_DELETED", 10e9)
	d.Cmd("blockdev-del", map[string]any{"node-name": "r"})
	if n := namedNodes(d, true); len(n) != 0 {
		t.Errorf("nodes left after deleting r: %v (its inline file child must go with it)", n)
	}
}

// TestImageLocking: an export shares writes but not resizes, so while it
// exists qemu-io may write the image but qemu-img may not resize it (QEMU's
// lock bytes, seen across processes); afterwards it may.
func TestImageLocking(t *testing.T) {
	d := start(t)
	mkRaw(t, d.Path("a.raw"), "1M")
	d.Cmd("blockdev-add", map[string]any{"driver": "raw", "node-name": "r", "file": map[string]any{"driver": "file", "filename": d.Path("a.raw")}})
	// A raw node takes nothing until a user needs it: qemu-io may write.
	run(t, "qemu-io", "-f", "raw", "-c", "write 0 512", d.Path("a.raw"))
	d.Cmd("nbd-server-start", map[string]any{"addr": map[string]any{"type": "unix", "data": map[string]any{"path": d.Path("nbd.sock")}}})
	d.Cmd("block-export-add", map[string]any{"type": "nbd", "id": "e0", "node-name": "r", "writable": true})
	run(t, "qemu-io", "-f", "raw", "-c", "write 512 512", d.Path("a.raw"))
	out, err := runErr("qemu-img", "resize", "-f", "raw", d.Path("a.raw"), "2M")
	if err == nil || !strings.Contains(out, `Failed to get "resize" lock`) {
		t.Errorf("qemu-img resized an exported image: %v\n%s", err, out)
	}
	d.DelExport("e0")
	d.WaitEvent("BLOCK_EXPORT_DELETED", 10e9)
	run(t, "qemu-img", "resize", "-f", "raw", d.Path("a.raw"), "2M")
}

// TestBlockResize grows and shrinks a file node and checks the errors.
func TestBlockResize(t *testing.T) {
	d := start(t)
	mkRaw(t, d.Path("a.raw"), "1M")
	d.Cmd("blockdev-add", map[string]any{"driver": "file", "node-name": "f", "filename": d.Path("a.raw")})
	d.Cmd("block_resize", map[string]any{"node-name": "f", "size": 2 << 20})
	if st, _ := os.Stat(d.Path("a.raw")); st.Size() != 2<<20 {
		t.Errorf("file size after resize = %d", st.Size())
	}
	d.Cmd("block_resize", map[string]any{"node-name": "f", "size": 512 << 10})
	if n := namedNodes(d, true)["f"]; n.Image["virtual-size"] != float64(512<<10) {
		t.Errorf("virtual-size after shrink = %v", n.Image["virtual-size"])
	}
	d.MustFail("block_resize", map[string]any{"device": "f", "size": 1 << 20}, "GenericError", "Cannot find device='f' nor node-name=''")
	d.MustFail("block_resize", map[string]any{"node-name": "nosuch", "size": 1 << 20}, "GenericError", "Cannot find device='' nor node-name='nosuch'")
	d.MustFail("block_resize", map[string]any{"node-name": "f", "size": -1}, "GenericError", "Parameter 'size' expects a >0 size")
	// A protocol node under a format may not be resized behind its back.
	d.Cmd("blockdev-add", map[string]any{"driver": "raw", "node-name": "r", "file": "f", "offset": 0, "size": 4096})
	_, err := d.Try("block_resize", map[string]any{"node-name": "f", "size": 1 << 20})
	if err == nil || !strings.HasPrefix(err.Desc, "Permission conflict on node 'f': permissions 'resize' are both required by an unnamed block device") {
		t.Errorf("resizing a file under a raw window: %v", err)
	}
}

// TestQueryBlockAndStats: qsd has no named devices, so query-block and
// plain query-blockstats are empty; with query-nodes, a format node's entry
// holds its file's statistics under parent.
func TestQueryBlockAndStats(t *testing.T) {
	d := start(t)
	mkRaw(t, d.Path("a.raw"), "1M")
	d.Cmd("blockdev-add", map[string]any{"driver": "raw", "node-name": "r", "file": map[string]any{"driver": "file", "node-name": "rf", "filename": d.Path("a.raw")}})
	if got := string(d.Cmd("query-block", nil)); got != "[]" {
		t.Errorf("query-block = %s", got)
	}
	if got := string(d.Cmd("query-blockstats", nil)); got != "[]" {
		t.Errorf("query-blockstats = %s", got)
	}
	var stats []struct {
		NodeName string         `json:"node-name"`
		Stats    map[string]any `json:"stats"`
		Parent   *struct {
			NodeName string         `json:"node-name"`
			Stats    map[string]any `json:"stats"`
		} `json:"parent"`
		DriverSpecific map[string]any `json:"driver-specific"`
	}
	d.CmdInto("query-blockstats", map[string]any{"query-nodes": true}, &stats)
	if len(stats) != 2 {
		t.Fatalf("query-blockstats query-nodes: %d entries, want 2", len(stats))
	}
	for _, s := range stats {
		for _, k := range []string{"rd_bytes", "wr_bytes", "rd_operations", "wr_operations", "flush_operations", "wr_highest_offset", "timed_stats"} {
			if _, ok := s.Stats[k]; !ok {
				t.Errorf("%s stats lack %s", s.NodeName, k)
			}
		}
		switch s.NodeName {
		case "r":
			if s.Parent == nil || s.Parent.NodeName != "rf" {
				t.Errorf("raw node's parent stats: %+v", s.Parent)
			}
		case "rf":
			if s.DriverSpecific["driver"] != "file" {
				t.Errorf("file node's driver-specific: %v", s.DriverSpecific)
			}
		}
	}
}
