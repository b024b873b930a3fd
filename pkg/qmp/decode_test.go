package qmp

import (
	"context"
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
)

type syncMode string

func (syncMode) EnumValues() []string { return []string{"top", "full", "none"} }

type driverName string

func (*driverName) EnumValues() []string { return []string{"file", "qcow2", "raw"} } // pointer receiver works too

type fileOpts struct {
	Filename string `json:"filename"`
}

type commonOpts struct {
	Driver   driverName `json:"driver"`
	NodeName *string    `json:"node-name,omitempty"`
	ReadOnly bool       `json:"read-only,omitempty"`
}

// blockdevRef is an alternate: a node name, or the options of a new node,
// or null.
type blockdevRef struct {
	Null bool
	Name string
	Opts *fileOpts
}

func (r *blockdevRef) UnmarshalQMP(raw json.RawMessage, path string) error {
	switch {
	case string(raw) == "null":
		r.Null = true
		return nil
	case strings.HasPrefix(string(raw), `"`):
		return json.Unmarshal(raw, &r.Name)
	case strings.HasPrefix(string(raw), `{`):
		r.Opts = new(fileOpts)
		return Decode(raw, path, r.Opts)
	}
	return errType(path, "BlockdevRef")
}

type failing struct{}

func (failing) UnmarshalQMP(json.RawMessage, string) error { return errors.New("plain failure") }

type allTypes struct {
	S    string                     `json:"s,omitempty"`
	B    bool                       `json:"b,omitempty"`
	I    int                        `json:"i,omitempty"`
	I64  int64                      `json:"i64,omitempty"`
	I8   int8                       `json:"i8,omitempty"`
	I32  int32                      `json:"i32,omitempty"`
	U8   uint8                      `json:"u8,omitempty"`
	U32  uint32                     `json:"u32,omitempty"`
	U64  uint64                     `json:"u64,omitempty"`
	F    float64                    `json:"f,omitempty"`
	Sync *syncMode                  `json:"sync,omitempty"`
	Syns []syncMode                 `json:"syncs,omitempty"`
	Any  any                        `json:"any,omitempty"`
	Raw  json.RawMessage            `json:"raw,omitempty"`
	Map  map[string]int             `json:"map,omitempty"`
	AnyM map[string]any             `json:"anym,omitempty"`
	File *fileOpts                  `json:"file,omitempty"`
	List []fileOpts                 `json:"list,omitempty"`
	Ref  *blockdevRef               `json:"ref,omitempty"`
	Fail *failing                   `json:"fail,omitempty"`
	Deep map[string]json.RawMessage `json:"deep,omitempty"`
}

// EmbeddedFile is exported: reflection cannot allocate an embedded pointer
// to an unexported type (encoding/json cannot either).
type EmbeddedFile struct {
	Filename string `json:"filename"`
}

type embeddedOpts struct {
	commonOpts
	*EmbeddedFile
	Extra int `json:"extra,omitempty"`
}

type shadowing struct {
	commonOpts
	Driver string `json:"driver"` // the outer field wins
}

