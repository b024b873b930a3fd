package qmp

import (
	"math"
	"sort"
	"strconv"
	"unicode/utf8"
)

// kind is the type of a parsed JSON value. Numbers keep the three
// representations QEMU keeps: a signed 64-bit integer, an unsigned one for
// the range above it, and a double for everything else.
type kind uint8

const (
	kindNull kind = iota
	kindBool
	kindInt    // int64(n)
	kindUint   // n, only for values above math.MaxInt64
	kindFloat  // math.Float64frombits(n)
	kindString // s
	kindArray  // elems
	kindObject // elems holds key, value, key, value…; keys are kindString
)

// value is one parsed JSON value. It is small on purpose: a message of
// MaxMessageSize bytes may hold that many scalars.
type value struct {
	kind kind
	// fixed marks an object whose members are already in wire order (the
	// reply and event envelopes); the encoder never reorders it.
	fixed bool
	n     uint64
	s     string
	elems []value
}

func nullValue() value           { return value{kind: kindNull} }
func boolValue(b bool) value     { v := value{kind: kindBool}; v.setBool(b); return v }
func intValue(i int64) value     { return value{kind: kindInt, n: uint64(i)} }
func floatValue(f float64) value { return value{kind: kindFloat, n: math.Float64bits(f)} }
func stringValue(s string) value { return value{kind: kindString, s: s} }

func uintValue(u uint64) value {
	if u <= math.MaxInt64 {
		return intValue(int64(u))
	}
	return value{kind: kindUint, n: u}
}

// fixedObject builds an object whose members are written in the given order.
func fixedObject(kv ...value) value {
	return value{kind: kindObject, fixed: true, elems: kv}
}

func (v *value) setBool(b bool) {
	v.n = 0
	if b {
		v.n = 1
	}
}

func (v *value) boolean() bool    { return v.n != 0 }
func (v *value) int64() int64     { return int64(v.n) }
func (v *value) float64() float64 { return math.Float64frombits(v.n) }

// numMembers is the number of members of an object.
func (v *value) numMembers() int { return len(v.elems) / 2 }

// member returns the i-th key and value of an object.
func (v *value) member(i int) (string, *value) {
	return v.elems[2*i].s, &v.elems[2*i+1]
}

// find returns the index of the member named key, or -1.
func (v *value) find(key string) int {
	for i := 0; i < len(v.elems); i += 2 {
		if v.elems[i].s == key {
			return i / 2
		}
	}
	return -1
}

// get returns the member named key, or nil.
func (v *value) get(key string) *value {
	if i := v.find(key); i >= 0 {
		return &v.elems[2*i+1]
	}
	return nil
}

// qdictBucket is the bucket of QEMU's QDict (512 buckets) that key hashes to.
// qsd writes an object bucket by bucket and, within a bucket, the member
// inserted last first; that is the member order seen in every transcript
// ({"micro", "minor", "major"}, {"return", "id"}, {"id", "error"}, …).
// compat(qsd-7.2): qmp-protocol.md section 1, "Member order".
func qdictBucket(key string) uint32 {
	n := len(key)
	for i := 0; i < len(key); i++ {
		if key[i] == 0 {
			n++ // QEMU stores U+0000 as the two bytes C0 80
		}
	}
	h := uint32(0x238F13AF) * uint32(n)
	j := 0
	add := func(b byte) {
		h += uint32(b) << (uint(j) * 5 % 24)
		j++
	}
	for i := 0; i < len(key); i++ {
		if key[i] == 0 {
			add(0xC0)
			add(0x80)
			continue
		}
		add(key[i])
	}
	return (1103515243*h + 12345) % 512
}

