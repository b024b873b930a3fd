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
	"time"
)

// mkChain makes the reference chain top -> mid -> base (64 MiB; data in
// base 0-32M, mid 8M-24M, top 40M-48M) in dir, as qsd's transcripts do.
func mkChain(t *testing.T, dir string) {
	t.Helper()
	img := func(n string) string { return filepath.Join(dir, n) }
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", img("base.qcow2"), "64M")
	run(t, "qemu-io", "-c", "write -P 0x11 0 32M", img("base.qcow2"))
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", img("mid.qcow2"))
	run(t, "qemu-io", "-c", "write -P 0x22 8M 16M", img("mid.qcow2"))
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", "mid.qcow2", "-F", "qcow2", img("top.qcow2"))
	run(t, "qemu-io", "-c", "write -P 0x33 40M 8M", img("top.qcow2"))
}

// checkChainData reads the reference chain's data through uri.
func checkChainData(t *testing.T, uri string) {
	t.Helper()
	run(t, "qemu-io", "-r", "-f", "raw", "-c", "read -P 0x11 0 8M", "-c", "read -P 0x22 8M 16M", "-c", "read -P 0x11 24M 8M",
		"-c", "read -P 0 32M 8M", "-c", "read -P 0x33 40M 8M", "-c", "read -P 0 48M 16M", uri)
}

// TestQcow2ChainQueries opens only the top image: the chain comes from the
// headers, read-only, with generated names; queries report it as qsd does.
func TestQcow2ChainQueries(t *testing.T) {
	d := start(t)
	mkChain(t, d.Dir)
	d.Cmd("blockdev-add", map[string]any{"driver": "qcow2", "node-name": "top", "file": map[string]any{"driver": "file", "filename": d.Path("top.qcow2"), "node-name": "top-file"}})
	var list []map[string]any
	d.CmdInto("query-named-block-nodes", nil, &list)
	if len(list) != 6 {
		t.Fatalf("%d nodes, want 6", len(list))
	}
	byFile := map[string]map[string]any{}
	for _, n := range list {
		byFile[n["drv"].(string)+":"+n["file"].(string)] = n
	}
	top := byFile["qcow2:"+d.Path("top.qcow2")]
	mid := byFile["qcow2:"+d.Path("mid.qcow2")]
	base := byFile["qcow2:"+d.Path("base.qcow2")]
	if top == nil || mid == nil || base == nil {
		t.Fatalf("chain nodes missing: %v", byFile)
	}
	if top["ro"] != false || mid["ro"] != true || base["ro"] != true || !strings.HasPrefix(mid["node-name"].(string), "#block") {
		t.Errorf("read-only/names: top %v mid %v %v base %v", top["ro"], mid["node-name"], mid["ro"], base["ro"])
	}
	if top["backing_file"] != d.Path("mid.qcow2") || top["backing_file_depth"] != float64(2) || mid["backing_file"] != d.Path("base.qcow2") {
		t.Errorf("backing_file/depth: top %v %v, mid %v", top["backing_file"], top["backing_file_depth"], mid["backing_file"])
	}
	img := top["image"].(map[string]any)
	fs := img["format-specific"].(map[string]any)
	data := fs["data"].(map[string]any)
	if img["backing-filename"] != "mid.qcow2" || img["full-backing-filename"] != d.Path("mid.qcow2") || img["backing-filename-format"] != "qcow2" ||
		img["cluster-size"] != float64(65536) || img["virtual-size"] != float64(64<<20) || img["dirty-flag"] != false ||
		fs["type"] != "qcow2" || data["compat"] != "1.1" || data["refcount-bits"] != float64(16) || data["corrupt"] != false ||
		data["compression-type"] != "zlib" || data["lazy-refcounts"] != false || data["extended-l2"] != false {
		b, _ := json.Marshal(img)
		t.Errorf("top's image info: %s", b)
	}
	bi, _ := img["backing-image"].(map[string]any)
	if bi == nil || bi["filename"] != d.Path("mid.qcow2") || bi["backing-image"].(map[string]any)["filename"] != d.Path("base.qcow2") {
		t.Errorf("nested backing-image: %v", bi)
	}
	var flat []map[string]any
	d.CmdInto("query-named-block-nodes", map[string]any{"flat": true}, &flat)
	for _, n := range flat {
		if n["backing_file_depth"] != float64(0) || n["image"].(map[string]any)["backing-image"] != nil {
			t.Errorf("flat entry %v has depth or backing-image", n["node-name"])
		}
	}
	got := edges(d)
	midName, baseName := mid["node-name"].(string), base["node-name"].(string)
	want := map[string]string{
		"top -file-> top-file":              "[consistent-read,write,resize] [consistent-read,write-unchanged]",
		"top -backing-> " + midName:         "[] [consistent-read,write,write-unchanged,resize]",
		midName + " -backing-> " + baseName: "[] [consistent-read,write,write-unchanged,resize]",
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("edge %s = %q, want %q (all: %v)", k, got[k], v, got)
		}
	}
	d.MustFail("blockdev-del", map[string]any{"node-name": midName}, "GenericError", "Node '"+midName+"' is busy: node is used as backing hd of 'top'")
	d.MustFail("blockdev-del", map[string]any{"node-name": "top-file"}, "GenericError", "Node top-file is not owned by the monitor")
	d.Cmd("blockdev-del", map[string]any{"node-name": "top"})
	if n := namedNodes(d, true); len(n) != 0 {
		t.Errorf("nodes left after deleting top: %v", n)
	}
}