func TestDecode_Errors(t *testing.T) {
	tests := []struct {
		name string
		in   string
		dst  func() any
		want string // "" = success
	}{
		// compat(qsd-7.2): P-1.
		{"missing", `{}`, func() any { return new(fileOpts) }, "Parameter 'filename' is missing"},
		{"wrong type", `{"filename": 5}`, func() any { return new(fileOpts) }, "Invalid parameter type for 'filename', expected: string"},
		{"unexpected", `{"filename": "x", "extra": 1}`, func() any { return new(fileOpts) }, "Parameter 'extra' is unexpected"},
		{"unexpected after missing", `{"extra": 1}`, func() any { return new(fileOpts) }, "Parameter 'filename' is missing"},
		{"null is a type error", `{"b": null}`, func() any { return new(allTypes) }, "Invalid parameter type for 'b', expected: boolean"},
		{"bool", `{"b": "yes"}`, func() any { return new(allTypes) }, "Invalid parameter type for 'b', expected: boolean"},
		{"int from string", `{"i64": "fast"}`, func() any { return new(allTypes) }, "Invalid parameter type for 'i64', expected: integer"},
		{"int from double", `{"i64": 1.5}`, func() any { return new(allTypes) }, "Invalid parameter type for 'i64', expected: integer"},
		{"int from integral double", `{"i64": 1000.0}`, func() any { return new(allTypes) }, "Invalid parameter type for 'i64', expected: integer"},
		{"int from uint", `{"i64": 18446744073709551615}`, func() any { return new(allTypes) }, "Invalid parameter type for 'i64', expected: integer"},
		{"int negative", `{"i64": -1, "i": -9223372036854775808}`, func() any { return new(allTypes) }, ""},
		{"int8 range", `{"i8": 128}`, func() any { return new(allTypes) }, "Parameter 'i8' expects int8_t"},
		{"int32 range", `{"i32": -2147483649}`, func() any { return new(allTypes) }, "Parameter 'i32' expects int32_t"},
		{"uint64 max", `{"u64": 18446744073709551615}`, func() any { return new(allTypes) }, ""},
		{"uint64 negative wraps", `{"u64": -1}`, func() any { return new(allTypes) }, ""},
		{"uint64 from double", `{"u64": 1.5}`, func() any { return new(allTypes) }, "Parameter 'u64' expects uint64"},
		{"uint64 from string", `{"u64": "1"}`, func() any { return new(allTypes) }, "Parameter 'u64' expects uint64"},
		{"uint32 range", `{"u32": 4294967296}`, func() any { return new(allTypes) }, "Parameter 'u32' expects uint32_t"},
		{"uint8 negative", `{"u8": -1}`, func() any { return new(allTypes) }, "Parameter 'u8' expects uint8_t"},
		{"number", `{"f": 1}`, func() any { return new(allTypes) }, ""},
		{"number from string", `{"f": "1"}`, func() any { return new(allTypes) }, "Invalid parameter type for 'f', expected: number"},
		{"string from null", `{"s": null}`, func() any { return new(allTypes) }, "Invalid parameter type for 's', expected: string"},
		{"enum", `{"sync": "bogus"}`, func() any { return new(allTypes) }, "Parameter 'sync' does not accept value 'bogus'"},
		{"enum type", `{"sync": 1}`, func() any { return new(allTypes) }, "Invalid parameter type for 'sync', expected: string"},
		{"enum in list", `{"syncs": ["top", "bogus"]}`, func() any { return new(allTypes) }, "Parameter 'null' does not accept value 'bogus'"},
		{"array", `{"syncs": "top"}`, func() any { return new(allTypes) }, "Invalid parameter type for 'syncs', expected: array"},
		{"nested missing", `{"file": {}}`, func() any { return new(allTypes) }, "Parameter 'file.filename' is missing"},
		{"nested type", `{"file": 5}`, func() any { return new(allTypes) }, "Invalid parameter type for 'file', expected: object"},
		{"nested unexpected", `{"file": {"filename": "a", "x": 1}, "y": 2}`, func() any { return new(allTypes) }, "Parameter 'file.x' is unexpected"},
		{"list element", `{"list": [{"filename": "a"}, {"filename": 1}]}`, func() any { return new(allTypes) }, "Invalid parameter type for 'list[1].filename', expected: string"},
		{"map value", `{"map": {"a": 1, "b": "x"}}`, func() any { return new(allTypes) }, "Invalid parameter type for 'map.b', expected: integer"},
		{"map type", `{"map": []}`, func() any { return new(allTypes) }, "Invalid parameter type for 'map', expected: object"},
		{"any takes anything", `{"any": [1, "x", null, {"a": true}], "anym": {"k": null}}`, func() any { return new(allTypes) }, ""},
		{"alternate string", `{"ref": "node0"}`, func() any { return new(allTypes) }, ""},
		{"alternate object", `{"ref": {"filename": "f"}}`, func() any { return new(allTypes) }, ""},
		{"alternate null", `{"ref": null}`, func() any { return new(allTypes) }, ""},
		{"alternate nested error", `{"ref": {"filename": "f", "z": 0}}`, func() any { return new(allTypes) }, "Parameter 'ref.z' is unexpected"},
		{"alternate type", `{"ref": 5}`, func() any { return new(allTypes) }, "Invalid parameter type for 'ref', expected: BlockdevRef"},
		{"unmarshaler plain error", `{"fail": 1}`, func() any { return new(allTypes) }, "plain failure"},
		{"embedded", `{"driver": "file", "filename": "f", "extra": 1}`, func() any { return new(embeddedOpts) }, ""},
		{"embedded missing", `{"filename": "f"}`, func() any { return new(embeddedOpts) }, "Parameter 'driver' is missing"},
		{"embedded enum", `{"driver": "nosuch", "filename": "f"}`, func() any { return new(embeddedOpts) }, "Parameter 'driver' does not accept value 'nosuch'"},
		{"shadowed field", `{"driver": "anything"}`, func() any { return new(shadowing) }, ""},
		{"empty struct takes nothing", `{"a": 1}`, func() any { return new(struct{}) }, "Parameter 'a' is unexpected"},
		{"not a pointer", `{}`, func() any { return fileOpts{} }, "Internal error"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := Decode(json.RawMessage(tt.in), "", tt.dst())
			checkErr(t, err, tt.want)
		})
	}
}

