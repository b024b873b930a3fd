package qmp

import (
	"context"
	"encoding/json"
	"reflect"
	"slices"
	"strings"
	"testing"
)

type testMode string

func (testMode) EnumValues() []string { return []string{"fast", "x-slow"} }

type testChild struct {
	Name string     `json:"name"`
	Next *testChild `json:"next,omitempty"` // a type that contains itself
}

type testArgs struct {
	ID       string            `json:"id"`
	Size     *uint32           `json:"size,omitempty"`
	Ratio    float64           `json:"ratio,omitempty"`
	Mode     testMode          `json:"mode"`
	Tags     []string          `json:"tags,omitempty"`
	Child    testChild         `json:"child"`
	Old      *bool             `json:"old,omitempty" qmp:"deprecated"`
	XPerf    *bool             `json:"x-perf,omitempty"`
	Opaque   json.RawMessage   `json:"opaque"`
	Extra    map[string]string `json:"extra,omitempty"`
	Later    RawAs[testUnion]  `json:"later"`
	Either   testAlt           `json:"either"`
	internal int
}

// testUnion and testAlt have declared shapes.
type testUnion struct{}

type testAlt struct{}

func (*testAlt) UnmarshalQMP(json.RawMessage, string) error { return nil }

type testVariantA struct {
	A int `json:"a"`
}

func testServer(t *testing.T) *Server {
	s := NewServer(ServerOptions{})
	t.Cleanup(func() { s.Close() })
	s.Handle("test-cmd", Command(func(context.Context, *testArgs) ([]testChild, error) { return nil, nil }))
	s.Handle("test-empty", Command(func(context.Context, *struct{}) (struct{}, error) { return struct{}{}, nil }))
	s.Handle("x-test-raw", Declare[testUnion, any](HandlerFunc(func(context.Context, json.RawMessage) (any, error) { return nil, nil })))
	s.DeclareType(reflect.TypeFor[testUnion](), Union{Name: "TestUnion", Base: reflect.TypeFor[struct {
		Kind string `json:"kind"`
	}](), Tag: "kind", Variants: func() []Variant {
		return []Variant{{"a", reflect.TypeFor[testVariantA]()}, {"b", nil}}
	}})
	s.DeclareType(reflect.TypeFor[testAlt](), Alternate{Name: "TestAlt", Types: []reflect.Type{reflect.TypeFor[string](), reflect.TypeFor[Null]()}})
	s.DeclareEvent("TEST_EVENT", reflect.TypeFor[testChild]())
	return s
}

func entities(sc []SchemaInfo) map[string]SchemaInfo {
	m := map[string]SchemaInfo{}
	for _, e := range sc {
		m[e.Name] = e
	}
	return m
}

