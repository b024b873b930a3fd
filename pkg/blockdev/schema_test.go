package blockdev

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/blockd/blockd/pkg/qmp"
)

// schemaOf returns the schema a QMP server serving s announces, unmasked.
func schemaOf(t *testing.T, s *Server) map[string]qmp.SchemaInfo {
	t.Helper()
	q := qmp.NewServer(qmp.ServerOptions{})
	t.Cleanup(func() { q.Close() })
	s.Register(q)
	sc, problems := q.Schema(false)
	for _, p := range problems {
		t.Error(p)
	}
	for _, err := range qmp.CheckSchema(sc) {
		t.Error(err)
	}
	m := map[string]qmp.SchemaInfo{}
	for _, e := range sc {
		m[e.Name] = e
	}
	return m
}

// TestSchemaListsEveryCommand: every command blockd registers is in the
// schema with its signature, and nothing else but the 5 builtins, and
// blockdev-add's variants include the drivers.
func TestSchemaListsEveryCommand(t *testing.T) {
	m := schemaOf(t, New(nil))
	want := []string{"qmp_capabilities", "query-commands", "query-qmp-schema", "query-version", "quit"}
	for name := range New(nil).handlers() {
		want = append(want, name)
	}
	sort.Strings(want)
	if got := sortedCommands(m); !slices.Equal(got, want) {
		t.Errorf("schema lists\n%v\nblockd has\n%v", got, want)
	}
	drivers := variantCases(m[m["blockdev-add"].Command.ArgType])
	for _, d := range []string{"file", "qcow2", "raw", "throttle", "copy-on-read", "quorum", "null-co"} {
		if !slices.Contains(drivers, d) {
			t.Errorf("blockdev-add has no variant %s: %v", d, drivers)
		}
	}
}

func variantCases(e qmp.SchemaInfo) []string {
	var cs []string
	if e.Object != nil {
		for _, v := range e.Object.Variants {
			cs = append(cs, v.Case)
		}
	}
	return cs
}

// TestSchemaUnionsMatchHandlers: a union handler accepts exactly the cases
// the schema declares: for every value of the tag's enum, the handler
// either refuses it as unsupported or it is a declared case.
func TestSchemaUnionsMatchHandlers(t *testing.T) {
	for _, tc := range []struct {
		command     string
		tagType     string // the enum of the tag, as named in the schema
		args        func(v string) string
		unsupported string // the message of a refused case, with %s
	}{
		{"object-add", "blockdev.ObjectType", func(v string) string { return `{"qom-type": "` + v + `", "id": "o1"}` },
			"Objects of type '%s' are not supported by blockd"},
		{"block-export-add", "blockdev.ExportType", func(v string) string {
			return `{"type": "` + v + `", "id": "e1", "node-name": "none"}`
		}, "Export type '%s' is not supported by blockd"},
		{"transaction", "TransactionAction-type", func(v string) string { return `{"actions": [{"type": "` + v + `", "data": {}}]}` },
			"Transaction action '%s' is not supported by blockd"},
		{"nbd-server-start", "blockdev.AddrType", func(v string) string { return `{"addr": {"type": "` + v + `", "data": {}}}` },
			"Socket address type '%s' is not supported by blockd's NBD server"},
	} {
		t.Run(tc.command, func(t *testing.T) {
			s := New(nil)
			m := schemaOf(t, s)
			union := findUnion(m, m[tc.command].Command.ArgType, m[tc.tagType])
			cases := variantCases(union)
			values := m[tc.tagType].Enum.Values
			if tc.command == "transaction" {
				values = transactionTypes // the decoder's enum; the schema's lists only the cases
			}
			for _, v := range values {
				_, err := s.handlers()[tc.command].ServeQMP(context.Background(), json.RawMessage(tc.args(v)))
				refused := err != nil && err.Error() == fmt.Sprintf(tc.unsupported, v)
				if refused == slices.Contains(cases, v) {
					t.Errorf("%s: refused=%v (%v), declared cases %v", v, refused, err, cases)
				}
			}
		})
	}
}

// findUnion finds the union whose tag has the type tag, starting at the
// object named name (a command's arguments) and looking one level down.
func findUnion(m map[string]qmp.SchemaInfo, name string, tag qmp.SchemaInfo) qmp.SchemaInfo {
	e := m[name]
	for _, mem := range e.Object.Members {
		if mem.Type == tag.Name && e.Object.Tag == mem.Name {
			return e
		}
		if inner := strings.Trim(mem.Type, "[]"); m[inner].Object != nil && m[inner].Object.Tag != "" {
			if u := findUnion(m, inner, tag); u.Object != nil {
				return u
			}
		}
	}
	return qmp.SchemaInfo{}
}

// qsdArgs reads testdata/qsd-7.2-args.txt (scripts/qsd-args.py):
// command → variant ("-": every variant) → member → optional.
func qsdArgs(t *testing.T) map[string]map[string]map[string]bool {
	f, err := os.Open("testdata/qsd-7.2-args.txt")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[string]map[string]map[string]bool{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), "#") {
			continue
		}
		fs := strings.Split(sc.Text(), "\t")
		if len(fs) != 4 {
			t.Fatalf("bad line %q", sc.Text())
		}
		if out[fs[0]] == nil {
			out[fs[0]] = map[string]map[string]bool{}
		}
		if out[fs[0]][fs[1]] == nil {
			out[fs[0]][fs[1]] = map[string]bool{}
		}
		if fs[2] != "-" {
			out[fs[0]][fs[1]][fs[2]] = fs[3] == "optional"
		}
	}
	return out
}

// TestSchemaArgsMatchQSD: for every command blockd shares with qsd 7.2,
// every argument member blockd accepts (and every member of a variant qsd
// also has) exists in qsd's with the same optionality. The qsd members
// blockd lacks are logged.
func TestSchemaArgsMatchQSD(t *testing.T) {
	qsd := qsdArgs(t)
	m := schemaOf(t, New(nil))
	var lacks []string
	for _, name := range sortedCommands(m) {
		want, shared := qsd[name]
		if !shared {
			continue
		}
		arg := m[m[name].Command.ArgType].Object
		groups := map[string][]qmp.SchemaInfoObjectMember{"-": arg.Members}
		for _, v := range arg.Variants {
			if _, ok := want[v.Case]; ok {
				groups[v.Case] = m[v.Type].Object.Members
			}
		}
		for group, members := range groups {
			have := map[string]bool{}
			for _, mem := range members {
				have[mem.Name] = true
				opt, ok := want[group][mem.Name]
				switch {
				case !ok:
					t.Errorf("%s %s: member %s is not qsd's", name, group, mem.Name)
				case opt != mem.Optional():
					t.Errorf("%s %s: member %s optional=%v, qsd's %v", name, group, mem.Name, mem.Optional(), opt)
				}
			}
			for mem := range want[group] {
				if !have[mem] {
					lacks = append(lacks, name+" "+group+" "+mem)
				}
			}
		}
		for group := range want {
			if _, ok := groups[group]; !ok {
				lacks = append(lacks, name+" "+group+" (whole variant)")
			}
		}
	}
	sort.Strings(lacks)
	t.Logf("qsd 7.2 members blockd does not accept (command variant member):\n%s", strings.Join(lacks, "\n"))
}

func sortedCommands(m map[string]qmp.SchemaInfo) []string {
	var names []string
	for name, e := range m {
		if e.MetaType == qmp.MetaCommand {
			names = append(names, name)
		}
	}
	sort.Strings(names)
	return names
}