// qdictOrder returns the member indexes of object v in the order qsd would
// iterate them.
func qdictOrder(v *value) []int {
	n := v.numMembers()
	idx := make([]int, n)
	buckets := make([]uint32, n)
	for i := range idx {
		idx[i] = i
		buckets[i] = qdictBucket(v.elems[2*i].s)
	}
	sort.SliceStable(idx, func(a, b int) bool {
		ia, ib := idx[a], idx[b]
		if buckets[ia] != buckets[ib] {
			return buckets[ia] < buckets[ib]
		}
		return ia > ib
	})
	return idx
}

// format selects one of the three ways a value is written.
type format uint8

const (
	// formatCompact is qsd's wire format: `", "` between members, `": "`
	// after keys, everything on one line.
	formatCompact format = iota
	// formatPretty is qsd's pretty=on: one member per line, four spaces
	// per level, CRLF line ends.
	formatPretty
	// formatArgs is plain compact JSON as handed to handlers. Doubles keep
	// a fraction or exponent so that 1e3 still reads as a double and is
	// rejected where an integer is expected, as QEMU does.
	formatArgs
)

// encoder appends values to buf.
type encoder struct {
	buf []byte
	f   format
	// keepOrder writes object members in the order they were built
	// (Go's encoding order) instead of qsd's.
	keepOrder bool
}

func (e *encoder) newline(indent int) {
	e.buf = append(e.buf, '\r', '\n')
	for i := 0; i < indent; i++ {
		e.buf = append(e.buf, "    "...)
	}
}

func (e *encoder) value(v *value, indent int) {
	switch v.kind {
	case kindNull:
		e.buf = append(e.buf, "null"...)
	case kindBool:
		if v.boolean() {
			e.buf = append(e.buf, "true"...)
		} else {
			e.buf = append(e.buf, "false"...)
		}
	case kindInt:
		e.buf = strconv.AppendInt(e.buf, v.int64(), 10)
	case kindUint:
		e.buf = strconv.AppendUint(e.buf, v.n, 10)
	case kindFloat:
		if e.f == formatArgs {
			e.buf = appendArgsDouble(e.buf, v.float64())
		} else {
			e.buf = appendWireDouble(e.buf, v.float64())
		}
	case kindString:
		e.buf = appendQuoted(e.buf, v.s)
	case kindArray:
		e.buf = append(e.buf, '[')
		for i := range v.elems {
			if i > 0 {
				e.sep()
			}
			if e.f == formatPretty {
				e.newline(indent + 1)
			}
			e.value(&v.elems[i], indent+1)
		}
		if e.f == formatPretty {
			e.newline(indent)
		}
		e.buf = append(e.buf, ']')
	case kindObject:
		e.buf = append(e.buf, '{')
		var order []int
		if !v.fixed && !e.keepOrder && e.f != formatArgs {
			order = qdictOrder(v)
		}
		for i := 0; i < v.numMembers(); i++ {
			j := i
			if order != nil {
				j = order[i]
			}
			if i > 0 {
				e.sep()
			}
			if e.f == formatPretty {
				e.newline(indent + 1)
			}
			k, m := v.member(j)
			e.buf = appendQuoted(e.buf, k)
			if e.f == formatArgs {
				e.buf = append(e.buf, ':')
			} else {
				e.buf = append(e.buf, ':', ' ')
			}
			e.value(m, indent+1)
		}
		if e.f == formatPretty {
			e.newline(indent)
		}
		e.buf = append(e.buf, '}')
	}
}

func (e *encoder) sep() {
	switch e.f {
	case formatCompact:
		e.buf = append(e.buf, ',', ' ')
	default:
		e.buf = append(e.buf, ',')
	}
}

// message renders one complete wire message: the value and the CRLF that
// ends every line qsd sends.
func renderMessage(v *value, pretty, keepOrder bool) []byte {
	e := encoder{f: formatCompact, keepOrder: keepOrder}
	if pretty {
		e.f = formatPretty
	}
	e.value(v, 0)
	e.buf = append(e.buf, '\r', '\n')
	return e.buf
}

