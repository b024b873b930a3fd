package iotests

import (
	"os/exec"
	"strings"
	"testing"
	"time"
)

// TestReopenImplicitChildren: the children a node opened itself follow its
// read-only state on reopen, can be given new options inline, and a child
// replaced by reopen is freed.
func TestReopenImplicitChildren(t *testing.T) {
	d := start(t)
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", d.Path("a.qcow2"), "1M")
	d.Cmd("blockdev-add", map[string]any{"driver": "qcow2", "node-name": "a", "read-only": true, "file": map[string]any{"driver": "file", "node-name": "af", "filename": d.Path("a.qcow2")}})
	if n := namedNodes(d, true); !n["af"].RO {
		t.Fatalf("inline file of a read-only node is not read-only")
	}
	// Read-write again, the file child's options given inline: it follows.
	d.Cmd("blockdev-reopen", map[string]any{"options": []any{map[string]any{"driver": "qcow2", "node-name": "a",
		"file": map[string]any{"driver": "file", "node-name": "af", "filename": d.Path("a.qcow2")}}}})
	if n := namedNodes(d, true); n["a"].RO || n["af"].RO {
		t.Errorf("after reopen read-write: a ro %v, af ro %v", n["a"].RO, n["af"].RO)
	}
	sock := startNBD(d)
	d.Cmd("block-export-add", map[string]any{"type": "nbd", "id": "e0", "node-name": "a", "writable": true})
	run(t, "qemu-io", "-f", "raw", "-c", "write -P 0x61 0 64k", nbdURI(sock, "a"))
	d.MustFail("blockdev-reopen", map[string]any{"options": []any{map[string]any{"driver": "qcow2", "node-name": "a", "file": "af", "read-only": true}}},
		"GenericError", "Read-only block node 'a' cannot support read-write users")
	d.DelExport("e0")
	d.WaitEvent("BLOCK_EXPORT_DELETED", 10*time.Second)
	// Read-only and back, the file child named: it follows both ways.
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", d.Path("b.qcow2"), "1M")
	d.Cmd("blockdev-add", map[string]any{"driver": "qcow2", "node-name": "b", "file": map[string]any{"driver": "file", "node-name": "bf", "filename": d.Path("b.qcow2")}})
	d.Cmd("blockdev-reopen", map[string]any{"options": []any{map[string]any{"driver": "qcow2", "node-name": "b", "read-only": true, "file": "bf"}}})
	if n := namedNodes(d, true); !n["b"].RO || !n["bf"].RO {
		t.Errorf("after reopen read-only: b ro %v, bf ro %v", n["b"].RO, n["bf"].RO)
	}
	// Without read-only given, the named child keeps its state: conflict.
	d.MustFail("blockdev-reopen", map[string]any{"options": []any{map[string]any{"driver": "qcow2", "node-name": "b", "file": "bf"}}}, "GenericError", "Block node is read-only")
	d.Cmd("blockdev-reopen", map[string]any{"options": []any{map[string]any{"driver": "qcow2", "node-name": "b", "read-only": false, "file": "bf"}}})
	if n := namedNodes(d, true); n["b"].RO || n["bf"].RO {
		t.Errorf("after reopen read-write: b ro %v, bf ro %v", n["b"].RO, n["bf"].RO)
	}
	// Inline file options that make the file read-only under a writer.
	d.MustFail("blockdev-reopen", map[string]any{"options": []any{map[string]any{"driver": "qcow2", "node-name": "a",
		"file": map[string]any{"driver": "file", "filename": d.Path("a.qcow2"), "read-only": true}}}}, "GenericError", "Read-only block node 'af' cannot support read-write users")
	d.Cmd("blockdev-reopen", map[string]any{"options": []any{map[string]any{"driver": "qcow2", "node-name": "a", "read-only": true,
		"file": map[string]any{"driver": "file", "filename": d.Path("a.qcow2")}}}})
	run(t, "qemu-img", "check", "-U", d.Path("a.qcow2"))
	run(t, "qemu-io", "-r", "-U", "-c", "read -P 0x61 0 64k", d.Path("a.qcow2"))

	// A raw node switched to another file frees the file it opened itself.
	mkRaw(t, d.Path("r.raw"), "1M")
	mkRaw(t, d.Path("o.raw"), "1M")
	d.Cmd("blockdev-add", map[string]any{"driver": "file", "node-name": "other", "filename": d.Path("o.raw")})
	d.Cmd("blockdev-add", map[string]any{"driver": "raw", "node-name": "r", "file": map[string]any{"driver": "file", "node-name": "rf", "filename": d.Path("r.raw")}})
	d.Cmd("blockdev-reopen", map[string]any{"options": []any{map[string]any{"driver": "raw", "node-name": "r", "file": "other"}}})
	d.MustFail("blockdev-del", map[string]any{"node-name": "rf"}, "GenericError", "Failed to find node with node-name='rf'")
}

