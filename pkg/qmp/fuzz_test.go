package qmp

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/blockd/blockd/internal/fuzzcheck"
)

// FuzzParse feeds arbitrary bytes to the stream parser. It must never
// panic, must give the same values and errors however the input is cut
// into reads, must stay within its size bound, and every value it yields
// must survive the round trip through the handlers' JSON.
func FuzzParse(f *testing.F) {
	for _, ln := range strings.Split(transcriptP1+transcriptP2+transcriptP3+transcriptP3B, "\n") {
		if _, rest, ok := strings.Cut(ln, "-> "); ok {
			f.Add([]byte(rest + "\n"))
		}
	}
	for _, s := range []string{
		"}}}", "{execute: query-version}\n", `'\u00e9\uD83D\uDE00'`, "\"\xc0\x80\"", "0e5 1e999 -0.0\n",
		"[" + strings.Repeat("[", 1030), "\"\\u12\"", "{\"a\":{\"a\":1,\"a\":2}}", "\xff\x00\x01{",
	} {
		f.Add([]byte(s))
	}
	const maxSize = 4096
	f.Fuzz(func(t *testing.T, data []byte) {
		run := func(chunk int) ([]string, error) {
			p := newStreamParser(maxSize)
			var out []string
			emit := func(v *value, perr string) bool {
				if perr != "" {
					out = append(out, "E"+perr)
					return true
				}
				if v.kind != kindObject && v.kind != kindArray && v.kind != kindString &&
					v.kind != kindNull && v.kind != kindBool && v.kind != kindInt &&
					v.kind != kindUint && v.kind != kindFloat {
					t.Fatalf("bad kind %d", v.kind)
				}
				args := renderArgs(v)
				back, err := parseJSON(args, false)
				if err != nil {
					t.Fatalf("args %q do not parse back: %v", args, err)
				}
				if !bytes.Equal(renderArgs(&back), args) {
					t.Fatalf("args round trip: %q != %q", renderArgs(&back), args)
				}
				out = append(out, "V"+string(renderMessage(v, false, false)))
				return true
			}
			for d := data; len(d) > 0; {
				n := min(chunk, len(d))
				if err := p.feed(d[:n], emit); err != nil {
					return out, err
				}
				if p.size+len(p.tok) > maxSize {
					t.Fatalf("pending %d bytes, bound %d", p.size+len(p.tok), maxSize)
				}
				d = d[n:]
			}
			return out, nil
		}
		var whole, bytewise []string
		var errWhole, errBytes error
		fuzzcheck.Bounded(t, func() {
			whole, errWhole = run(len(data) + 1)
			bytewise, errBytes = run(1)
		})
		if errWhole != errBytes || strings.Join(whole, "\n") != strings.Join(bytewise, "\n") {
			t.Fatalf("chunking changes the result:\n%q %v\n%q %v", whole, errWhole, bytewise, errBytes)
		}
	})
}

// fuzzDst is one destination set for FuzzDecode: the shapes the handlers
// decode into (a flat union's common and variant structs with a map for
// the rest, embedded structs, alternates, every scalar width).
type fuzzDst struct {
	name string
	new  func() []any
}

var fuzzDsts = []fuzzDst{
	{"all", func() []any { return []any{new(allTypes)} }},
	{"union", func() []any { return []any{new(commonOpts), new(fileOpts)} }},
	{"union+rest", func() []any { return []any{new(commonOpts), &map[string]json.RawMessage{}} }},
	{"embedded", func() []any { return []any{new(embeddedOpts)} }},
	{"shadowing", func() []any { return []any{new(shadowing)} }},
}

// FuzzDecode decodes arbitrary JSON into each destination set. Decode must
// not panic, must fail only with a GenericError that names the problem
// (never "Internal error": these types are all supported), and what it
// accepts must encode and decode again to the same thing.
func FuzzDecode(f *testing.F) {
	for _, s := range []string{
		`{}`, `{"s": "x", "b": true, "i": 3, "i8": -128, "u64": -1, "f": 1e3, "sync": "full"}`,
		`{"any": {"n": 1, "l": [true]}, "raw": {"b": 1e3}, "map": {"k": 7}, "file": {"filename": "f"}}`,
		`{"list": [{"filename": "g"}], "ref": "n0", "deep": {"x": [1, 2.5]}, "syncs": ["top", "none"]}`,
		`{"ref": {"filename": "f"}, "fail": {}}`, `{"ref": null, "u8": 256, "i32": 2147483648}`,
		`{"driver": "qcow2", "node-name": "n", "filename": "f", "extra": 1, "a": {"b": null}}`,
		`{"driver": "raw", "read-only": true, "bogus": []}`, `[1]`, `"x"`, `{"u64": 18446744073709551616}`,
		`{"f": 1e999, "i": 1.0, "s": "\u0000\ud800"}`, `{"i": 9223372036854775807, "i64": -9223372036854775808}`,
	} {
		for i := range fuzzDsts {
			f.Add(uint8(i), []byte(s))
		}
	}
	f.Fuzz(func(t *testing.T, which uint8, raw []byte) {
		d := fuzzDsts[int(which)%len(fuzzDsts)]
		fuzzcheck.Bounded(t, func() { decodeRoundTrip(t, d, raw) })
	})
}

func decodeRoundTrip(t *testing.T, d fuzzDst, raw []byte) {
	dsts := d.new()
	err := Decode(raw, "", dsts...)
	if err != nil {
		var qe *Error
		if !errors.As(err, &qe) || qe.Class != GenericError || qe.Desc == "" || qe.Desc == "Internal error" {
			t.Fatalf("%s: Decode(%q) failed with %#v", d.name, raw, err)
		}
		return
	}
	enc, ok := mergeJSON(t, dsts)
	if !ok {
		return // ±Inf from 1e999: decodable, not encodable by encoding/json
	}
	again := d.new()
	if err := Decode(enc, "", again...); err != nil {
		t.Fatalf("%s: %q decodes, its encoding %s does not: %v", d.name, raw, enc, err)
	}
	if enc2, _ := mergeJSON(t, again); !bytes.Equal(enc, enc2) {
		t.Fatalf("%s: round trip of %q changes it:\n%s\n%s", d.name, raw, enc, enc2)
	}
}

// mergeJSON encodes the destinations as one object, as a client would send
// them; ok is false when encoding/json cannot encode a value.
func mergeJSON(t *testing.T, dsts []any) (json.RawMessage, bool) {
	all := map[string]json.RawMessage{}
	for _, d := range dsts {
		b, err := json.Marshal(d)
		if err != nil {
			return nil, false
		}
		if err := json.Unmarshal(b, &all); err != nil {
			t.Fatalf("%s: %v", b, err)
		}
	}
	b, err := json.Marshal(all)
	if err != nil {
		t.Fatal(err)
	}
	return b, true
}

// MarshalJSON writes the alternate back as it came.
func (r blockdevRef) MarshalJSON() ([]byte, error) {
	switch {
	case r.Null:
		return []byte("null"), nil
	case r.Opts != nil:
		return json.Marshal(r.Opts)
	}
	return json.Marshal(r.Name)
}
