package qmp

import (
	"math"
	"strings"
	"testing"
)

// TestQdictOrder pins the member orders seen in the transcripts; they all
// follow from qsd's QDict hash.
func TestQdictOrder(t *testing.T) {
	for _, tt := range []struct{ insert, want string }{
		{"major minor micro", "micro minor major"},
		{"qemu package", "qemu package"},
		{"return id", "return id"},
		{"error id", "id error"},
		{"class desc", "class desc"},
		{"timestamp event data", "timestamp event data"},
		{"seconds microseconds", "seconds microseconds"},
		{"version capabilities", "version capabilities"},
		{"id type status current-progress total-progress", "current-progress status total-progress type id"},
		{"id status", "status id"},
	} {
		v := value{kind: kindObject}
		for _, k := range strings.Fields(tt.insert) {
			v.elems = append(v.elems, stringValue(k), nullValue())
		}
		var got []string
		for _, i := range qdictOrder(&v) {
			k, _ := v.member(i)
			got = append(got, k)
		}
		if strings.Join(got, " ") != tt.want {
			t.Errorf("%s: got %v, want %s", tt.insert, got, tt.want)
		}
	}
}

func TestEncode(t *testing.T) {
	obj := func(kv ...value) value { return value{kind: kindObject, elems: kv} }
	arr := func(e ...value) value { return value{kind: kindArray, elems: e} }
	tests := []struct {
		v             value
		compact, args string
	}{
		{obj(), `{}`, `{}`},
		{arr(), `[]`, `[]`},
		{obj(stringValue("b"), intValue(1), stringValue("a"), arr(boolValue(true), nullValue())), `{"a": [true, null], "b": 1}`, `{"b":1,"a":[true,null]}`},
		{floatValue(1000), `1000`, `1000.0`},
		{floatValue(-0.0 * 1), `0`, `0.0`},
		{floatValue(math.Copysign(0, -1)), `-0`, `-0.0`},
		{floatValue(0.1), `0.10000000000000001`, `0.1`},
		{floatValue(1e21), `1e+21`, `1e+21`},
		{floatValue(math.Inf(1)), `inf`, `1e999`},
		{uintValue(math.MaxUint64), `18446744073709551615`, `18446744073709551615`},
		{uintValue(5), `5`, `5`},
		{stringValue("\"\\/\b\f\n\r\t\x00\x1f\x7f é\u2028\U0001F600<>&\xff"),
			`"\"\\/\b\f\n\r\t\u0000\u001F\u007F \u00E9\u2028\uD83D\uDE00<>&\uFFFD"`,
			`"\"\\/\b\f\n\r\t\u0000\u001F\u007F \u00E9\u2028\uD83D\uDE00<>&\uFFFD"`},
	}
	for _, tt := range tests {
		if got := strings.TrimSuffix(string(renderMessage(&tt.v, false, false)), "\r\n"); got != tt.compact {
			t.Errorf("compact: got %s, want %s", got, tt.compact)
		}
		if got := string(renderArgs(&tt.v)); got != tt.args {
			t.Errorf("args: got %s, want %s", got, tt.args)
		}
	}
	v := obj(stringValue("e"), obj(), stringValue("l"), arr(intValue(1), arr()))
	want := "{\r\n    \"e\": {\r\n    },\r\n    \"l\": [\r\n        1,\r\n        [\r\n        ]\r\n    ]\r\n}\r\n"
	if got := string(renderMessage(&v, true, true)); got != want {
		t.Errorf("pretty: got %q\nwant %q", got, want)
	}
}
