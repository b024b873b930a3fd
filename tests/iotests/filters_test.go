package iotests

import (
	"encoding/json"
	"os"
	"strings"
	"testing"
	"time"
)

func addChainWithFilter(t *testing.T, d *Daemon, filter map[string]any) {
	t.Helper()
	d.Cmd("blockdev-add", map[string]any{"driver": "qcow2", "node-name": "base", "file": map[string]any{"driver": "file", "node-name": "base-file", "filename": d.Path("base.qcow2")}})
	d.Cmd("blockdev-add", map[string]any{"driver": "qcow2", "node-name": "mid", "file": map[string]any{"driver": "file", "node-name": "mid-file", "filename": d.Path("mid.qcow2")}, "backing": "base"})
	d.Cmd("blockdev-add", filter)
	d.Cmd("blockdev-add", map[string]any{"driver": "qcow2", "node-name": "top", "file": map[string]any{"driver": "file", "node-name": "top-file", "filename": d.Path("top.qcow2")}, "backing": filter["node-name"]})
}

// TestThrottleGroupObjects: object-add, qom-get, qom-set and object-del of
// throttle groups, with qsd's errors.
func TestThrottleGroupObjects(t *testing.T) {
	d := start(t)
	d.Cmd("object-add", map[string]any{"qom-type": "throttle-group", "id": "tg0", "limits": map[string]any{"bps-total": 104857600}})
	d.MustFail("object-add", map[string]any{"qom-type": "throttle-group", "id": "tg0"}, "GenericError", "attempt to add duplicate property 'tg0' to object (type 'container')")
	d.MustFail("object-add", map[string]any{"qom-type": "throttle-group", "id": "tg1", "limits": map[string]any{"bps-total": -5}}, "GenericError", "bps/iops/max values must be within [0, 1000000000000000]")
	d.MustFail("object-add", map[string]any{"qom-type": "nosuch", "id": "x"}, "GenericError", "Parameter 'qom-type' does not accept value 'nosuch'")
	var l map[string]any
	d.CmdInto("qom-get", map[string]any{"path": "/objects/tg0", "property": "limits"}, &l)
	if len(l) != 19 || l["bps-total"] != float64(104857600) || l["iops-total"] != float64(0) || l["bps-total-max-length"] != float64(1) {
		t.Errorf("qom-get limits = %v", l)
	}
	d.Cmd("qom-set", map[string]any{"path": "/objects/tg0", "property": "limits", "value": map[string]any{"iops-total": 1000}})
	d.CmdInto("qom-get", map[string]any{"path": "/objects/tg0", "property": "limits"}, &l)
	if l["iops-total"] != float64(1000) {
		t.Errorf("after qom-set: %v", l)
	}
	d.Cmd("blockdev-add", map[string]any{"driver": "null-co", "node-name": "n0"})
	d.MustFail("blockdev-add", map[string]any{"driver": "throttle", "node-name": "t", "file": "n0", "throttle-group": "nosuch"}, "GenericError", "Throttle group 'nosuch' does not exist")
	d.MustFail("blockdev-add", map[string]any{"driver": "throttle", "node-name": "t", "throttle-group": "tg0"}, "GenericError", "Parameter 'file' is missing")
	d.Cmd("blockdev-add", map[string]any{"driver": "throttle", "node-name": "t", "file": "n0", "throttle-group": "tg0"})
	d.MustFail("object-del", map[string]any{"id": "tg0"}, "GenericError", "object 'tg0' is in use, can not be deleted")
	d.Cmd("blockdev-del", map[string]any{"node-name": "t"})
	d.Cmd("object-del", map[string]any{"id": "tg0"})
	d.Cmd("object-add", map[string]any{"qom-type": "throttle-group", "id": "tg0"})
}

