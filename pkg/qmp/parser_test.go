package qmp

import (
	"strings"
	"testing"
)

// parseAll feeds in to a fresh parser, in chunks of size chunk (0: all at
// once), and returns every value (written as qsd writes it) or "ERR: desc".
func parseAll(t *testing.T, in string, chunk int) []string {
	t.Helper()
	p := newStreamParser(0)
	var out []string
	emit := func(v *value, perr string) bool {
		if perr != "" {
			out = append(out, "ERR: "+perr)
			return true
		}
		b := renderMessage(v, false, false)
		out = append(out, strings.TrimSuffix(string(b), "\r\n"))
		return true
	}
	data := []byte(in)
	if chunk <= 0 {
		chunk = len(data) + 1
	}
	for len(data) > 0 {
		n := min(chunk, len(data))
		if err := p.feed(data[:n], emit); err != nil {
			t.Fatalf("feed: %v", err)
		}
		data = data[n:]
	}
	return out
}

func TestParser_Stream(t *testing.T) {
	const vers = `{"execute": "query-version"}`
	tests := []struct {
		name string
		in   string
		want []string
	}{
		{"object", "{\"execute\": \"query-version\"}\n", []string{vers}},
		{"no newline needed after an object", `{"execute":"query-version"}`, []string{vers}},
		{"spans lines", "{\"execute\": \"query-version\"\n}\n", []string{vers}},
		{"two on a line", `{"a": 1} {"b": 2}`, []string{`{"a": 1}`, `{"b": 2}`}},
		{"packed", `{"a":1}{"b":2}[3]`, []string{`{"a": 1}`, `{"b": 2}`, `[3]`}},
		{"blank lines", "\n\n  \r\n\t\n", nil},
		{"array", "[1,2]\n", []string{"[1, 2]"}},
		{"string", "\"str\"\n", []string{`"str"`}},
		{"single quotes", `{'execute': 'query-version', 'id': 'sq'}`, []string{`{"execute": "query-version", "id": "sq"}`}},
		{"quotes inside other quotes", `['a"b', "c'd", 'e\'f', "g\"h"]`, []string{`["a\"b", "c'd", "e'f", "g\"h"]`}},
		{"keywords", "[true, false, null]", []string{"[true, false, null]"}},
		{"empty containers", `[{}, [], {"a": []}]`, []string{`[{}, [], {"a": []}]`}},
		{"nested order kept by qdict order", `{"id": 1, "return": 2}`, []string{`{"return": 2, "id": 1}`}},

		// compat(qsd-7.2): P-1.
		{"trailing comma", "{\"execute\": \"query-version\", }\n", []string{"ERR: JSON parse error, expecting value"}},
		{"unquoted", "{execute: query-version}\n", []string{
			"ERR: JSON parse error, stray '-v'",
			"ERR: JSON parse error, expecting value",
		}},
		{"closers", "}}}\n", []string{
			"ERR: JSON parse error, expecting value",
			"ERR: JSON parse error, expecting value",
			"ERR: JSON parse error, expecting value",
		}},
		{"garbage after a value", "{\"execute\":\"query-version\",\"id\":\"g\"} garbage\n", []string{
			`{"execute": "query-version", "id": "g"}`,
			"ERR: JSON parse error, invalid keyword 'garbage'",
		}},
		{"duplicate key", `{"execute":"query-version", "execute":"quit", "id":"dup"}`, []string{"ERR: JSON parse error, duplicate key"}},
		{"missing colon", `{"a" 1}`, []string{"ERR: JSON parse error, missing : in object pair"}},
		{"missing comma in object", `{"a": 1 "b": 2}`, []string{"ERR: JSON parse error, expected separator in dict"}},
		{"missing comma in array", "[1 2]", []string{"ERR: JSON parse error, expected separator in list"}},
		{"number key", `{1: 2}`, []string{"ERR: JSON parse error, key is not a string in object"}},
		{"array key", `{[1]: 2}`, []string{"ERR: JSON parse error, key is not a string in object"}},
		{"mismatched closer", "[}", []string{"ERR: JSON parse error, expecting value"}},
		{"mismatched closer after value", "[1}", []string{"ERR: JSON parse error, expected separator in list"}},
		{"crossed", "{[}]", []string{"ERR: JSON parse error, expecting value"}},
		{"error inside key", `{{"a" 1}: 2}`, []string{"ERR: JSON parse error, missing : in object pair"}},
		{"leading zero", "01\n", []string{"ERR: JSON parse error, stray '01'"}},
		{"bare minus", "-x\n", []string{"ERR: JSON parse error, stray '-x'"}},
		{"fraction without digits", "1.x\n", []string{"ERR: JSON parse error, stray '1.x'"}},
		{"exponent without digits", "1e+x\n", []string{"ERR: JSON parse error, stray '1e+x'"}},
		{"zero then e", "0e5\n", []string{"0", "ERR: JSON parse error, invalid keyword 'e'", "5"}},
		{"capital keyword", "True\n[1]", []string{"ERR: JSON parse error, stray 'T'", "[1]"}},
		{"unknown keyword", "nul\n", []string{"ERR: JSON parse error, invalid keyword 'nul'"}},
		{"recovery stops at structural chars", "{\"a\": -} [2]\n", []string{"ERR: JSON parse error, stray '-}'", "[2]"}},
		{"recovery skips to newline", "@abc def\n[3]", []string{"ERR: JSON parse error, stray '@'", "[3]"}},
		{"control character", "\x01\n", []string{"ERR: JSON parse error, stray '\x01'"}},
		{"impossible byte", "\xff\n", []string{"ERR: JSON parse error, stray '\xff'"}},
		{"NUL ends the stray text", "-\x00\n", []string{`ERR: JSON parse error, stray '-'`}},
		{"newline in string", "\"ab\ncd\"\n[4]", []string{"ERR: JSON parse error, stray '\"ab\n'", "[4]"}},

		// Numbers. compat(qsd-7.2): P-3.
		{"int", "[0, -0, 7, -9223372036854775808, 9223372036854775807]",
			[]string{"[0, 0, 7, -9223372036854775808, 9223372036854775807]"}},
		{"uint", "18446744073709551615\n", []string{"18446744073709551615"}},
		{"beyond uint", "18446744073709551616\n", []string{"1.8446744073709552e+19"}},
		{"below int", "-9223372036854775809\n", []string{"-9.2233720368547758e+18"}},
		{"exponent", "1e3\n", []string{"1000"}},
		{"fraction", "[1.5, 0.1, -0.0, 2.50]", []string{"[1.5, 0.10000000000000001, -0, 2.5]"}},
		{"huge", "[1e999, -1e999]", []string{"[inf, -inf]"}},

		// Strings.
		{"escapes", `"\"\\\/\b\f\n\r\t\'"`, []string{`"\"\\/\b\f\n\r\t'"`}},
		{"unicode escape", `"u\u00e9"`, []string{`"u\u00E9"`}},
		{"raw utf-8", "\"u\xc3\xa9\"", []string{`"u\u00E9"`}},
		{"surrogate pair", `"\uD83D\uDE00"`, []string{`"\uD83D\uDE00"`}},
		{"astral raw", "\"\xf0\x9f\x98\x80\"", []string{`"\uD83D\uDE00"`}},
		{"nul escape", `"a\u0000b"`, []string{`"a\u0000b"`}},
		{"modified utf-8 nul", "\"a\xc0\x80b\"", []string{`"a\u0000b"`}},
		{"del", "\"\x7f\"", []string{`"\u007F"`}},
		{"no html escaping", `"<a&b>"`, []string{`"<a&b>"`}},
		{"lone surrogate", `"\uD800"`, []string{`ERR: JSON parse error, \uD800 is not a valid Unicode character`}},
		{"bad trailing surrogate", `"\uD800\u0041"`, []string{`ERR: JSON parse error, \uD800 is not a valid Unicode character`}},
		{"noncharacter", `"\uFFFF"`, []string{`ERR: JSON parse error, \uFFFF is not a valid Unicode character`}},
		{"short escape", `"\u12"`, []string{`ERR: JSON parse error, \u12" is not a valid Unicode character`}},
		{"bad hex", `"\u12G4x"`, []string{`ERR: JSON parse error, \u12G4 is not a valid Unicode character`}},
		{"bad escape", `"\x"`, []string{"ERR: JSON parse error, invalid escape sequence in string"}},
		{"bad utf-8", "\"\xc3(\"", []string{"ERR: JSON parse error, invalid UTF-8 sequence in string"}},
		{"overlong utf-8", "\"\xc1\xbf\"", []string{"ERR: JSON parse error, invalid UTF-8 sequence in string"}},
		{"raw noncharacter", "\"\xef\xbf\xbf\"", []string{"ERR: JSON parse error, invalid UTF-8 sequence in string"}},
		{"first error wins", `{"a": "\x", "a": 1}`, []string{"ERR: JSON parse error, invalid escape sequence in string"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, chunk := range []int{0, 1, 3} {
				got := parseAll(t, tt.in, chunk)
				if strings.Join(got, "\n") != strings.Join(tt.want, "\n") {
					t.Errorf("chunk %d:\n got %q\nwant %q", chunk, got, tt.want)
				}
			}
		})
	}
}