func memberJSON(t *testing.T, e SchemaInfo) string {
	t.Helper()
	b, err := json.Marshal(e)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestSchemaDescribesWhatDecodeTakes(t *testing.T) {
	sc, problems := testServer(t).Schema(false)
	if len(problems) > 0 {
		t.Fatal(problems)
	}
	m := entities(sc)
	for _, tc := range []struct{ name, want string }{
		{"test-cmd", `{"arg-type":"qmp.testArgs","meta-type":"command","name":"test-cmd","ret-type":"[qmp.testChild]"}`},
		{"test-empty", `{"arg-type":"q_empty","meta-type":"command","name":"test-empty","ret-type":"q_empty"}`},
		{"x-test-raw", `{"arg-type":"TestUnion","features":["unstable"],"meta-type":"command","name":"x-test-raw","ret-type":"any"}`},
		{"TEST_EVENT", `{"arg-type":"qmp.testChild","meta-type":"event","name":"TEST_EVENT"}`},
		{"qmp.testArgs", `{"members":[` +
			`{"name":"id","type":"str"},` +
			`{"name":"size","type":"int","default":null},` +
			`{"name":"ratio","type":"number","default":null},` +
			`{"name":"mode","type":"qmp.testMode"},` +
			`{"name":"tags","type":"[str]","default":null},` +
			`{"name":"child","type":"qmp.testChild"},` +
			`{"name":"old","type":"bool","default":null,"features":["deprecated"]},` +
			`{"name":"x-perf","type":"bool","default":null,"features":["unstable"]},` +
			`{"name":"opaque","type":"any"},` +
			`{"name":"extra","type":"any","default":null},` +
			`{"name":"later","type":"TestUnion"},` +
			`{"name":"either","type":"TestAlt"}],"meta-type":"object","name":"qmp.testArgs"}`},
		{"qmp.testMode", `{"members":[{"name":"fast"},{"name":"x-slow","features":["unstable"]}],"meta-type":"enum","name":"qmp.testMode","values":["fast","x-slow"]}`},
		{"qmp.testChild", `{"members":[{"name":"name","type":"str"},{"name":"next","type":"qmp.testChild","default":null}],"meta-type":"object","name":"qmp.testChild"}`},
		{"TestUnion", `{"members":[{"name":"kind","type":"TestUnion-kind"}],"meta-type":"object","name":"TestUnion","tag":"kind",` +
			`"variants":[{"case":"a","type":"qmp.testVariantA"},{"case":"b","type":"q_empty"}]}`},
		{"TestUnion-kind", `{"members":[{"name":"a"},{"name":"b"}],"meta-type":"enum","name":"TestUnion-kind","values":["a","b"]}`},
		{"TestAlt", `{"members":[{"type":"str"},{"type":"null"}],"meta-type":"alternate","name":"TestAlt"}`},
		{"[str]", `{"element-type":"str","meta-type":"array","name":"[str]"}`},
		{"q_empty", `{"members":[],"meta-type":"object","name":"q_empty"}`},
		{"number", `{"json-type":"number","meta-type":"builtin","name":"number"}`},
	} {
		e, ok := m[tc.name]
		if !ok {
			t.Errorf("%s: missing", tc.name)
			continue
		}
		if got := memberJSON(t, e); got != tc.want {
			t.Errorf("%s:\n got %s\nwant %s", tc.name, got, tc.want)
		}
	}
}

func TestSchemaMasked(t *testing.T) {
	sc, _ := testServer(t).Schema(true)
	if errs := CheckSchema(sc); len(errs) > 0 {
		t.Fatalf("ill-formed: %v", errs)
	}
	m := entities(sc)
	if m["0"].MetaType != MetaObject || len(m["0"].Object.Members) != 0 {
		t.Errorf(`"0" is %s, want the empty object`, memberJSON(t, m["0"]))
	}
	for _, e := range sc {
		if e.MetaType == MetaCommand || e.MetaType == MetaEvent || e.MetaType == MetaBuiltin {
			continue
		}
		if n := strings.Trim(e.Name, "[]"); strings.ContainsFunc(n, func(r rune) bool { return r < '0' || r > '9' }) && builtinJSONTypes[n] == "" {
			t.Errorf("type name %q is not masked", e.Name)
		}
	}
}

func TestCheckSchema(t *testing.T) {
	sc := []SchemaInfo{
		{Name: "c", MetaType: MetaCommand, Command: &SchemaInfoCommand{ArgType: "[1]", RetType: "2"}},
		{Name: "[1]", MetaType: MetaArray, Array: &SchemaInfoArray{ElementType: "1"}},
		{Name: "3", MetaType: MetaObject, Object: &SchemaInfoObject{Tag: "t", Variants: []SchemaInfoObjectVariant{{"a", "[1]"}}}},
	}
	var got []string
	for _, err := range CheckSchema(sc) {
		got = append(got, err.Error())
	}
	want := []string{
		`c: type "[1]" is array, not object`,
		`c: type "2" is not defined`,
		`[1]: type "1" is not defined`,
		`3: tag "t" is not a member`,
		`3+a: type "[1]" is array, not object`,
	}
	if !slices.Equal(got, want) {
		t.Errorf("got\n%s", strings.Join(got, "\n"))
	}
}

func TestSchemaProblems(t *testing.T) {
	s := NewServer(ServerOptions{})
	defer s.Close()
	s.Handle("unsigned", HandlerFunc(func(context.Context, json.RawMessage) (any, error) { return nil, nil }))
	s.Handle("undeclared", Command(func(context.Context, *struct {
		A testAlt `json:"a"`
	}) (struct{}, error) {
		return struct{}{}, nil
	}))
	_, problems := s.Schema(false)
	var got []string
	for _, p := range problems {
		got = append(got, p.Error())
	}
	want := []string{
		"qmp schema: command unsigned has no signature: register it with qmp.Command, or qmp.Declare for a handler that decodes its own arguments",
		"qmp schema: qmp.testAlt decodes itself (qmp.Unmarshaler): declare its shape with Server.DeclareType",
	}
	slices.Sort(got)
	if !slices.Equal(got, slices.Sorted(slices.Values(want))) {
		t.Errorf("problems:\n%s", strings.Join(got, "\n"))
	}
}

// TestSchemaListsEveryCommand: query-qmp-schema and query-commands agree,
// over the wire, builtins included.
func TestSchemaListsEveryCommand(t *testing.T) {
	s := testServer(t)
	call := func(name string, v any) {
		t.Helper()
		res, err := s.lookup(name).ServeQMP(context.Background(), nil)
		if err != nil {
			t.Fatal(err)
		}
		b, err := json.Marshal(res)
		if err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(b, v); err != nil {
			t.Fatal(err)
		}
	}
	var cmds []commandInfo
	var sc []SchemaInfo
	call("query-commands", &cmds)
	call("query-qmp-schema", &sc)
	var a, b []string
	for _, c := range cmds {
		a = append(a, c.Name)
	}
	for _, e := range sc {
		if e.MetaType == MetaCommand {
			b = append(b, e.Name)
		}
	}
	slices.Sort(a)
	if !slices.Equal(a, b) {
		t.Errorf("query-commands %v\nquery-qmp-schema %v", a, b)
	}
	if !slices.Contains(b, "query-qmp-schema") || !slices.Contains(b, "qmp_capabilities") {
		t.Errorf("builtins missing: %v", b)
	}
}

// TestSchemaInfoJSON: an entity reads back as it was written, so clients
// (and the iotests) can read any server's schema with SchemaInfo.
func TestSchemaInfoJSON(t *testing.T) {
	sc, _ := testServer(t).Schema(true)
	b, err := json.Marshal(sc)
	if err != nil {
		t.Fatal(err)
	}
	var back []SchemaInfo
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(sc, back) {
		t.Errorf("round trip changed the schema")
	}
	if err := json.Unmarshal([]byte(`{"name":"x","meta-type":"bogus"}`), &SchemaInfo{}); err == nil {
		t.Errorf("unknown meta-type accepted")
	}
}
