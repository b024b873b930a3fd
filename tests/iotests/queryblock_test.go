package iotests

import (
	"encoding/json"
	"reflect"
	"testing"
)

// TestQueryBlockExports: blockd lists every export's backend as a device
// in query-block (the export id as device, inserted as qsd describes a
// named backend's node: the node's query-named-block-nodes entry with
// the chain's implicit filters skipped and the export's write cache) and
// in plain query-blockstats (the export's own request counters over the
// node's chain). qsd 7.2 answers [] to both: its export backends are
// anonymous.
func TestQueryBlockExports(t *testing.T) {
	d := start(t)
	mkChain(t, d.Dir)
	addChain(t, d, nil)
	mkRaw(t, d.Path("r.raw"), "1M")
	d.Cmd("blockdev-add", map[string]any{"driver": "raw", "node-name": "r", "file": map[string]any{"driver": "file", "node-name": "rf", "filename": d.Path("r.raw")}})
	sock := startNBD(d)
	d.Cmd("block-export-add", map[string]any{"type": "nbd", "id": "e0", "node-name": "top", "writable": true})
	d.Cmd("block-export-add", map[string]any{"type": "nbd", "id": "e1", "node-name": "r", "writethrough": true})
	if isQSD() {
		for _, q := range []string{"query-block", "query-blockstats"} {
			if got := string(d.Cmd(q, nil)); got != "[]" {
				t.Errorf("qsd's %s = %s", q, got)
			}
		}
		skipOnQSD(t, "query-block and query-blockstats list no export backends (they are anonymous)")
	}

	// While a mirror runs, its implicit filter sits between e0 and top.
	addTarget(t, d, "")
	d.Cmd("blockdev-mirror", map[string]any{"job-id": "m", "device": "top", "target": "tgt", "sync": "full", "speed": 1 << 20})
	run(t, "qemu-io", "-f", "raw", "-c", "write -P 0x5a 1M 64k", "-c", "write -P 0x5b 3M 64k", "-c", "read 0 4k", "-c", "flush", nbdURI(sock, "top"))

	var blocks []map[string]json.RawMessage
	d.CmdInto("query-block", nil, &blocks)
	if len(blocks) != 2 {
		t.Fatalf("query-block: %d entries, want 2", len(blocks))
	}
	var named []map[string]any
	d.CmdInto("query-named-block-nodes", nil, &named)
	byName := map[string]map[string]any{}
	for _, n := range named {
		byName[n["node-name"].(string)] = n
	}
	for i, want := range []struct {
		device, node string
		writeback    bool
		depth        float64
	}{{"e0", "top", true, 2}, {"e1", "r", false, 0}} {
		b := blocks[i]
		var head struct {
			Device    string `json:"device"`
			Type      string `json:"type"`
			Removable bool   `json:"removable"`
			Locked    bool   `json:"locked"`
		}
		raw, _ := json.Marshal(b)
		json.Unmarshal(raw, &head)
		if head.Device != want.device || head.Type != "unknown" || head.Removable || head.Locked {
			t.Errorf("entry %d: %s", i, raw)
		}
		for _, k := range []string{"qdev", "tray_open", "io-status"} {
			if _, ok := b[k]; ok {
				t.Errorf("%s has %s: %s", want.device, k, raw)
			}
		}
		var ins map[string]any
		if err := json.Unmarshal(b["inserted"], &ins); err != nil {
			t.Fatalf("%s inserted: %v", want.device, err)
		}
		if ins["node-name"] != want.node || ins["backing_file_depth"] != want.depth {
			t.Errorf("%s inserted: node %v depth %v", want.device, ins["node-name"], ins["backing_file_depth"])
		}
		if wb := ins["cache"].(map[string]any)["writeback"]; wb != want.writeback {
			t.Errorf("%s cache.writeback = %v", want.device, wb)
		}
		// Apart from the backend's write cache and the chain's depth
		// (implicit filters skipped), what query-named-block-nodes says of
		// the node; top's chain has no filter, so the depth matches too.
		ref := byName[want.node]
		ref["cache"].(map[string]any)["writeback"] = want.writeback
		if !reflect.DeepEqual(ins, ref) {
			a, _ := json.Marshal(ins)
			r, _ := json.Marshal(ref)
			t.Errorf("%s inserted differs from the node's entry:\n got %s\nwant %s", want.device, a, r)
		}
	}
	// The mirror's filter shows in query-named-block-nodes, not here.
	if _, ok := byName["top"]; !ok || len(named) < 8 {
		t.Errorf("query-named-block-nodes: %d nodes", len(named))
	}

	var stats []struct {
		Device   string         `json:"device"`
		NodeName string         `json:"node-name"`
		Stats    map[string]any `json:"stats"`
		Parent   *struct {
			NodeName string `json:"node-name"`
		} `json:"parent"`
		Backing *struct {
			NodeName string `json:"node-name"`
			Backing  *struct {
				NodeName string `json:"node-name"`
			} `json:"backing"`
		} `json:"backing"`
	}
	d.CmdInto("query-blockstats", nil, &stats)
	if len(stats) != 2 || stats[0].Device != "e0" || stats[1].Device != "e1" {
		t.Fatalf("query-blockstats: %+v", stats)
	}
	e0, e1 := stats[0], stats[1]
	if e0.NodeName != "top" || e0.Parent == nil || e0.Parent.NodeName != "top-file" ||
		e0.Backing == nil || e0.Backing.NodeName != "mid" || e0.Backing.Backing == nil || e0.Backing.Backing.NodeName != "base" {
		t.Errorf("e0's chain: %+v", e0)
	}
	// The export's own requests, not the mirror's reads of top (qemu-io
	// flushes once more when it closes).
	for k, v := range map[string]float64{"wr_operations": 2, "wr_bytes": 128 << 10, "rd_operations": 1, "rd_bytes": 4096, "flush_operations": 2} {
		if e0.Stats[k] != v {
			t.Errorf("e0 %s = %v, want %v", k, e0.Stats[k], v)
		}
	}
	if _, ok := e0.Stats["idle_time_ns"]; !ok {
		t.Errorf("e0 has served requests but no idle_time_ns: %v", e0.Stats)
	}
	if e1.NodeName != "r" || e1.Stats["rd_operations"] != 0.0 || e1.Stats["idle_time_ns"] != nil {
		t.Errorf("e1: %+v", e1)
	}

	d.Cmd("block-job-cancel", map[string]any{"device": "m", "force": true})
	waitStatus(t, d, "m", "null")
	d.DelExport("e0")
	var after []map[string]any
	d.CmdInto("query-block", nil, &after)
	if len(after) != 1 || after[0]["device"] != "e1" {
		t.Errorf("query-block after deleting e0: %v", after)
	}
}
