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

type typeInfo struct {
	Name     string `json:"name"`
	Abstract bool   `json:"abstract"`
	Parent   string `json:"parent"`
}

// qomTypes runs qom-list-types and returns its entries by name.
func qomTypes(t *testing.T, d *Daemon, args map[string]any) map[string]typeInfo {
	t.Helper()
	var list []typeInfo
	var a any // no "arguments" at all, not null
	if args != nil {
		a = args
	}
	d.CmdInto("qom-list-types", a, &list)
	out := map[string]typeInfo{}
	for _, ti := range list {
		out[ti.Name] = ti
	}
	return out
}

// TestQOMListTypes: qom-list-types over the types blockd has, each as qsd
// reports it (qsd has more types; blockd lists only its own).
func TestQOMListTypes(t *testing.T) {
	d := start(t)
	concrete := []typeInfo{{"container", false, "object"}, {"iothread", false, "event-loop-base"}, {"throttle-group", false, "object"},
		{"chardev-file", false, "chardev-fd"}, {"chardev-memory", false, "chardev-ringbuf"}, {"chardev-null", false, "chardev"},
		{"chardev-ringbuf", false, "chardev"}, {"chardev-socket", false, "chardev"}, {"chardev-stdio", false, "chardev-fd"}}
	abstract := []typeInfo{{"object", true, ""}, {"interface", true, ""}, {"user-creatable", true, "interface"},
		{"chardev", true, "object"}, {"chardev-fd", true, "chardev"}, {"event-loop-base", true, "object"}}
	for _, c := range []struct {
		args map[string]any
		want []typeInfo // blockd's types in the answer
	}{
		{nil, concrete},
		{map[string]any{"abstract": true}, append(slices.Clone(concrete), abstract...)},
		{map[string]any{"implements": "chardev-ringbuf", "abstract": true}, []typeInfo{{"chardev-ringbuf", false, "chardev"}, {"chardev-memory", false, "chardev-ringbuf"}}},
		{map[string]any{"implements": "chardev-fd"}, []typeInfo{{"chardev-stdio", false, "chardev-fd"}, {"chardev-file", false, "chardev-fd"}}},
		{map[string]any{"implements": "user-creatable"}, []typeInfo{{"iothread", false, "event-loop-base"}, {"throttle-group", false, "object"}}},
		{map[string]any{"implements": "interface", "abstract": true}, []typeInfo{{"interface", true, ""}, {"user-creatable", true, "interface"},
			{"event-loop-base", true, "object"}, {"iothread", false, "event-loop-base"}, {"throttle-group", false, "object"}}},
		{map[string]any{"implements": "event-loop-base", "abstract": false}, []typeInfo{{"iothread", false, "event-loop-base"}}},
		{map[string]any{"implements": "nope"}, nil},
	} {
		got := qomTypes(t, d, c.args)
		for _, w := range c.want {
			if g, ok := got[w.Name]; !ok || g != w {
				t.Errorf("qom-list-types %v: %s is %+v (listed %v), want %+v", c.args, w.Name, g, ok, w)
			}
		}
		if isQSD() {
			continue
		}
		if len(got) != len(c.want) {
			t.Errorf("qom-list-types %v: %d types, want %d: %v", c.args, len(got), len(c.want), got)
		}
	}
	// Interfaces are not what "object" implements; abstract types stay
	// out unless asked for.
	objects := qomTypes(t, d, map[string]any{"implements": "object"})
	for _, name := range []string{"interface", "user-creatable", "object", "chardev"} {
		if _, ok := objects[name]; ok {
			t.Errorf("qom-list-types implements=object lists %s", name)
		}
	}
}

// TestQOMListProperties: each type's properties as qsd lists them.
func TestQOMListProperties(t *testing.T) {
	d := start(t)
	iothread := "type:string aio-max-batch:int poll-grow:int poll-max-ns:int poll-shrink:int thread-pool-max:int thread-pool-min:int"
	for typ, w := range map[string]string{
		"object":          "type:string",
		"container":       "type:string",
		"chardev":         "type:string",
		"chardev-ringbuf": "type:string",
		"chardev-memory":  "type:string",
		"chardev-stdio":   "type:string",
		"chardev-socket":  "type:string connected:bool addr:SocketAddress",
		"event-loop-base": "type:string aio-max-batch:int thread-pool-max:int thread-pool-min:int",
		"iothread":        iothread,
		"throttle-group": "type:string limits:ThrottleLimits x-bps-read-max-length:int x-bps-read-max:int x-bps-read:int " +
			"x-bps-total-max-length:int x-bps-total-max:int x-bps-total:int x-bps-write-max-length:int x-bps-write-max:int x-bps-write:int " +
			"x-iops-read-max-length:int x-iops-read-max:int x-iops-read:int x-iops-size:int x-iops-total-max-length:int x-iops-total-max:int " +
			"x-iops-total:int x-iops-write-max-length:int x-iops-write-max:int x-iops-write:int",
	} {
		var props []struct{ Name, Type string }
		d.CmdInto("qom-list-properties", map[string]any{"typename": typ}, &props)
		var got []string
		for _, p := range props {
			got = append(got, p.Name+":"+p.Type)
		}
		slices.Sort(got)
		want := strings.Fields(w)
		slices.Sort(want)
		if !slices.Equal(got, want) {
			t.Errorf("qom-list-properties %s:\n got %v\nwant %v", typ, got, want)
		}
	}
	// An instance lists what its type does.
	d.Cmd("object-add", map[string]any{"qom-type": "iothread", "id": "io0"})
	if got, want := qomList(t, d, "/objects/io0"), strings.Fields(iothread); !slices.Equal(got, sorted(want)) {
		t.Errorf("qom-list of an iothread: %v", got)
	}
	d.MustFail("qom-list-properties", map[string]any{"typename": "nope"}, "DeviceNotFound", "Class 'nope' not found")
	d.MustFail("qom-list-properties", map[string]any{"typename": ""}, "DeviceNotFound", "Class '' not found")
	for _, iface := range []string{"interface", "user-creatable"} {
		d.MustFail("qom-list-properties", map[string]any{"typename": iface}, "GenericError", "Parameter 'typename' expects a QOM type")
	}
	d.MustFail("qom-list-properties", map[string]any{}, "GenericError", "Parameter 'typename' is missing")
	t.Run("types blockd lacks", func(t *testing.T) {
		skipOnQSD(t, "qsd has secret objects")
		d.MustFail("qom-list-properties", map[string]any{"typename": "secret"}, "DeviceNotFound", "Class 'secret' not found")
	})
}

func sorted(s []string) []string {
	s = slices.Clone(s)
	slices.Sort(s)
	return s
}
