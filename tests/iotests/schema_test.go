package iotests

import (
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/blockd/blockd/pkg/qmp"
)

// schema is a daemon's query-qmp-schema, by (masked) name.
type schema map[string]qmp.SchemaInfo

func fetchSchema(t *testing.T, d *Daemon) schema {
	t.Helper()
	// The raw connection: go-qemu's reader stops at 64 KiB lines.
	raw, qerr := d.Try("query-qmp-schema", nil)
	if qerr != nil {
		t.Fatal(qerr)
	}
	var sc []qmp.SchemaInfo
	if err := json.Unmarshal(raw, &sc); err != nil {
		t.Fatal(err)
	}
	for _, err := range qmp.CheckSchema(sc) {
		t.Errorf("query-qmp-schema is ill-formed: %v", err)
	}
	m := schema{}
	for _, e := range sc {
		m[e.Name] = e
	}
	return m
}

// TestQMPSchema: the schema is well-formed, lists every command of
// query-commands, and blockdev-add has a variant for each driver the
// other tests use.
func TestQMPSchema(t *testing.T) {
	d := start(t)
	sc := fetchSchema(t, d)
	var cmds []struct {
		Name string `json:"name"`
	}
	d.CmdInto("query-commands", nil, &cmds)
	var listed []string
	for _, c := range cmds {
		listed = append(listed, c.Name)
		if sc[c.Name].MetaType != qmp.MetaCommand {
			t.Errorf("query-commands lists %s; query-qmp-schema has no such command", c.Name)
		}
	}
	for name, e := range sc {
		if e.MetaType == qmp.MetaCommand && !slices.Contains(listed, name) {
			t.Errorf("query-qmp-schema has command %s; query-commands does not list it", name)
		}
	}
	drivers := sc.resolve("blockdev-add/arg-type")
	for _, drv := range []string{"file", "qcow2", "raw", "throttle", "copy-on-read", "blkdebug", "quorum", "null-co"} {
		if !slices.ContainsFunc(drivers.Object.Variants, func(v qmp.SchemaInfoObjectVariant) bool { return v.Case == drv }) {
			t.Errorf("blockdev-add has no variant for driver %s", drv)
		}
	}
}

// TestQMPSchemaProbes resolves paths in the schema as a client does to
// learn what a daemon accepts (libvirt's "command/arg-type/+variant/member"
// queries, qmp-shell's completion), and expects the same answer from
// blockd and qsd for everything blockd has.
func TestQMPSchemaProbes(t *testing.T) {
	d := start(t)
	sc := fetchSchema(t, d)
	for _, tc := range []struct {
		path string
		want string // what the path ends at ("" when absent); see describe
		// blockdLacks: qsd 7.2 has it, blockd does not (yet): absent there.
		blockdLacks bool
	}{
		{"blockdev-add/arg-type/+file/filename", "str", false},
		{"blockdev-add/arg-type/+qcow2/backing", "optional alternate", false},
		{"blockdev-add/arg-type/+qcow2/file", "alternate", false},
		{"blockdev-add/arg-type/+raw/offset", "optional int", false},
		{"blockdev-add/arg-type/+throttle/throttle-group", "str", false},
		{"blockdev-add/arg-type/+quorum/vote-threshold", "int", false},
		{"blockdev-add/arg-type/+blkdebug/inject-error", "optional array", false},
		{"blockdev-add/arg-type/detect-zeroes/^unmap", "value", false},
		{"blockdev-add/arg-type/driver/^null-co", "value", false},
		{"blockdev-add/arg-type/+file/aio", "optional enum", false},
		{"blockdev-add/arg-type/+nbd", "object", false},
		{"blockdev-add/arg-type/+nbd/server", "object", false},
		{"blockdev-reopen/arg-type/options/+qcow2/backing", "optional alternate", false},
		{"block-stream/arg-type/backing-file", "optional str", false},
		{"block-stream/arg-type/backing-mask-protocol", "", false}, // QEMU 8.0
		{"block-commit/arg-type/backing-mask-protocol", "", false},
		{"block-commit/arg-type/top-node", "optional str", false},
		{"blockdev-mirror/arg-type/copy-mode", "optional enum", false},
		{"nbd-server-start/arg-type/max-connections", "optional int", false},
		{"nbd-server-start/arg-type/addr/+unix/data/path", "str", false},
		{"block-export-add/arg-type/+nbd/allocation-depth", "optional bool", false},
		{"block-export-add/arg-type/+fuse", "object", false},
		{"block-export-add/arg-type/+fuse/mountpoint", "str", false},
		{"block-export-add/arg-type/+fuse/allow-other", "optional enum", false},
		{"object-add/arg-type/+throttle-group/limits", "optional object", false},
		{"object-add/arg-type/+iothread/poll-max-ns", "optional int", false},
		{"query-named-block-nodes/arg-type/flat", "optional bool", false},
		{"block-job-cancel/arg-type/force", "optional bool", false},
		{"x-debug-query-block-graph/$unstable", "feature", false},
		{"nbd-server-add/$deprecated", "feature", false},
		{"query-qmp-schema/ret-type/+object/members", "array", false},
		{"JOB_STATUS_CHANGE/arg-type/status/^pending", "value", false},
		{"BLOCK_JOB_COMPLETED/arg-type/error", "optional str", false},
		{"no-such-command", "", false},
	} {
		want := tc.want
		if tc.blockdLacks && !isQSD() {
			want = ""
		}
		if got := sc.describe(tc.path); got != want {
			t.Errorf("%s: got %q, want %q", tc.path, got, want)
		}
	}
}

