package qmp

import (
	"bytes"
	"unicode/utf8"
)

// CString returns the text qsd sends for a C string holding b: the bytes
// up to the first NUL, read as modified UTF-8 (C0 80 is U+0000), with
// U+FFFD for each invalid sequence, as QEMU's JSON writer reads them.
// Commands that hand raw bytes back as a string (ringbuf-read) use it so
// that the reply matches qsd's for any bytes.
func CString(b []byte) string {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}
	out := make([]byte, 0, len(b))
	for len(b) > 0 {
		cp, n := decodeModUTF8(b)
		if cp < 0 {
			cp = utf8.RuneError
		}
		out = utf8.AppendRune(out, rune(cp))
		b = b[n:]
	}
	return string(out)
}