// TestTransactionChain: a later action sees what an earlier one made.
func TestTransactionChain(t *testing.T) {
	d := start(t)
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", d.Path("a.qcow2"), "1M")
	d.Cmd("blockdev-add", map[string]any{"driver": "qcow2", "node-name": "a", "file": map[string]any{"driver": "file", "filename": d.Path("a.qcow2")}})
	startNBD(d)
	d.Cmd("block-export-add", map[string]any{"type": "nbd", "id": "e0", "node-name": "a"})
	d.Cmd("transaction", map[string]any{"actions": []any{
		map[string]any{"type": "blockdev-snapshot-sync", "data": map[string]any{"node-name": "a", "snapshot-file": d.Path("x.qcow2"), "snapshot-node-name": "x"}},
		map[string]any{"type": "blockdev-snapshot-sync", "data": map[string]any{"node-name": "x", "snapshot-file": d.Path("y.qcow2"), "snapshot-node-name": "y"}},
	}})
	var exps []map[string]any
	d.CmdInto("query-block-exports", nil, &exps)
	if len(exps) != 1 || exps[0]["node-name"] != "y" {
		t.Errorf("export after chained snapshots: %v", exps)
	}
}

// TestExportOrder: exports are listed newest first and deleted by
// nbd-server-stop in the order they were made.
func TestExportOrder(t *testing.T) {
	d := start(t)
	d.Cmd("blockdev-add", map[string]any{"driver": "null-co", "node-name": "n"})
	startNBD(d)
	for _, id := range []string{"zz", "aa", "mm"} {
		d.Cmd("block-export-add", map[string]any{"type": "nbd", "id": id, "node-name": "n", "name": id})
	}
	var exps []map[string]any
	d.CmdInto("query-block-exports", nil, &exps)
	var ids []string
	for _, e := range exps {
		ids = append(ids, e["id"].(string))
	}
	if strings.Join(ids, ",") != "mm,aa,zz" {
		t.Errorf("query-block-exports order %v, want mm,aa,zz", ids)
	}
	d.Events()
	if _, err := d.Try("nbd-server-stop", nil); err != nil {
		t.Fatal(err)
	}
	ids = nil
	for _, e := range d.Events() {
		ids = append(ids, e.Data["id"].(string))
	}
	if strings.Join(ids, ",") != "zz,aa,mm" {
		t.Errorf("BLOCK_EXPORT_DELETED order %v, want zz,aa,mm", ids)
	}
}

// TestBlockResizeRules: a backing image in use cannot be resized; a file
// node may take any size.
func TestBlockResizeRules(t *testing.T) {
	d := start(t)
	mkChain(t, d.Dir)
	d.Cmd("blockdev-add", map[string]any{"driver": "qcow2", "node-name": "base", "file": map[string]any{"driver": "file", "filename": d.Path("base.qcow2")}})
	d.Cmd("blockdev-add", map[string]any{"driver": "qcow2", "node-name": "mid", "file": map[string]any{"driver": "file", "filename": d.Path("mid.qcow2")}, "backing": "base"})
	if _, err := d.Try("block_resize", map[string]any{"node-name": "base", "size": 128 << 20}); err == nil {
		t.Errorf("resizing a backing image in use succeeded")
	}
	mkRaw(t, d.Path("f.raw"), "1M")
	d.Cmd("blockdev-add", map[string]any{"driver": "file", "node-name": "f", "filename": d.Path("f.raw")})
	d.Cmd("block_resize", map[string]any{"node-name": "f", "size": 1000})
}

// TestForceShareInherited: force-share on a format reaches the file it
// opens, so a read-only look at an image in use works.
func TestForceShareInherited(t *testing.T) {
	d := start(t)
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", d.Path("a.qcow2"), "1M")
	d.Cmd("blockdev-add", map[string]any{"driver": "qcow2", "node-name": "a", "file": map[string]any{"driver": "file", "filename": d.Path("a.qcow2")}})
	d.Cmd("blockdev-add", map[string]any{"driver": "qcow2", "node-name": "peek", "read-only": true, "force-share": true,
		"file": map[string]any{"driver": "file", "filename": d.Path("a.qcow2")}})
}

// TestPidfileLocked: a second daemon with the same pid file refuses to
// start.
func TestPidfileLocked(t *testing.T) {
	pidfile := shortSock(t, "x") + ".pid"
	d := start(t, "--pidfile", pidfile)
	out, err := exec.Command(daemonBin(), "--pidfile", pidfile).CombinedOutput()
	if err == nil {
		t.Errorf("second daemon with the same pid file started:\n%s", out)
	}
	d.Quit()
}