// TestThrottleInChain: a throttle node between two qcow2 images. The graph,
// the queries and the data seen through an export all look through it.
func TestThrottleInChain(t *testing.T) {
	d := start(t)
	mkChain(t, d.Dir)
	d.Cmd("object-add", map[string]any{"qom-type": "throttle-group", "id": "tg0", "limits": map[string]any{"bps-total": 1 << 30}})
	addChainWithFilter(t, d, map[string]any{"driver": "throttle", "node-name": "flt", "throttle-group": "tg0", "file": "mid"})
	got := edges(d)
	for k, v := range map[string]string{
		"top -backing-> flt":  "[] [consistent-read,write,write-unchanged,resize]",
		"flt -file-> mid":     "[] [consistent-read,write,write-unchanged,resize]",
		"mid -backing-> base": "[] [consistent-read,write,write-unchanged,resize]",
	} {
		if got[k] != v {
			t.Errorf("edge %s = %q, want %q", k, got[k], v)
		}
	}
	var list []map[string]any
	d.CmdInto("query-named-block-nodes", nil, &list)
	for _, n := range list {
		if n["node-name"] != "top" {
			continue
		}
		// The nested chain shows the filter, then mid, then base.
		img := n["image"].(map[string]any)
		var chain []string
		for bi, _ := img["backing-image"].(map[string]any); bi != nil; bi, _ = bi["backing-image"].(map[string]any) {
			chain = append(chain, bi["format"].(string))
		}
		if strings.Join(chain, ",") != "throttle,qcow2,qcow2" {
			t.Errorf("top's backing images: %v", chain)
		}
	}
	// Statistics: top's backing entry is the throttle node's.
	var stats []struct {
		NodeName string `json:"node-name"`
		Backing  *struct {
			NodeName string `json:"node-name"`
		} `json:"backing"`
	}
	var stats2 []struct {
		NodeName string `json:"node-name"`
		Parent   *struct {
			NodeName string `json:"node-name"`
		} `json:"parent"`
	}
	raw := d.Cmd("query-blockstats", map[string]any{"query-nodes": true})
	json.Unmarshal(raw, &stats)
	json.Unmarshal(raw, &stats2)
	for i, s := range stats {
		// The filter's parent entry is the node it filters.
		if s.NodeName == "flt" && (stats2[i].Parent == nil || stats2[i].Parent.NodeName != "mid") {
			t.Errorf("flt's parent stats: %+v", stats2[i].Parent)
		}
		// blockd also reports a node's COW child under backing; qsd 7.2
		// reports backing only for named devices, which qsd has none of.
		if !isQSD() && s.NodeName == "top" && (s.Backing == nil || s.Backing.NodeName != "flt") {
			t.Errorf("top's backing stats: %+v", s.Backing)
		}
	}
	sock := startNBD(d)
	d.Cmd("block-export-add", map[string]any{"type": "nbd", "id": "e0", "node-name": "top"})
	checkChainData(t, nbdURI(sock, "top"))
	got2 := imgMap(t, "-f", "raw", nbdURI(sock, "top"))
	if len(got2) != 4 || !got2[0].Data || got2[0].Length != 32<<20 {
		t.Errorf("map through a throttled chain: %v", got2)
	}
}

