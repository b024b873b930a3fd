package qmp

import (
	"bytes"
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
