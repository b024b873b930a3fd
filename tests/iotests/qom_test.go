package iotests

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"
)

// qomList returns qom-list's properties as sorted "name:type" strings
// (qsd lists them in hash-table order, which no client can rely on).
func qomList(t *testing.T, d *Daemon, path string) []string {
	t.Helper()
	var props []struct{ Name, Type string }
	if err := json.Unmarshal(d.Cmd("qom-list", map[string]any{"path": path}), &props); err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, p := range props {
		out = append(out, p.Name+":"+p.Type)
	}
	slices.Sort(out)
	return out
}

// TestQOMList: qom-list over /objects and the objects in it, as qsd.
func TestQOMList(t *testing.T) {
	d := start(t)
	d.Cmd("object-add", map[string]any{"qom-type": "iothread", "id": "io0"})
	d.Cmd("object-add", map[string]any{"qom-type": "throttle-group", "id": "tg0", "limits": map[string]any{"iops-total": 100}})
	if root := qomList(t, d, "/"); !slices.Contains(root, "objects:child<container>") || !slices.Contains(root, "type:string") {
		t.Errorf("qom-list /: %v", root)
	}
	want := map[string]string{
		"/objects":     "io0:child<iothread> tg0:child<throttle-group> type:string",
		"/objects/io0": "aio-max-batch:int poll-grow:int poll-max-ns:int poll-shrink:int thread-pool-max:int thread-pool-min:int type:string",
		"/objects/tg0": "limits:ThrottleLimits type:string x-bps-read-max-length:int x-bps-read-max:int x-bps-read:int " +
			"x-bps-total-max-length:int x-bps-total-max:int x-bps-total:int x-bps-write-max-length:int x-bps-write-max:int x-bps-write:int " +
			"x-iops-read-max-length:int x-iops-read-max:int x-iops-read:int x-iops-size:int x-iops-total-max-length:int x-iops-total-max:int " +
			"x-iops-total:int x-iops-write-max-length:int x-iops-write-max:int x-iops-write:int",
	}
	for path, w := range want {
		wl := strings.Fields(w)
		slices.Sort(wl)
		if got := qomList(t, d, path); !slices.Equal(got, wl) {
			t.Errorf("qom-list %s:\n got %v\nwant %v", path, got, wl)
		}
	}
	d.MustFail("qom-list", map[string]any{"path": "/nope"}, "DeviceNotFound", "Device '/nope' not found")
	d.MustFail("qom-list", map[string]any{"path": ""}, "GenericError", "Path '' is ambiguous")
}
