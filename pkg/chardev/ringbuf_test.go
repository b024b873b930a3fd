package chardev

import (
	"testing"
)

func TestRingbufKeepsTheNewest(t *testing.T) {
	size := int64(4)
	rb, err := newRingbuf(&size)
	if err != nil {
		t.Fatal(err)
	}
	rb.write([]byte("abcdef"))
	rb.write([]byte("g"))
	if got := string(rb.read(2)); got != "de" {
		t.Errorf("read(2) = %q, want de (the oldest kept)", got)
	}
	if got := string(rb.read(100)); got != "fg" {
		t.Errorf("read(100) = %q, want fg", got)
	}
	if got := rb.read(1); len(got) != 0 {
		t.Errorf("read of an empty ringbuf = %q", got)
	}
}

func TestRingbufSize(t *testing.T) {
	for _, c := range []struct {
		size int64
		ok   bool
	}{{1, true}, {0, true}, {3, false}, {-1, false}, {1 << 40, true}} {
		_, err := newRingbuf(&c.size)
		if (err == nil) != c.ok {
			t.Errorf("size %d: err %v, want ok=%v", c.size, err, c.ok)
		}
	}
}

// TestDecodeBase64 holds GLib's decoding of odd input, as qsd 7.2 gives it
// (the iotest TestRingbuf checks the same against the daemon).
func TestDecodeBase64(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"YWJj", "abc"},
		{"YQ==", "a"},
		{"QQ==QUJD", "AABC"},      // padding mid-stream ends a group only
		{"Q=Q=\nQUJ", "\x40\x04"}, // '=' is a zero digit; an incomplete group is dropped
		{"", ""},
	} {
		got, err := decodeBase64(c.in)
		if err != nil || string(got) != c.want {
			t.Errorf("decodeBase64(%q) = %q, %v; want %q", c.in, got, err, c.want)
		}
	}
	for _, bad := range []string{"QU JD", "QUJD\x00", "QUJD€"} {
		if _, err := decodeBase64(bad); err == nil || err.Error() != "Base64 data contains invalid characters" {
			t.Errorf("decodeBase64(%q): %v", bad, err)
		}
	}
}