func checkErr(t *testing.T, err error, want string) {
	t.Helper()
	if want == "" {
		if err != nil {
			t.Fatalf("unexpected error %v", err)
		}
		return
	}
	var qe *Error
	if !errors.As(err, &qe) {
		t.Fatalf("got %v (%T), want *Error %q", err, err, want)
	}
	if qe.Class != GenericError || qe.Desc != want {
		t.Fatalf("got %s %q, want GenericError %q", qe.Class, qe.Desc, want)
	}
}

func TestDecode_Values(t *testing.T) {
	var a allTypes
	in := `{"s": "x", "b": true, "i": 3, "i8": -128, "u64": -1, "f": 1e3, "sync": "full",
		"any": {"n": 1, "l": [true]}, "raw": {"b": 1e3, "c": "\u00e9"}, "map": {"k": 7},
		"file": {"filename": "f"}, "list": [{"filename": "g"}], "ref": "n0",
		"deep": {"x": [1, 2.5]}}`
	if err := Decode(json.RawMessage(in), "", &a); err != nil {
		t.Fatal(err)
	}
	if a.S != "x" || !a.B || a.I != 3 || a.I8 != -128 || a.U64 != 1<<64-1 || a.F != 1000 ||
		a.Sync == nil || *a.Sync != "full" || a.Map["k"] != 7 || a.File.Filename != "f" ||
		a.List[0].Filename != "g" || a.Ref.Name != "n0" {
		t.Errorf("decoded %+v", a)
	}
	if !reflect.DeepEqual(a.Any, map[string]any{"n": 1.0, "l": []any{true}}) {
		t.Errorf("any: %#v", a.Any)
	}
	if string(a.Raw) != `{"b":1000.0,"c":"\u00E9"}` {
		t.Errorf("raw: %s", a.Raw)
	}
	if string(a.Deep["x"]) != `[1,2.5]` {
		t.Errorf("deep: %s", a.Deep["x"])
	}

	var e embeddedOpts
	if err := Decode(json.RawMessage(`{"driver": "raw", "node-name": "n", "filename": "f"}`), "", &e); err != nil {
		t.Fatal(err)
	}
	if e.Driver != "raw" || *e.NodeName != "n" || e.EmbeddedFile == nil || e.Filename != "f" {
		t.Errorf("embedded: %+v", e)
	}
	// A required member of an embedded pointer struct is required.
	e = embeddedOpts{}
	checkErr(t, Decode(json.RawMessage(`{"driver": "raw"}`), "", &e), "Parameter 'filename' is missing")

	// No arguments at all decode as {}.
	var f struct {
		Flat *bool `json:"flat,omitempty"`
	}
	if err := Decode(nil, "", &f); err != nil || f.Flat != nil {
		t.Errorf("nil raw: %v", err)
	}
}

