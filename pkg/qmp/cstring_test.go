package qmp

import "testing"

func TestCString(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"abc", "abc"},
		{"ab\x00cd", "ab"},
		{"\xc0\x80x", "\x00x"}, // modified UTF-8 NUL
		{"\xff\xed\xef\xbf\xbf", "\uFFFD\uFFFD\uFFFD"}, // stray byte, cut sequence, noncharacter
		{"\xe2\x82", "\uFFFD"},                         // one cut sequence, one replacement
		{"\xac\xf0\x9f\x98\x80", "\uFFFD😀"},
	} {
		if got := CString([]byte(c.in)); got != c.want {
			t.Errorf("CString(%q) = %q, want %q", c.in, got, c.want)
		}
	}
}
