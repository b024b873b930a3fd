package chardev

import (
	"bytes"
	"encoding/base64"
	"errors"
	"strings"
	"sync"

	"github.com/blockd/blockd/pkg/qmp"
)

// defaultRingbufSize is a ringbuf's size when chardev-add gives none.
const defaultRingbufSize = 65536

// ringbuf keeps the last size bytes written to it; a read takes the
// oldest. The memory grows with what is written, never beyond size, so
// that a huge size costs nothing until it is filled.
type ringbuf struct {
	size uint64 // a power of two, or 0 (qsd takes 0; blockd keeps nothing)

	mu   sync.Mutex
	data []byte // oldest first
}

func newRingbuf(size *int64) (*ringbuf, error) {
	n := uint64(defaultRingbufSize)
	if size != nil {
		n = uint64(*size) // compat(qsd-7.2): a negative size is a huge one, and so not a power of two
	}
	if n&(n-1) != 0 {
		return nil, errors.New("size of ringbuf chardev must be power of two")
	}
	return &ringbuf{size: n}, nil
}

func (*ringbuf) filename() string { return "" }
func (*ringbuf) close() error     { return nil }

// write appends p, dropping the oldest bytes beyond size.
func (r *ringbuf) write(p []byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.data = append(r.data, p...)
	if over := uint64(len(r.data)); over > r.size {
		r.data = r.data[over-r.size:]
	}
}

// read takes up to n of the oldest bytes.
func (r *ringbuf) read(n int64) []byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	n = min(n, int64(len(r.data)))
	out := bytes.Clone(r.data[:n])
	r.data = r.data[n:]
	if len(r.data) == 0 {
		r.data = nil // let the array go
	}
	return out
}

// DataFormat is QMP's DataFormat.
type DataFormat string

// EnumValues implements qmp.Enum.
func (DataFormat) EnumValues() []string { return []string{"utf8", "base64"} }

// encodeWrite turns ringbuf-write's data into the bytes qsd writes. utf8:
// the string as QEMU holds it, in modified UTF-8 (U+0000 as C0 80).
// base64: decoded as GLib decodes, after QEMU's check of the alphabet.
func encodeWrite(data string, f *DataFormat) ([]byte, error) {
	if f == nil || *f == "utf8" {
		return []byte(strings.ReplaceAll(data, "\x00", "\xc0\x80")), nil
	}
	return decodeBase64(data)
}

// decodeRead turns bytes read from a ringbuf into ringbuf-read's reply.
// utf8: what QEMU's JSON writer makes of the bytes as a C string (cut at
// the first NUL, invalid sequences as U+FFFD). base64: standard, padded.
func decodeRead(p []byte, f *DataFormat) string {
	if f == nil || *f == "utf8" {
		return qmp.CString(p)
	}
	return base64.StdEncoding.EncodeToString(p)
}

const base64Alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

// decodeBase64 decodes s as qsd does: QEMU accepts only the alphabet,
// '=' and newlines, anywhere; GLib then skips newlines, takes '=' as a
// zero digit, writes each group of four digits as three bytes less one
// for each '=' among its last two digits, and drops an incomplete group.
func decodeBase64(s string) ([]byte, error) {
	for i := 0; i < len(s); i++ {
		if strings.IndexByte(base64Alphabet+"=\n", s[i]) < 0 {
			return nil, errors.New("Base64 data contains invalid characters")
		}
	}
	var (
		out        []byte
		v          uint32
		digits     int
		last, prev byte
	)
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c == '\n' {
			continue
		}
		v = v<<6 | uint32(max(strings.IndexByte(base64Alphabet, c), 0))
		prev, last = last, c
		if digits++; digits < 4 {
			continue
		}
		out = append(out, byte(v>>16))
		if prev != '=' {
			out = append(out, byte(v>>8))
		}
		if last != '=' {
			out = append(out, byte(v))
		}
		v, digits = 0, 0
	}
	return out, nil
}