// describe says what path ends at: "" when it is absent, "value" for an
// enum value, "feature" for a feature, else the kind of type ("str",
// "object", ...; builtins by name, others by meta-type) after "optional "
// for an optional member.
func (sc schema) describe(path string) string {
	parts := strings.Split(path, "/")
	last := parts[len(parts)-1]
	if v, ok := strings.CutPrefix(last, "^"); ok {
		e := sc.resolve(strings.Join(parts[:len(parts)-1], "/"))
		if e.Enum != nil && slices.Contains(e.Enum.Values, v) {
			return "value"
		}
		return ""
	}
	if f, ok := strings.CutPrefix(last, "$"); ok {
		if slices.Contains(sc.resolve(strings.Join(parts[:len(parts)-1], "/")).Features, f) {
			return "feature"
		}
		return ""
	}
	e := sc.resolve(path)
	if e.Name == "" {
		return ""
	}
	kind := string(e.MetaType)
	if e.MetaType == qmp.MetaBuiltin {
		kind = e.Name
	}
	if sc.optional(path) {
		return "optional " + kind
	}
	return kind
}

// resolve walks path: the first step names a command or event, then
// "arg-type"/"ret-type", a member name, or "+case" for a union variant.
// Arrays are looked through, and an alternate by its object member.
// It returns the zero SchemaInfo when a step is absent.
func (sc schema) resolve(path string) qmp.SchemaInfo {
	parts := strings.Split(path, "/")
	e := sc[parts[0]]
	for _, p := range parts[1:] {
		switch {
		case p == "arg-type" && e.Command != nil:
			e = sc[e.Command.ArgType]
		case p == "ret-type" && e.Command != nil:
			e = sc[e.Command.RetType]
		case p == "arg-type" && e.Event != nil:
			e = sc[e.Event.ArgType]
		default:
			e = sc.object(e)
			if e.Object == nil {
				return qmp.SchemaInfo{}
			}
			e = sc.step(e.Object, p)
		}
		if e.Name == "" {
			return e
		}
	}
	return e
}

// object looks through arrays and alternates for an object type.
func (sc schema) object(e qmp.SchemaInfo) qmp.SchemaInfo {
	switch {
	case e.Array != nil:
		return sc.object(sc[e.Array.ElementType])
	case e.Alternate != nil:
		for _, m := range e.Alternate.Members {
			if o := sc.object(sc[m.Type]); o.Object != nil {
				return o
			}
		}
	}
	return e
}

func (sc schema) step(o *qmp.SchemaInfoObject, p string) qmp.SchemaInfo {
	if c, ok := strings.CutPrefix(p, "+"); ok {
		for _, v := range o.Variants {
			if v.Case == c {
				return sc[v.Type]
			}
		}
		return qmp.SchemaInfo{}
	}
	for _, m := range o.Members {
		if m.Name == p {
			return sc[m.Type]
		}
	}
	return qmp.SchemaInfo{}
}

// optional reports whether the last step of path is an optional member.
func (sc schema) optional(path string) bool {
	i := strings.LastIndex(path, "/")
	if i < 0 {
		return false
	}
	o := sc.object(sc.resolve(path[:i]))
	if o.Object == nil {
		return false
	}
	for _, m := range o.Object.Members {
		if m.Name == path[i+1:] {
			return m.Optional()
		}
	}
	return false
}