// TestQcow2ExplicitChainAndLocks adds each layer by hand, checks the data
// through an export and the image locks against a second opener.
func TestQcow2ExplicitChainAndLocks(t *testing.T) {
	d := start(t)
	mkChain(t, d.Dir)
	d.Cmd("blockdev-add", map[string]any{"driver": "file", "node-name": "base-file", "filename": d.Path("base.qcow2")})
	d.Cmd("blockdev-add", map[string]any{"driver": "qcow2", "node-name": "base", "file": "base-file"})
	d.Cmd("blockdev-add", map[string]any{"driver": "qcow2", "node-name": "mid", "file": map[string]any{"driver": "file", "node-name": "mid-file", "filename": d.Path("mid.qcow2")}, "backing": "base"})
	d.Cmd("blockdev-add", map[string]any{"driver": "qcow2", "node-name": "top", "file": map[string]any{"driver": "file", "node-name": "top-file", "filename": d.Path("top.qcow2")}, "backing": "mid"})
	nodes := namedNodes(d, true)
	if !strings.HasPrefix(nodes["top"].File, "json:") || nodes["base"].File != d.Path("base.qcow2") {
		t.Errorf("file names: top %s base %s", nodes["top"].File, nodes["base"].File)
	}
	d.MustFail("blockdev-add", map[string]any{"driver": "qcow2", "node-name": "x", "file": map[string]any{"driver": "file", "filename": d.Path("top.qcow2")}}, "GenericError", `Failed to get "write" lock`)
	d.MustFail("blockdev-add", map[string]any{"driver": "qcow2", "node-name": "x", "read-only": true, "file": map[string]any{"driver": "file", "filename": d.Path("top.qcow2"), "read-only": true}, "backing": nil}, "GenericError", `Failed to get shared "write" lock`)
	out, err := runErr("qemu-img", "info", d.Path("top.qcow2"))
	if err == nil || !strings.Contains(out, `Failed to get shared "write" lock`) {
		t.Errorf("qemu-img info of an image blockd writes: %v\n%s", err, out)
	}
	sock := startNBD(d)
	d.Cmd("block-export-add", map[string]any{"type": "nbd", "id": "e0", "node-name": "top"})
	checkChainData(t, nbdURI(sock, "top"))
	// base:allocation over the chain: data where any layer has it.
	got := imgMap(t, "-f", "raw", nbdURI(sock, "top"))
	want := []mapEntry{{0, 32 << 20, 0, true, false}, {32 << 20, 8 << 20, 0, false, true}, {40 << 20, 8 << 20, 0, true, false}, {48 << 20, 16 << 20, 0, false, true}}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("map over NBD: %v\nwant %v\nnbdinfo: %s", got, want, run(t, "nbdinfo", "--map", nbdURI(sock, "top")))
	}
}

