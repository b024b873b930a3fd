package iotests

import (
	"crypto/rand"
	"encoding/json"
	"os"
	"strings"
	"testing"
)

// compressSource makes src.qcow2 (16 MiB): 0x11 in [0, 4M), random data
// (which does not compress) in [4M, 5M), 0x22 in [8M, 10M), holes
// elsewhere, and adds it as node src.
func compressSource(t *testing.T, d *Daemon) {
	t.Helper()
	noise := make([]byte, 1<<20)
	if _, err := rand.Read(noise); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(d.Path("noise"), noise, 0o644); err != nil {
		t.Fatal(err)
	}
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", d.Path("src.qcow2"), "16M")
	run(t, "qemu-io", "-f", "qcow2", "-c", "write -P 0x11 0 4M", "-c", "write -s "+d.Path("noise")+" 4M 1M",
		"-c", "write -P 0x22 8M 2M", d.Path("src.qcow2"))
	addQcow2(d, "src", "src.qcow2", nil)
}

// checkCompressed checks a backup of compressSource's image: qemu-img
// check is clean and counts the compressible clusters as compressed, the
// image reads as the source, and qemu-img map shows the random clusters
// with host offsets (written plain) and the others without (compressed).
func checkCompressed(t *testing.T, d *Daemon, img string) {
	t.Helper()
	path := d.Path(img)
	var st map[string]any
	if err := json.Unmarshal([]byte(run(t, "qemu-img", "check", "--output=json", path)), &st); err != nil {
		t.Fatal(err)
	}
	// 6 MiB of patterns in 64 KiB clusters; the random MiB stays plain.
	if st["compressed-clusters"] != float64(96) || st["allocated-clusters"] != float64(112) || st["corruptions"] != nil && st["corruptions"] != float64(0) {
		t.Errorf("%s: qemu-img check: %v", img, st)
	}
	run(t, "qemu-img", "compare", path, d.Path("src.qcow2"))
	run(t, "qemu-io", "-r", "-f", "qcow2", "-c", "read -P 0x11 0 4M", "-c", "read -P 0x22 8M 2M", "-c", "read -P 0 10M 6M", path)
	var m []struct {
		Start  int64  `json:"start"`
		Length int64  `json:"length"`
		Data   bool   `json:"data"`
		Offset *int64 `json:"offset"`
	}
	if err := json.Unmarshal([]byte(run(t, "qemu-img", "map", "--output=json", path)), &m); err != nil {
		t.Fatal(err)
	}
	for _, e := range m {
		plain := e.Start >= 4<<20 && e.Start+e.Length <= 5<<20
		if e.Data && plain != (e.Offset != nil) {
			t.Errorf("%s: qemu-img map: %+v (plain data expected: %v)", img, e, plain)
		}
	}
}

// TestBackupCompress: blockdev-backup and drive-backup with compress=true
// write compressed clusters (zlib, or zstd when the target image says
// so), fall back to plain clusters for data that does not compress, and
// are refused with qsd's message for a target that cannot compress.
func TestBackupCompress(t *testing.T) {
	d := start(t)
	compressSource(t, d)
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", d.Path("zlib.qcow2"), "16M")
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-o", "compression_type=zstd", d.Path("zstd.qcow2"), "16M")
	run(t, "qemu-img", "create", "-q", "-f", "raw", d.Path("t.raw"), "16M")
	addQcow2(d, "zlib", "zlib.qcow2", nil)
	addQcow2(d, "zstd", "zstd.qcow2", nil)
	d.Cmd("blockdev-add", map[string]any{"driver": "raw", "node-name": "raw",
		"file": map[string]any{"driver": "file", "filename": d.Path("t.raw")}})
	// A throttle filter above the target passes compressed writes on.
	d.Cmd("object-add", map[string]any{"qom-type": "throttle-group", "id": "tg0", "limits": map[string]any{}})
	d.Cmd("blockdev-add", map[string]any{"driver": "throttle", "node-name": "thr", "throttle-group": "tg0", "file": "zstd"})
	before := edges(d)
	d.MustFail("blockdev-backup", map[string]any{"job-id": "r", "device": "src", "target": "raw", "sync": "full", "compress": true},
		"GenericError", "Compression is not supported for this drive ")
	if after := edges(d); len(after) != len(before) {
		t.Errorf("graph changed by a refused backup:\n%v\n%v", before, after)
	}
	for _, tgt := range []string{"zlib", "thr"} {
		d.Cmd("blockdev-backup", map[string]any{"job-id": "j-" + tgt, "device": "src", "target": tgt, "sync": "full", "compress": true})
		waitStatus(t, d, "j-"+tgt, "null")
	}
	d.Cmd("drive-backup", map[string]any{"job-id": "drive", "device": "src", "target": d.Path("drive.qcow2"),
		"format": "qcow2", "sync": "full", "compress": true})
	waitStatus(t, d, "drive", "null")
	d.Quit()
	for _, img := range []string{"zlib.qcow2", "zstd.qcow2", "drive.qcow2"} {
		checkCompressed(t, d, img)
	}
	var info struct {
		Spec struct {
			Data struct {
				Type string `json:"compression-type"`
			} `json:"data"`
		} `json:"format-specific"`
	}
	if err := json.Unmarshal([]byte(run(t, "qemu-img", "info", "--output=json", d.Path("zstd.qcow2"))), &info); err != nil || info.Spec.Data.Type != "zstd" {
		t.Errorf("zstd.qcow2: compression type %q (%v)", info.Spec.Data.Type, err)
	}
}