// TestParser_Nesting pins the depth limit and what follows it: qsd drops
// the pending value at the 1024th open bracket and carries on lexing.
// compat(qsd-7.2): P-3.
func TestParser_Nesting(t *testing.T) {
	deep := func(n int) string {
		return `{"execute":"query-version","id":` + strings.Repeat("[", n) + strings.Repeat("]", n) + "}\n"
	}
	got := parseAll(t, deep(1100), 0)
	if len(got) != 1+1+1025 {
		t.Fatalf("got %d outputs", len(got))
	}
	if got[0] != "ERR: JSON nesting depth limit exceeded" {
		t.Errorf("first: %q", got[0])
	}
	if want := strings.Repeat("[", 76) + strings.Repeat("]", 76); got[1] != want {
		t.Errorf("second: %q", got[1])
	}
	for _, g := range got[2:] {
		if g != "ERR: JSON parse error, expecting value" {
			t.Fatalf("rest: %q", g)
		}
	}

	got = parseAll(t, deep(1000), 0)
	if len(got) != 1 || !strings.HasPrefix(got[0], `{"execute": "query-version", "id": [[[`) {
		t.Fatalf("1000 levels: %.80q", got)
	}
}

func TestParser_MaxSize(t *testing.T) {
	p := newStreamParser(1000)
	emit := func(*value, string) bool { return true }
	if err := p.feed([]byte(`{"a": "`+strings.Repeat("x", 900)+`"}`), emit); err != nil {
		t.Fatalf("within the limit: %v", err)
	}
	if err := p.feed([]byte(`{"a": "`+strings.Repeat("x", 1000)), emit); err != errTooLarge {
		t.Fatalf("long string: got %v", err)
	}
	p = newStreamParser(1000)
	if err := p.feed([]byte("["+strings.Repeat("1,", 600)), emit); err != errTooLarge {
		t.Fatalf("many tokens: got %v", err)
	}
	p = newStreamParser(1000)
	// Skipped garbage is not a value and does not count.
	if err := p.feed([]byte("@"+strings.Repeat("x", 5000)+"\n[1]"), emit); err != nil {
		t.Fatalf("recovery: %v", err)
	}
}

func TestParseJSON(t *testing.T) {
	for _, in := range []string{`{}`, ` 5 `, `5`, `"x"`, `[1, {"a": null}]`, `-1.5e3`} {
		if _, err := parseJSON([]byte(in), false); err != nil {
			t.Errorf("%s: %v", in, err)
		}
	}
	for _, in := range []string{``, `{`, `{} {}`, `5 6`, `"x`, `{"a":1,"a":2}`, `nul`} {
		if _, err := parseJSON([]byte(in), false); err == nil {
			t.Errorf("%s: no error", in)
		}
	}
	if _, err := parseJSON([]byte(`{"a":1,"a":2}`), true); err != nil {
		t.Errorf("allowDup: %v", err)
	}
}