// TestQcow2WriteThroughExport writes into a new qcow2 overlay over NBD and
// checks the image with qemu-img check, compare and map afterwards.
func TestQcow2WriteThroughExport(t *testing.T) {
	d := start(t)
	mkChain(t, d.Dir)
	d.Cmd("blockdev-add", map[string]any{"driver": "qcow2", "node-name": "top", "file": map[string]any{"driver": "file", "filename": d.Path("top.qcow2")}})
	sock := startNBD(d)
	d.Cmd("block-export-add", map[string]any{"type": "nbd", "id": "e0", "node-name": "top", "writable": true})
	uri := nbdURI(sock, "top")
	run(t, "qemu-io", "-f", "raw",
		"-c", "write -P 0x44 4M 4M", // over base's data: COW of whole clusters
		"-c", "write -P 0x55 10000 5000", // unaligned, partial clusters
		"-c", "write -z 12M 1M",
		"-c", "write -P 0x66 60M 1M", // unallocated everywhere
		"-c", "discard 44M 1M",
		uri)
	// The same operations on a raw copy of the chain give the expected data.
	ref := d.Path("ref.raw")
	run(t, "qemu-img", "convert", "-U", "-O", "raw", d.Path("top.qcow2"), ref)
	run(t, "qemu-io", "-f", "raw", "-c", "write -P 0x44 4M 4M", "-c", "write -P 0x55 10000 5000", "-c", "write -z 12M 1M", "-c", "write -P 0x66 60M 1M", ref)
	// discard on a node with discard=ignore leaves the data.
	run(t, "qemu-img", "compare", "-f", "raw", "-F", "raw", uri, ref)
	d.DelExport("e0")
	d.WaitEvent("BLOCK_EXPORT_DELETED", 10*time.Second)
	d.Cmd("blockdev-del", map[string]any{"node-name": "top"})
	run(t, "qemu-img", "check", d.Path("top.qcow2"))
	run(t, "qemu-img", "compare", "-F", "raw", d.Path("top.qcow2"), ref)
}