// TestCompressFilter: the compress filter turns every write into a
// compressed one (a partial cluster written whole), a rewrite of a
// cluster fails with EIO, it cannot be put over a node that does not
// write compressed data, and it cannot be reopened.
func TestCompressFilter(t *testing.T) {
	d := start(t)
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", d.Path("c.qcow2"), "4M")
	run(t, "qemu-img", "create", "-q", "-f", "raw", d.Path("c.raw"), "4M")
	addQcow2(d, "img", "c.qcow2", nil)
	d.Cmd("blockdev-add", map[string]any{"driver": "raw", "node-name": "raw",
		"file": map[string]any{"driver": "file", "filename": d.Path("c.raw"), "node-name": "raw-file"}})
	before := edges(d)
	d.MustFail("blockdev-add", map[string]any{"driver": "compress", "node-name": "c1", "file": "raw"},
		"GenericError", "Compression is not supported for underlying format: raw")
	d.MustFail("blockdev-add", map[string]any{"driver": "compress", "node-name": "c1", "file": "raw-file"},
		"GenericError", "Compression is not supported for underlying format: file")
	if after := edges(d); len(after) != len(before) {
		t.Errorf("graph changed by refused blockdev-adds:\n%v\n%v", before, after)
	}
	d.Cmd("blockdev-add", map[string]any{"driver": "compress", "node-name": "cmp", "file": "img"})
	if n := namedNodes(d, true)["cmp"]; n.Drv != "compress" {
		t.Errorf("query-named-block-nodes: cmp is %+v", n)
	}
	// qsd's compress driver cannot be reopened, even unchanged.
	d.MustFail("blockdev-reopen", map[string]any{"options": []any{map[string]any{"driver": "compress", "node-name": "cmp", "file": "img"}}},
		"GenericError", "Block format 'compress' used by node 'cmp' does not support reopening files")
	var nodes []struct {
		Name  string `json:"node-name"`
		Image struct {
			Format      string `json:"format"`
			ClusterSize int64  `json:"cluster-size"`
		} `json:"image"`
	}
	d.CmdInto("query-named-block-nodes", map[string]any{"flat": true}, &nodes)
	for _, n := range nodes {
		if n.Name == "cmp" && (n.Image.Format != "compress" || n.Image.ClusterSize != 65536) {
			t.Errorf("query-named-block-nodes: cmp's image is %+v", n.Image)
		}
	}
	sock := startNBD(d)
	d.Cmd("block-export-add", map[string]any{"type": "nbd", "id": "exp0", "node-name": "cmp", "writable": true})
	uri := nbdURI(sock, "cmp")
	run(t, "qemu-io", "-f", "raw", "-c", "write -P 0x33 0 1M", "-c", "write -P 0x44 1049088 1000", uri)
	out, _ := runErr("qemu-io", "-f", "raw", "-c", "write -P 0x55 0 64k", uri)
	if !strings.Contains(out, "Input/output error") {
		t.Errorf("rewriting a compressed cluster: %s", out)
	}
	run(t, "qemu-io", "-f", "raw", "-c", "read -P 0x33 0 1M", "-c", "read -P 0 1M 512", "-c", "read -P 0x44 1049088 1000", uri)
	d.DelExport("exp0")
	d.Quit()
	var st map[string]any
	if err := json.Unmarshal([]byte(run(t, "qemu-img", "check", "--output=json", d.Path("c.qcow2"))), &st); err != nil {
		t.Fatal(err)
	}
	if st["compressed-clusters"] != float64(17) || st["allocated-clusters"] != float64(17) {
		t.Errorf("qemu-img check: %v", st)
	}
	run(t, "qemu-io", "-r", "-f", "qcow2", "-c", "read -P 0x33 0 1M", "-c", "read -P 0x44 1049088 1000", "-c", "read -P 0 1050088 3144216", d.Path("c.qcow2"))
}