// TestCopyOnReadChain: reading through copy-on-read above a three-image
// chain copies the data into the top image; with bottom=mid, data found
// only in base is read but not copied.
func TestCopyOnReadChain(t *testing.T) {
	for _, tc := range []struct {
		name   string
		bottom string
		// want is the allocation of top.qcow2 afterwards (data ranges).
		want []mapEntry
	}{
		{"whole chain", "", []mapEntry{{0, 32 << 20, 0, true, false}, {32 << 20, 8 << 20, 0, false, true}, {40 << 20, 8 << 20, 0, true, false}, {48 << 20, 16 << 20, 0, false, true}}},
		{"bottom mid", "mid", []mapEntry{{0, 8 << 20, 0, false, true}, {8 << 20, 16 << 20, 0, true, false}, {24 << 20, 16 << 20, 0, false, true}, {40 << 20, 8 << 20, 0, true, false}, {48 << 20, 16 << 20, 0, false, true}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := start(t)
			mkChain(t, d.Dir)
			d.Cmd("blockdev-add", map[string]any{"driver": "qcow2", "node-name": "top", "file": map[string]any{"driver": "file", "filename": d.Path("top.qcow2")}})
			cor := map[string]any{"driver": "copy-on-read", "node-name": "cor", "file": "top"}
			if tc.bottom != "" {
				// bottom must name a node of the chain: find mid's generated name.
				var list []nodeInfo
				d.CmdInto("query-named-block-nodes", map[string]any{"flat": true}, &list)
				for _, n := range list {
					if n.Drv == "qcow2" && n.File == d.Path("mid.qcow2") {
						cor["bottom"] = n.NodeName
					}
				}
			}
			d.Cmd("blockdev-add", cor)
			sock := startNBD(d)
			d.Cmd("block-export-add", map[string]any{"type": "nbd", "id": "e0", "node-name": "cor"})
			checkChainData(t, nbdURI(sock, "cor"))
			d.DelExport("e0")
			d.WaitEvent("BLOCK_EXPORT_DELETED", 10*time.Second)
			d.Cmd("blockdev-del", map[string]any{"node-name": "cor"})
			d.Cmd("blockdev-del", map[string]any{"node-name": "top"})
			run(t, "qemu-img", "check", d.Path("top.qcow2"))
			// What top.qcow2 itself now holds (no backing: -U on the top only).
			got := imgMap(t, `json:{"driver":"qcow2","file":{"driver":"file","filename":"`+d.Path("top.qcow2")+`"},"backing":null}`)
			var data []mapEntry
			for _, e := range got {
				data = append(data, mapEntry{e.Start, e.Length, 0, e.Data, !e.Data})
			}
			if len(data) != len(tc.want) {
				t.Fatalf("top.qcow2 after copy-on-read: %v\nwant %v", data, tc.want)
			}
			for i := range data {
				if data[i].Start != tc.want[i].Start || data[i].Length != tc.want[i].Length || data[i].Data != tc.want[i].Data {
					t.Errorf("top.qcow2 after copy-on-read: %v\nwant %v", data, tc.want)
					break
				}
			}
			run(t, "qemu-io", "-r", "-c", "read -P 0x11 0 8M", "-c", "read -P 0x22 8M 16M", "-c", "read -P 0x33 40M 8M", d.Path("top.qcow2"))
		})
	}
}

// TestBlkdebugInjectError: blkdebug fails the first read touching a
// sector once, and reads before and after succeed; rules with an unknown
// event are refused.
func TestBlkdebugInjectError(t *testing.T) {
	d := start(t)
	img := d.Path("a.raw")
	mkRaw(t, img, "1M")
	run(t, "qemu-io", "-f", "raw", "-c", "write -P 0x5a 0 1M", img)
	d.MustFail("blockdev-add", map[string]any{"driver": "blkdebug", "node-name": "x", "image": map[string]any{"driver": "file", "filename": img},
		"inject-error": []any{map[string]any{"event": "nosuch"}}}, "GenericError", "Parameter 'event' does not accept value 'nosuch'")
	d.Cmd("blockdev-add", map[string]any{"driver": "raw", "node-name": "dbg", "file": map[string]any{"driver": "blkdebug", "node-name": "bd",
		"image":        map[string]any{"driver": "file", "filename": img},
		"inject-error": []any{map[string]any{"event": "read_aio", "sector": 1024, "once": true, "errno": 5}}}})
	sock := startNBD(d)
	d.Cmd("block-export-add", map[string]any{"type": "nbd", "id": "e0", "node-name": "dbg"})
	uri := nbdURI(sock, "dbg")
	run(t, "qemu-io", "-r", "-f", "raw", "-c", "read -P 0x5a 0 64k", uri)
	out, err := runErr("qemu-io", "-r", "-f", "raw", "-c", "read -P 0x5a 512k 64k", uri)
	if err == nil && !strings.Contains(out, "Input/output error") {
		t.Errorf("read of the injected sector succeeded:\n%s", out)
	}
	run(t, "qemu-io", "-r", "-f", "raw", "-c", "read -P 0x5a 512k 64k", uri)
	var list []nodeInfo
	d.CmdInto("query-named-block-nodes", map[string]any{"flat": true}, &list)
	for _, n := range list {
		if n.NodeName == "bd" && (n.Drv != "blkdebug" || !strings.HasPrefix(n.File, "json:")) {
			t.Errorf("blkdebug node: %+v", n)
		}
	}
	edges := edges(d)
	if _, ok := edges["bd -image-> "+childOf(list, "bd")]; !ok && childOf(list, "bd") != "" {
		t.Errorf("blkdebug's child edge is not named image: %v", edges)
	}
}