// TestQcow2CreateAndSnapshot follows qsd's overlay transcript: snapshot-sync
// makes and opens an overlay and moves the export onto it; the manual route
// creates a file and a qcow2 with blockdev-create and attaches it with
// blockdev-snapshot; errors use qsd's words.
func TestQcow2CreateAndSnapshot(t *testing.T) {
	d := start(t)
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", d.Path("top.qcow2"), "64M")
	run(t, "qemu-io", "-c", "write -P 0x33 0 1M", d.Path("top.qcow2"))
	d.Cmd("blockdev-add", map[string]any{"driver": "qcow2", "node-name": "top", "file": map[string]any{"driver": "file", "filename": d.Path("top.qcow2"), "node-name": "top-file"}})
	sock := startNBD(d)
	d.Cmd("block-export-add", map[string]any{"type": "nbd", "id": "exp0", "node-name": "top", "writable": true})
	uri := nbdURI(sock, "top")

	d.Cmd("blockdev-snapshot-sync", map[string]any{"node-name": "top", "snapshot-file": d.Path("ov1.qcow2"), "snapshot-node-name": "ov1", "format": "qcow2"})
	var exps []map[string]any
	d.CmdInto("query-block-exports", nil, &exps)
	if len(exps) != 1 || exps[0]["node-name"] != "ov1" {
		t.Errorf("export after snapshot-sync: %v", exps)
	}
	info := run(t, "qemu-img", "info", "-U", d.Path("ov1.qcow2"))
	if !strings.Contains(info, "backing file: "+d.Path("top.qcow2")) || !strings.Contains(info, "backing file format: qcow2") {
		t.Errorf("overlay made by snapshot-sync:\n%s", info)
	}
	if n := namedNodes(d, true); !n["top"].RO || n["ov1"].RO {
		t.Errorf("read-only after snapshot: top %v ov1 %v", n["top"].RO, n["ov1"].RO)
	}
	run(t, "qemu-io", "-f", "raw", "-c", "read -P 0x33 0 1M", "-c", "write -P 0x44 1M 1M", uri)

	// The manual route.
	d.Cmd("blockdev-create", map[string]any{"job-id": "mkfile", "options": map[string]any{"driver": "file", "filename": d.Path("ov2.qcow2"), "size": 0}})
	waitConcluded(t, d, "mkfile")
	d.Cmd("job-dismiss", map[string]any{"id": "mkfile"})
	d.Cmd("blockdev-add", map[string]any{"driver": "file", "node-name": "ov2-file", "filename": d.Path("ov2.qcow2")})
	d.Cmd("blockdev-create", map[string]any{"job-id": "mkqcow2", "options": map[string]any{"driver": "qcow2", "file": "ov2-file", "size": 64 << 20, "backing-file": d.Path("ov1.qcow2"), "backing-fmt": "qcow2"}})
	waitConcluded(t, d, "mkqcow2")
	if j := queryJobs(d)["mkqcow2"]; j.Error != "" {
		t.Fatalf("qcow2 create failed: %s", j.Error)
	}
	d.Cmd("job-dismiss", map[string]any{"id": "mkqcow2"})
	d.Cmd("blockdev-add", map[string]any{"driver": "qcow2", "node-name": "ov2", "file": "ov2-file", "backing": nil})
	d.Cmd("blockdev-snapshot", map[string]any{"node": "ov1", "overlay": "ov2"})
	d.CmdInto("query-block-exports", nil, &exps)
	if len(exps) != 1 || exps[0]["node-name"] != "ov2" {
		t.Errorf("export after blockdev-snapshot: %v", exps)
	}
	run(t, "qemu-io", "-f", "raw", "-c", "read -P 0x33 0 1M", "-c", "read -P 0x44 1M 1M", "-c", "write -P 0x55 2M 1M", uri)

	d.MustFail("blockdev-snapshot", map[string]any{"node": "ov2", "overlay": "top"}, "GenericError", "The overlay is already in use")
	d.MustFail("blockdev-snapshot", map[string]any{"node": "ov2", "overlay": "ov2"}, "GenericError", "The overlay is already in use")
	d.MustFail("blockdev-snapshot", map[string]any{"node": "nosuch", "overlay": "ov2"}, "GenericError", "Cannot find device='nosuch' nor node-name='nosuch'")
	d.MustFail("blockdev-snapshot-sync", map[string]any{"node-name": "ov2", "snapshot-file": d.Path("ov3.qcow2"), "snapshot-node-name": "ov1", "format": "qcow2"}, "GenericError", "New overlay node-name already in use")
	d.MustFail("blockdev-snapshot-sync", map[string]any{"node-name": "ov2", "snapshot-file": d.Path("nonexist.qcow2"), "mode": "existing"}, "GenericError", "New overlay node-name missing")

	// A create job that fails at run time: the file is in use by ov2.
	d.Cmd("blockdev-create", map[string]any{"job-id": "bad", "options": map[string]any{"driver": "qcow2", "file": "ov2-file", "size": 1 << 20}})
	waitConcluded(t, d, "bad")
	want := "Permission conflict on node 'ov2-file': permissions 'write, resize' are both required by an unnamed block device (uses node 'ov2-file' as 'root' child) and unshared by node 'ov2' (uses node 'ov2-file' as 'file' child)."
	if j := queryJobs(d)["bad"]; j.Error != want {
		t.Errorf("failed create: %q\nwant %q", j.Error, want)
	}
	d.Cmd("job-dismiss", map[string]any{"id": "bad"})

	// Snapshot of a node nobody uses: the overlay is dropped at once, the
	// node is read-only afterwards.
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", d.Path("lone.qcow2"), "1M")
	d.Cmd("blockdev-add", map[string]any{"driver": "qcow2", "node-name": "lone", "file": map[string]any{"driver": "file", "filename": d.Path("lone.qcow2")}})
	d.Cmd("blockdev-snapshot-sync", map[string]any{"node-name": "lone", "snapshot-file": d.Path("lone-ov.qcow2"), "snapshot-node-name": "lone-ov", "format": "qcow2"})
	n := namedNodes(d, true)
	if _, ok := n["lone-ov"]; ok || !n["lone"].RO {
		t.Errorf("snapshot of an unused node: overlay kept %v, lone ro %v", ok, n["lone"].RO)
	}

	d.DelExport("exp0")
	d.WaitEvent("BLOCK_EXPORT_DELETED", 10*time.Second)
	d.Quit()
	for _, img := range []string{"top.qcow2", "ov1.qcow2", "ov2.qcow2"} {
		run(t, "qemu-img", "check", d.Path(img))
	}
	run(t, "qemu-io", "-c", "read -P 0x33 0 1M", "-c", "read -P 0x44 1M 1M", "-c", "read -P 0x55 2M 1M", d.Path("ov2.qcow2"))
}