// renderArgs renders v as plain JSON for a handler.
func renderArgs(v *value) []byte {
	e := encoder{f: formatArgs}
	e.value(v, 0)
	return e.buf
}

// appendWireDouble formats f like C's "%.17g", which is what QEMU prints
// (1e3 -> 1000, 2^64 -> 1.8446744073709552e+19, -2^63-1 ->
// -9.2233720368547758e+18). compat(qsd-7.2): transcript P-3.
func appendWireDouble(buf []byte, f float64) []byte {
	switch {
	case math.IsInf(f, 1):
		return append(buf, "inf"...)
	case math.IsInf(f, -1):
		return append(buf, "-inf"...)
	case math.IsNaN(f):
		return append(buf, "nan"...)
	}
	return strconv.AppendFloat(buf, f, 'g', 17, 64)
}

// appendArgsDouble formats f as valid JSON that still reads as a double:
// 1000.0, not 1000. Infinities (from literals such as 1e999) become 1e999.
func appendArgsDouble(buf []byte, f float64) []byte {
	switch {
	case math.IsInf(f, 1):
		return append(buf, "1e999"...)
	case math.IsInf(f, -1):
		return append(buf, "-1e999"...)
	case math.IsNaN(f):
		return append(buf, "null"...)
	}
	start := len(buf)
	buf = strconv.AppendFloat(buf, f, 'g', -1, 64)
	for _, c := range buf[start:] {
		if c == '.' || c == 'e' {
			return buf
		}
	}
	return append(buf, '.', '0')
}

const hexDigits = "0123456789ABCDEF"

func appendU4(buf []byte, r rune) []byte {
	return append(buf, '\\', 'u',
		hexDigits[r>>12&0xF], hexDigits[r>>8&0xF], hexDigits[r>>4&0xF], hexDigits[r&0xF])
}

// appendQuoted appends s as a JSON string the way qsd writes strings: the
// short escapes for " \ \b \f \n \r \t, \uXXXX with upper-case hex for
// every other control character, DEL and every non-ASCII character
// (surrogate pairs beyond the BMP), nothing else escaped (no HTML escaping,
// '/' as is). Invalid UTF-8 becomes U+FFFD.
func appendQuoted(buf []byte, s string) []byte {
	buf = append(buf, '"')
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			i++
			switch c {
			case '"':
				buf = append(buf, '\\', '"')
			case '\\':
				buf = append(buf, '\\', '\\')
			case '\b':
				buf = append(buf, '\\', 'b')
			case '\f':
				buf = append(buf, '\\', 'f')
			case '\n':
				buf = append(buf, '\\', 'n')
			case '\r':
				buf = append(buf, '\\', 'r')
			case '\t':
				buf = append(buf, '\\', 't')
			default:
				if c < 0x20 || c == 0x7F {
					buf = appendU4(buf, rune(c))
				} else {
					buf = append(buf, c)
				}
			}
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		i += size
		if r > 0xFFFF {
			r -= 0x10000
			buf = appendU4(buf, 0xD800+(r>>10))
			buf = appendU4(buf, 0xDC00+(r&0x3FF))
		} else {
			buf = appendU4(buf, r)
		}
	}
	return append(buf, '"')
}

// toAny converts v to the Go value encoding/json would produce for it
// (numbers as float64).
func toAny(v *value) any {
	switch v.kind {
	case kindBool:
		return v.boolean()
	case kindInt:
		return float64(v.int64())
	case kindUint:
		return float64(v.n)
	case kindFloat:
		return v.float64()
	case kindString:
		return v.s
	case kindArray:
		a := make([]any, len(v.elems))
		for i := range v.elems {
			a[i] = toAny(&v.elems[i])
		}
		return a
	case kindObject:
		m := make(map[string]any, v.numMembers())
		for i := 0; i < v.numMembers(); i++ {
			k, mv := v.member(i)
			m[k] = toAny(mv)
		}
		return m
	}
	return nil
}