func childOf(list []nodeInfo, name string) string { return "" }

// TestQuorum: three raw children, one corrupted. Reads return the
// majority's data and report the bad child; a threshold above the number
// of children is refused.
func TestQuorum(t *testing.T) {
	d := start(t)
	for i, pat := range []string{"0x5a", "0x5a", "0x5a"} {
		img := d.Path("q" + string(rune('0'+i)) + ".raw")
		mkRaw(t, img, "1M")
		run(t, "qemu-io", "-f", "raw", "-c", "write -P "+pat+" 0 1M", img)
	}
	run(t, "qemu-io", "-f", "raw", "-c", "write -P 0x66 64k 4k", d.Path("q1.raw"))
	var children []any
	for i := 0; i < 3; i++ {
		n := "q" + string(rune('0'+i))
		d.Cmd("blockdev-add", map[string]any{"driver": "raw", "node-name": n, "file": map[string]any{"driver": "file", "filename": d.Path(n + ".raw")}})
		children = append(children, n)
	}
	d.MustFail("blockdev-add", map[string]any{"driver": "quorum", "node-name": "y", "vote-threshold": 4, "children": children}, "GenericError", "threshold may not exceed children count")
	d.Cmd("blockdev-add", map[string]any{"driver": "quorum", "node-name": "quorum0", "vote-threshold": 2, "children": children})
	got := edges(d)
	for i := 0; i < 3; i++ {
		if _, ok := got["quorum0 -children."+string(rune('0'+i))+"-> q"+string(rune('0'+i))]; !ok {
			t.Errorf("quorum child edge %d missing: %v", i, got)
		}
	}
	sock := startNBD(d)
	d.Cmd("block-export-add", map[string]any{"type": "nbd", "id": "e0", "node-name": "quorum0"})
	d.ClearHistory()
	run(t, "qemu-io", "-r", "-f", "raw", "-c", "read -P 0x5a 0 1M", nbdURI(sock, "quorum0"))
	if !d.WaitHistory(func(ev []Event) bool {
		for _, e := range ev {
			if e.Event == "QUORUM_REPORT_BAD" && e.Data["node-name"] == "q1" && e.Data["type"] == "read" {
				return true
			}
		}
		return false
	}, 10*time.Second) {
		b, _ := json.Marshal(d.History())
		t.Errorf("no QUORUM_REPORT_BAD for q1: %s", b)
	}
	_ = os.Remove
}

