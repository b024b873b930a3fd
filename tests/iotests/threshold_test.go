package iotests

import (
	"testing"
	"time"
)

// writeThreshold is a node's write_threshold in query-named-block-nodes.
func writeThreshold(t *testing.T, d *Daemon, node string) int64 {
	t.Helper()
	n, ok := namedNodes(d, true)[node]
	if !ok {
		t.Fatalf("no node %s", node)
	}
	return n.WriteThreshold
}

// TestWriteThreshold: block-set-write-threshold arms BLOCK_WRITE_THRESHOLD
// on a format node (guest offsets) and on its file node (host offsets, a
// thin volume filling up); it fires once, before the write, and disarms.
func TestWriteThreshold(t *testing.T) {
	d := start(t)
	img := d.Path("disk.qcow2")
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", img, "64M")
	nsock := shortSock(t, "nbd")
	d.Cmd("blockdev-add", map[string]any{"driver": "qcow2", "node-name": "disk",
		"file": map[string]any{"driver": "file", "node-name": "disk-file", "filename": img}})
	d.Cmd("nbd-server-start", map[string]any{"addr": map[string]any{"type": "unix", "data": map[string]any{"path": nsock}}})
	d.Cmd("block-export-add", map[string]any{"type": "nbd", "id": "e0", "node-name": "disk", "writable": true})

	d.Cmd("block-set-write-threshold", map[string]any{"node-name": "disk", "write-threshold": 2 << 20})
	d.Cmd("block-set-write-threshold", map[string]any{"node-name": "disk-file", "write-threshold": 1 << 20})
	if g, f := writeThreshold(t, d, "disk"), writeThreshold(t, d, "disk-file"); g != 2<<20 || f != 1<<20 {
		t.Fatalf("write_threshold after set: disk %d, disk-file %d", g, f)
	}
	d.ClearHistory()
	// Below the guest threshold; the new clusters land past 1 MiB in the
	// file only from the second or so on: the file's event fires, the
	// format's does not.
	run(t, "qemu-io", "-f", "raw", "-c", "write -P 0x11 0 2M", nbdURI(nsock, "disk"))
	// Past the guest threshold by 1 MiB + 64 KiB, twice: one event.
	run(t, "qemu-io", "-f", "raw", "-c", "write -P 0x22 3M 64k", "-c", "write -P 0x22 4M 64k", nbdURI(nsock, "disk"))
	if !d.WaitHistory(func(ev []Event) bool { return len(eventsNamed(ev, "BLOCK_WRITE_THRESHOLD")) >= 2 }, 10*time.Second) {
		t.Fatalf("events: %v", eventsNamed(d.History(), "BLOCK_WRITE_THRESHOLD"))
	}
	got := map[string]map[string]any{}
	for _, e := range eventsNamed(d.History(), "BLOCK_WRITE_THRESHOLD") {
		name, _ := e.Data["node-name"].(string)
		if got[name] != nil {
			t.Errorf("second event for %s: %v", name, e.Data)
		}
		got[name] = e.Data
	}
	if e := got["disk"]; e == nil || e["write-threshold"] != float64(2<<20) || e["amount-exceeded"] != float64(1<<20+64<<10) {
		t.Errorf("event of the format node: %v", e)
	}
	if e := got["disk-file"]; e == nil || e["write-threshold"] != float64(1<<20) || e["amount-exceeded"].(float64) <= 0 {
		t.Errorf("event of the file node: %v", e)
	}
	if g, f := writeThreshold(t, d, "disk"), writeThreshold(t, d, "disk-file"); g != 0 || f != 0 {
		t.Errorf("write_threshold after firing: disk %d, disk-file %d", g, f)
	}

	// 0 disarms; errors leave the threshold alone.
	d.Cmd("block-set-write-threshold", map[string]any{"node-name": "disk", "write-threshold": 8 << 20})
	d.Cmd("block-set-write-threshold", map[string]any{"node-name": "disk", "write-threshold": 0})
	d.ClearHistory()
	run(t, "qemu-io", "-f", "raw", "-c", "write -P 0x33 16M 64k", nbdURI(nsock, "disk"))
	d.MustFail("block-set-write-threshold", map[string]any{"node-name": "nope", "write-threshold": 1}, "GenericError", "Device 'nope' not found")
	d.MustFail("block-set-write-threshold", map[string]any{"node-name": "disk"}, "GenericError", "Parameter 'write-threshold' is missing")
	// compat(qsd-7.2): a negative threshold is taken as the uint64 it
	// wraps to, which no write reaches; queries show it as an int again.
	d.Cmd("block-set-write-threshold", map[string]any{"node-name": "disk", "write-threshold": -1})
	if got := writeThreshold(t, d, "disk"); got != -1 {
		t.Errorf("write_threshold after -1: %v", got)
	}
	if ev := eventsNamed(d.History(), "BLOCK_WRITE_THRESHOLD"); len(ev) != 0 {
		t.Errorf("events with the threshold disarmed: %v", ev)
	}
	run(t, "qemu-io", "-f", "raw", "-c", "read -P 0x22 3M 64k", "-c", "read -P 0x33 16M 64k", nbdURI(nsock, "disk"))
	d.DelExport("e0")
	d.Quit()
	run(t, "qemu-img", "check", "-q", img)
}

func eventsNamed(ev []Event, name string) []Event {
	var out []Event
	for _, e := range ev {
		if e.Event == name {
			out = append(out, e)
		}
	}
	return out
}