// TestQMPSchemaEvents checks the events of a stream job and an export,
// and the replies of the queries, against the daemon's own schema.
func TestQMPSchemaEvents(t *testing.T) {
	d := start(t)
	sc := fetchSchema(t, d)
	base, top := d.Path("base.qcow2"), d.Path("top.qcow2")
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", base, "1M")
	run(t, "qemu-io", "-c", "write -P 7 0 64k", base)
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", top)
	d.Cmd("blockdev-add", map[string]any{"driver": "qcow2", "node-name": "top",
		"file": map[string]any{"driver": "file", "filename": top}})
	d.Cmd("block-stream", map[string]any{"job-id": "j0", "device": "top"})
	d.WaitEvent("BLOCK_JOB_COMPLETED", 30*time.Second)
	sock := d.Path("nbd.sock")
	d.Cmd("nbd-server-start", map[string]any{"addr": map[string]any{"type": "unix", "data": map[string]any{"path": sock}}})
	d.Cmd("block-export-add", map[string]any{"type": "nbd", "id": "e0", "node-name": "top"})
	for _, q := range []string{"query-named-block-nodes", "query-block-exports", "query-jobs", "query-version", "query-commands"} {
		var v any
		d.CmdInto(q, nil, &v)
		if err := sc.check(sc[q].Command.RetType, v, "return"); err != nil {
			t.Errorf("%s: the reply does not match its ret-type: %v", q, err)
		}
	}
	d.DelExport("e0")
	d.WaitEvent("BLOCK_EXPORT_DELETED", 10*time.Second)

	seen := map[string]bool{}
	for _, ev := range d.History() {
		seen[ev.Event] = true
		e := sc[ev.Event]
		if e.Event == nil {
			t.Errorf("event %s is not in the schema", ev.Event)
			continue
		}
		if err := sc.check(e.Event.ArgType, ev.Data, "data"); err != nil {
			t.Errorf("%s: %v", ev.Event, err)
		}
	}
	for _, name := range []string{"JOB_STATUS_CHANGE", "BLOCK_JOB_COMPLETED", "BLOCK_EXPORT_DELETED"} {
		if !seen[name] {
			t.Errorf("no %s event seen", name)
		}
	}
}

// check reports where v (as encoding/json decodes it) does not have the
// type called name.
func (sc schema) check(name string, v any, at string) error {
	e, ok := sc[name]
	if !ok {
		return fmt.Errorf("%s: type %q is not in the schema", at, name)
	}
	switch e.MetaType {
	case qmp.MetaBuiltin:
		if !builtinHolds(e.Name, v) {
			return fmt.Errorf("%s: %v is no %s", at, v, e.Name)
		}
	case qmp.MetaEnum:
		if s, ok := v.(string); !ok || !slices.Contains(e.Enum.Values, s) {
			return fmt.Errorf("%s: %v is not one of %v", at, v, e.Enum.Values)
		}
	case qmp.MetaArray:
		a, ok := v.([]any)
		if !ok {
			return fmt.Errorf("%s: %v is no array", at, v)
		}
		for i, x := range a {
			if err := sc.check(e.Array.ElementType, x, fmt.Sprintf("%s[%d]", at, i)); err != nil {
				return err
			}
		}
	case qmp.MetaAlternate:
		for _, m := range e.Alternate.Members {
			if sc.check(m.Type, v, at) == nil {
				return nil
			}
		}
		return fmt.Errorf("%s: %v matches no alternative of %s", at, v, name)
	case qmp.MetaObject:
		o, ok := v.(map[string]any)
		if !ok {
			return fmt.Errorf("%s: %v is no object", at, v)
		}
		return sc.checkObject(e.Object, o, at)
	}
	return nil
}

func (sc schema) checkObject(obj *qmp.SchemaInfoObject, o map[string]any, at string) error {
	members := slices.Clone(obj.Members)
	if obj.Tag != "" {
		tag, _ := o[obj.Tag].(string)
		for _, v := range obj.Variants {
			if v.Case == tag {
				members = append(members, sc[v.Type].Object.Members...)
			}
		}
	}
	for _, m := range members {
		x, ok := o[m.Name]
		if !ok {
			if !m.Optional() {
				return fmt.Errorf("%s: member %s is missing", at, m.Name)
			}
			continue
		}
		if err := sc.check(m.Type, x, at+"."+m.Name); err != nil {
			return err
		}
	}
	for k := range o {
		if !slices.ContainsFunc(members, func(m qmp.SchemaInfoObjectMember) bool { return m.Name == k }) {
			return fmt.Errorf("%s: member %s is not in the schema", at, k)
		}
	}
	return nil
}

func builtinHolds(name string, v any) bool {
	switch name {
	case "any":
		return true
	case "null":
		return v == nil
	case "str":
		_, ok := v.(string)
		return ok
	case "bool":
		_, ok := v.(bool)
		return ok
	case "number":
		_, ok := v.(float64)
		return ok
	case "int":
		f, ok := v.(float64)
		return ok && f == math.Trunc(f)
	}
	return false
}