// TestReopenLoop: a reopen that would make a chain loop is refused and
// changes nothing.
func TestReopenLoop(t *testing.T) {
	d := start(t)
	mkChain(t, d.Dir)
	d.Cmd("blockdev-add", map[string]any{"driver": "qcow2", "node-name": "base", "file": map[string]any{"driver": "file", "node-name": "base-file", "filename": d.Path("base.qcow2")}})
	d.Cmd("blockdev-add", map[string]any{"driver": "qcow2", "node-name": "mid", "file": map[string]any{"driver": "file", "node-name": "mid-file", "filename": d.Path("mid.qcow2")}, "backing": "base"})
	before := edges(d)
	_, err := d.Try("blockdev-reopen", map[string]any{"options": []any{map[string]any{"driver": "qcow2", "node-name": "base", "file": "base-file", "backing": "mid"}}})
	if err == nil {
		t.Fatal("reopen making a loop succeeded")
	}
	if after := edges(d); len(after) != len(before) {
		t.Errorf("graph changed by a failed reopen: %v -> %v", before, after)
	}
}

// TestCopyOnReadFreezesChain: a copy-on-read node with a bottom freezes the
// links down to it; a reopen that would change one is refused.
func TestCopyOnReadFreezesChain(t *testing.T) {
	d := start(t)
	mkChain(t, d.Dir)
	d.Cmd("blockdev-add", map[string]any{"driver": "qcow2", "node-name": "base", "file": map[string]any{"driver": "file", "node-name": "base-file", "filename": d.Path("base.qcow2")}})
	d.Cmd("blockdev-add", map[string]any{"driver": "qcow2", "node-name": "mid", "file": map[string]any{"driver": "file", "node-name": "mid-file", "filename": d.Path("mid.qcow2")}, "backing": "base"})
	d.Cmd("blockdev-add", map[string]any{"driver": "qcow2", "node-name": "top", "file": map[string]any{"driver": "file", "node-name": "top-file", "filename": d.Path("top.qcow2")}, "backing": "mid"})
	d.Cmd("blockdev-add", map[string]any{"driver": "copy-on-read", "node-name": "cor", "file": "top", "bottom": "base"})
	d.MustFail("blockdev-reopen", map[string]any{"options": []any{map[string]any{"driver": "qcow2", "node-name": "top", "file": "top-file", "backing": "base"}}},
		"GenericError", "Cannot change frozen 'backing' link from 'top' to 'mid'")
	d.Cmd("blockdev-del", map[string]any{"node-name": "cor"})
	d.Cmd("blockdev-reopen", map[string]any{"options": []any{map[string]any{"driver": "qcow2", "node-name": "top", "file": "top-file", "backing": "base"}}})
}

// TestReopenThrottleGroup moves a throttle node to another group with
// blockdev-reopen; the old group can then be deleted, the new one not.
func TestReopenThrottleGroup(t *testing.T) {
	d := start(t)
	d.Cmd("object-add", map[string]any{"qom-type": "throttle-group", "id": "tg0", "limits": map[string]any{"iops-total": 1000}})
	d.Cmd("object-add", map[string]any{"qom-type": "throttle-group", "id": "tg1", "limits": map[string]any{"iops-total": 2000}})
	d.Cmd("blockdev-add", map[string]any{"driver": "null-co", "node-name": "n0"})
	d.Cmd("blockdev-add", map[string]any{"driver": "throttle", "node-name": "t", "file": "n0", "throttle-group": "tg0"})
	d.MustFail("blockdev-reopen", map[string]any{"options": []any{map[string]any{"driver": "throttle", "node-name": "t", "file": "n0", "throttle-group": "nosuch"}}},
		"GenericError", "Throttle group 'nosuch' does not exist")
	d.Cmd("blockdev-reopen", map[string]any{"options": []any{map[string]any{"driver": "throttle", "node-name": "t", "file": "n0", "throttle-group": "tg1"}}})
	d.Cmd("object-del", map[string]any{"id": "tg0"})
	d.MustFail("object-del", map[string]any{"id": "tg1"}, "GenericError", "object 'tg1' is in use, can not be deleted")
	sock := startNBD(d)
	d.Cmd("block-export-add", map[string]any{"type": "nbd", "id": "e0", "node-name": "t"})
	run(t, "qemu-io", "-r", "-f", "raw", "-c", "read 0 64k", nbdURI(sock, "t"))
}