// TestTransaction: snapshots in one transaction happen together, and a
// failing action undoes the others.
func TestTransaction(t *testing.T) {
	d := start(t)
	for _, n := range []string{"a", "b"} {
		run(t, "qemu-img", "create", "-q", "-f", "qcow2", d.Path(n+".qcow2"), "1M")
		d.Cmd("blockdev-add", map[string]any{"driver": "qcow2", "node-name": n, "file": map[string]any{"driver": "file", "filename": d.Path(n + ".qcow2")}})
	}
	sock := startNBD(d)
	d.Cmd("block-export-add", map[string]any{"type": "nbd", "id": "ea", "node-name": "a", "writable": true})
	d.Cmd("block-export-add", map[string]any{"type": "nbd", "id": "eb", "node-name": "b", "writable": true})
	// The second action fails: nothing may change.
	d.MustFail("transaction", map[string]any{"actions": []any{
		map[string]any{"type": "blockdev-snapshot-sync", "data": map[string]any{"node-name": "a", "snapshot-file": d.Path("a1.qcow2"), "snapshot-node-name": "a1"}},
		map[string]any{"type": "blockdev-snapshot-sync", "data": map[string]any{"node-name": "nosuch", "snapshot-file": d.Path("b1.qcow2"), "snapshot-node-name": "b1"}},
	}}, "GenericError", "Cannot find device='' nor node-name='nosuch'")
	d.MustFail("transaction", map[string]any{"actions": []any{
		map[string]any{"type": "blockdev-snapshot-sync", "data": map[string]any{"node-name": "a", "snapshot-file": d.Path("a1.qcow2"), "snapshot-node-name": "a1"}},
		map[string]any{"type": "abort", "data": map[string]any{}},
	}}, "GenericError", "Transaction aborted using Abort action")
	n := namedNodes(d, true)
	if _, ok := n["a1"]; ok || n["a"].RO {
		t.Errorf("failed transaction changed the graph: %v", n)
	}
	d.Cmd("transaction", map[string]any{"actions": []any{
		map[string]any{"type": "blockdev-snapshot-sync", "data": map[string]any{"node-name": "a", "snapshot-file": d.Path("a1.qcow2"), "snapshot-node-name": "a1"}},
		map[string]any{"type": "blockdev-snapshot-sync", "data": map[string]any{"node-name": "b", "snapshot-file": d.Path("b1.qcow2"), "snapshot-node-name": "b1"}},
	}})
	var exps []map[string]any
	d.CmdInto("query-block-exports", nil, &exps)
	for _, e := range exps {
		if e["node-name"] != e["id"].(string)[1:]+"1" {
			t.Errorf("export %v did not move to the overlay", e)
		}
	}
	run(t, "qemu-io", "-f", "raw", "-c", "write -P 0x12 0 64k", nbdURI(sock, "a"))
	d.Quit()
	run(t, "qemu-img", "check", d.Path("a1.qcow2"))
	run(t, "qemu-io", "-c", "read -P 0x12 0 64k", d.Path("a1.qcow2"))
}