// TestDecode_MultiDestination is the flat-union case: common members in one
// struct, the driver's own in another, unexpected only if neither has it.
func TestDecode_MultiDestination(t *testing.T) {
	tests := []struct {
		in, path, want string
	}{
		{`{"driver": "file", "filename": "f"}`, "", ""},
		{`{"driver": "file", "filename": "f", "bogus": 1}`, "", "Parameter 'bogus' is unexpected"},
		{`{"driver": "file"}`, "", "Parameter 'filename' is missing"},
		{`{"filename": "f"}`, "", "Parameter 'driver' is missing"},
		{`{"driver": "file"}`, "file", "Parameter 'file.filename' is missing"},
		{`{"driver": "file", "filename": 1}`, "backing", "Invalid parameter type for 'backing.filename', expected: string"},
		{`{"driver": "nope", "filename": "f"}`, "file", "Parameter 'driver' does not accept value 'nope'"},
		{`[]`, "file", "Invalid parameter type for 'file', expected: object"},
	}
	for _, tt := range tests {
		var c commonOpts
		var f fileOpts
		err := Decode(json.RawMessage(tt.in), tt.path, &c, &f)
		t.Run(tt.in, func(t *testing.T) { checkErr(t, err, tt.want) })
	}

	// A map destination takes whatever the structs did not.
	var c commonOpts
	rest := map[string]json.RawMessage{}
	if err := Decode(json.RawMessage(`{"driver": "qcow2", "a": 1, "b": {"c": null}}`), "", &c, &rest); err != nil {
		t.Fatal(err)
	}
	if c.Driver != "qcow2" || len(rest) != 2 || string(rest["b"]) != `{"c":null}` {
		t.Errorf("rest: %v %s", c, rest)
	}
}

// TestCommand checks the typed adapter end to end, including a top-level
// Unmarshaler.
func TestCommand(t *testing.T) {
	type args struct {
		NodeName string `json:"node-name"`
	}
	h := Command(func(_ context.Context, a *args) (struct{}, error) {
		if a.NodeName != "n" {
			return struct{}{}, Errorf("Failed to find node with node-name='%s'", a.NodeName)
		}
		return struct{}{}, nil
	})
	if _, err := h.ServeQMP(context.Background(), json.RawMessage(`{"node-name": "n"}`)); err != nil {
		t.Fatal(err)
	}
	_, err := h.ServeQMP(context.Background(), json.RawMessage(`{"node-name": "x"}`))
	checkErr(t, err, "Failed to find node with node-name='x'")
	_, err = h.ServeQMP(context.Background(), json.RawMessage(`{}`))
	checkErr(t, err, "Parameter 'node-name' is missing")

	alt := Command(func(_ context.Context, r *blockdevRef) (*blockdevRef, error) { return r, nil })
	res, err := alt.ServeQMP(context.Background(), json.RawMessage(`{"filename": "f"}`))
	if err != nil || res.(*blockdevRef).Opts.Filename != "f" {
		t.Fatalf("alternate: %v %v", res, err)
	}
}

func TestErrorf(t *testing.T) {
	cause := errors.New("disk on fire")
	e := Errorf("Could not open '%s': %w", "/x", cause)
	if e.Class != GenericError || e.Desc != "Could not open '/x': disk on fire" || !errors.Is(e, cause) {
		t.Errorf("%+v", e)
	}
	e = Classf(DeviceNotActive, "Block job '%s' not found", "j")
	if e.Class != DeviceNotActive || e.Err != nil || e.Error() != "Block job 'j' not found" {
		t.Errorf("%+v", e)
	}
	wrapped := errors.Join(errors.New("ctx"), &Error{Class: DeviceNotFound, Desc: "Device 'x' not found"})
	if got := asError(wrapped); got.Class != DeviceNotFound || got.Desc != "Device 'x' not found" {
		t.Errorf("asError: %+v", got)
	}
	if got := asError(cause); got.Class != GenericError || got.Desc != "disk on fire" {
		t.Errorf("asError: %+v", got)
	}
}