// TestReopen switches a backing link and read-only state with
// blockdev-reopen and checks its errors.
func TestReopen(t *testing.T) {
	d := start(t)
	mkChain(t, d.Dir)
	d.Cmd("blockdev-add", map[string]any{"driver": "qcow2", "node-name": "base", "file": map[string]any{"driver": "file", "node-name": "base-file", "filename": d.Path("base.qcow2")}})
	d.Cmd("blockdev-add", map[string]any{"driver": "qcow2", "node-name": "mid", "file": map[string]any{"driver": "file", "node-name": "mid-file", "filename": d.Path("mid.qcow2")}, "backing": "base"})
	d.Cmd("blockdev-add", map[string]any{"driver": "qcow2", "node-name": "top", "file": map[string]any{"driver": "file", "node-name": "top-file", "filename": d.Path("top.qcow2")}, "backing": "mid"})
	d.Cmd("blockdev-reopen", map[string]any{"options": []any{map[string]any{"driver": "qcow2", "node-name": "top", "file": "top-file", "backing": "base", "read-only": true}}})
	n := namedNodes(d, true)
	if !n["top"].RO {
		t.Errorf("top not read-only after reopen")
	}
	got := edges(d)
	if _, ok := got["top -backing-> base"]; !ok {
		t.Errorf("top's backing not base after reopen: %v", got)
	}
	d.MustFail("blockdev-reopen", map[string]any{"options": []any{map[string]any{"driver": "qcow2", "file": "top-file"}}}, "GenericError", "node-name not specified")
	d.MustFail("blockdev-reopen", map[string]any{"options": []any{map[string]any{"driver": "raw", "node-name": "top", "file": "top-file"}}}, "GenericError", "backing is missing for 'top'")
	d.MustFail("blockdev-reopen", map[string]any{"options": []any{map[string]any{"driver": "qcow2", "node-name": "top", "file": "top-file"}}}, "GenericError", "backing is missing for 'top'")
	d.Cmd("blockdev-reopen", map[string]any{"options": []any{map[string]any{"driver": "qcow2", "node-name": "top", "file": "top-file", "backing": "base", "read-only": false}}})
	sock := startNBD(d)
	d.Cmd("block-export-add", map[string]any{"type": "nbd", "id": "e0", "node-name": "top"})
	// mid is out of top's chain now: 8M-24M come from base.
	run(t, "qemu-io", "-r", "-f", "raw", "-c", "read -P 0x11 0 32M", "-c", "read -P 0x33 40M 8M", nbdURI(sock, "top"))
}

// TestKill9 kills a daemon that is writing into a qcow2 image; qemu-img
// check must find no corruption (leaked clusters are allowed) and every
// write that was flushed before the kill must read back.
func TestKill9(t *testing.T) {
	d := start(t)
	img := d.Path("k.qcow2")
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", img, "256M")
	d.Cmd("blockdev-add", map[string]any{"driver": "qcow2", "node-name": "k", "file": map[string]any{"driver": "file", "filename": img}})
	sock := startNBD(d)
	d.Cmd("block-export-add", map[string]any{"type": "nbd", "id": "e0", "node-name": "k", "writable": true})
	// A flushed, allocating pattern first.
	var cmds []string
	for i := 0; i < 64; i++ {
		cmds = append(cmds, "-c", fmt.Sprintf("write -P %d %d 12k", i+1, int64(i)*3<<20+4096))
	}
	cmds = append(cmds, "-c", "flush")
	run(t, "qemu-io", append([]string{"-f", "raw"}, append(cmds, nbdURI(sock, "k"))...)...)
	// Then keep writing (allocating L2 tables and refcount blocks) and
	// kill the daemon in the middle.
	writer := exec.Command("fio", "--name=w", "--ioengine=nbd", "--uri="+nbdURI(sock, "k"), "--rw=randwrite", "--bs=4k",
		"--iodepth=16", "--size=256M", "--offset=200M", "--time_based", "--runtime=30")
	if _, err := exec.LookPath("fio"); err != nil {
		writer = exec.Command("qemu-io", "-f", "raw", "-c", "write -P 0x77 200M 50M", nbdURI(sock, "k"))
	}
	if err := writer.Start(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(700 * time.Millisecond) // let writes be in flight: the point is to die mid-work
	d.cmd.Process.Signal(syscall.SIGKILL)
	<-d.done
	writer.Process.Kill()
	writer.Wait()
	out, err := runErr("qemu-img", "check", img)
	if ex, ok := err.(*exec.ExitError); err != nil && !(ok && ex.ExitCode() == 3) {
		t.Fatalf("qemu-img check after kill -9: %v\n%s", err, out)
	}
	if strings.Contains(out, "ERROR") || strings.Contains(out, "corrupt") {
		t.Errorf("corruption after kill -9:\n%s", out)
	}
	cmds = nil
	for i := 0; i < 64; i++ {
		cmds = append(cmds, "-c", fmt.Sprintf("read -P %d %d 12k", i+1, int64(i)*3<<20+4096))
	}
	run(t, "qemu-io", append(cmds, img)...)
	_ = os.Remove
}
