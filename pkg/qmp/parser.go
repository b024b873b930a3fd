package qmp

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"strconv"
	"unicode/utf8"
)

// The stream parser turns the bytes a client sends into JSON values and
// parse errors, one at a time, with QEMU's grammar, limits, messages and
// error recovery. It has three layers, as QEMU's has:
//
//   - the lexer cuts bytes into tokens. On a byte that cannot continue the
//     current token it reports a "stray" error and skips input up to the next
//     structural character or control character.
//   - the streamer counts braces and brackets. A value ends when they balance
//     (or one count goes negative); a lone scalar is a value by itself.
//   - the parser builds the value token by token and remembers the first
//     syntax error. It is reported when the streamer says the value ended,
//     so one bad line can give several errors (`}}}` gives three).
//
// compat(qsd-7.2): qmp-protocol.md sections 1 and 6, transcripts P-1, P-3.

// QEMU's parser limits.
const (
	maxNesting    = 1024     // braces plus brackets open at once
	maxTokenCount = 2 << 20  // tokens in one value
	maxTokenBytes = 64 << 20 // bytes of the tokens of one value
)

// errTooLarge is returned by feed when one value exceeds the size limit.
var errTooLarge = errors.New("JSON value exceeds the size limit")

// errStopped is returned by feed when the emit callback asked to stop.
var errStopped = errors.New("stopped")

type tokKind uint8

const (
	tokLCurly tokKind = iota + 1
	tokRCurly
	tokLSquare
	tokRSquare
	tokColon
	tokComma
	tokInt
	tokFloat
	tokKeyword
	tokString
)

type lexState uint8

const (
	lexStart lexState = iota
	lexRecovery
	lexDQ     // in a "string"
	lexDQEsc  // after a backslash in a "string"
	lexSQ     // in a 'string'
	lexSQEsc  // after a backslash in a 'string'
	lexZero   // 0 or -0
	lexDigits // integer digits
	lexSign   // -
	lexFrac   // after the decimal point, before a digit
	lexFracDigits
	lexExp     // after e or E
	lexExpSign // after e+ or e-
	lexExpDigits
	lexKeyword
)

type frameState uint8

const (
	arrFirst frameState = iota // after [: a value or ]
	arrNext                    // after ,: a value
	arrAfter                   // after a value: , or ]
	objFirst                   // after {: a key or }
	objKey                     // after ,: a key
	objColon                   // after a key: :
	objValue                   // after :: a value
	objAfter                   // after a value: , or }
)

type frame struct {
	v    value
	st   frameState
	key  string
	keys map[string]struct{} // member names, once the object is large
}

// streamParser is one client's parser. The zero value is not ready: use
// newStreamParser.
type streamParser struct {
	// maxSize bounds the bytes of one value's tokens (0: no bound). Going
	// past it is fatal: feed returns errTooLarge.
	maxSize int
	// allowDup accepts duplicate keys (for parsing our own encoding/json
	// output, never client input).
	allowDup bool

	// lexer
	state lexState
	tok   []byte

	// streamer
	braces, brackets int
	ntokens          int
	size             int

	// parser
	stack   []frame
	perr    string // first syntax error of the pending value
	result  value
	haveRes bool
}

func newStreamParser(maxSize int) *streamParser {
	return &streamParser{maxSize: maxSize}
}

// emitFunc receives each value or parse error ("JSON parse error, …"), in
// input order. It returns false to stop parsing.
type emitFunc func(v *value, perr string) bool

// feed consumes p, calling emit for every value or error completed in it.
// Incomplete input is kept for the next call. It returns errTooLarge when a
// value outgrows maxSize (the parser is then unusable) and errStopped when
// emit returned false.
func (p *streamParser) feed(data []byte, emit emitFunc) error {
	for _, b := range data {
		for {
			consumed, err := p.lexByte(b, emit)
			if err != nil {
				return err
			}
			if consumed {
				break
			}
		}
	}
	return nil
}

// lexByte advances the lexer by one byte. It reports whether b was
// consumed; when it was not (the byte ended the previous token), it must be
// fed again.
func (p *streamParser) lexByte(b byte, emit emitFunc) (bool, error) {
	switch p.state {
	case lexStart:
		switch {
		case b == ' ' || b == '\t' || b == '\r' || b == '\n':
			return true, nil
		case b == '"':
			p.begin(b, lexDQ)
		case b == '\'':
			p.begin(b, lexSQ)
		case b == '0':
			p.begin(b, lexZero)
		case b >= '1' && b <= '9':
			p.begin(b, lexDigits)
		case b == '-':
			p.begin(b, lexSign)
		case b >= 'a' && b <= 'z':
			p.begin(b, lexKeyword)
		case b == '{':
			return true, p.token(tokLCurly, nil, emit)
		case b == '}':
			return true, p.token(tokRCurly, nil, emit)
		case b == '[':
			return true, p.token(tokLSquare, nil, emit)
		case b == ']':
			return true, p.token(tokRSquare, nil, emit)
		case b == ':':
			return true, p.token(tokColon, nil, emit)
		case b == ',':
			return true, p.token(tokComma, nil, emit)
		default:
			p.tok = append(p.tok[:0], b)
			return true, p.stray(emit)
		}
		return true, p.checkSize()

	case lexRecovery:
		// Skip up to a structural character or a control character other
		// than tab, or the bytes 0xFE and 0xFF that never occur in UTF-8:
		// clients send those to resynchronise.
		switch {
		case b == '{' || b == '}' || b == '[' || b == ']' || b == ':' || b == ',',
			b < 0x20 && b != '\t', b >= 0xFE:
			p.state = lexStart
			return false, nil
		}
		return true, nil

	case lexDQ, lexSQ:
		if b < 0x20 || b >= 0xFE {
			return true, p.strayWith(b, emit)
		}
		p.tok = append(p.tok, b)
		switch {
		case b == '\\':
			p.state++ // lexDQEsc or lexSQEsc
		case (b == '"' && p.state == lexDQ) || (b == '\'' && p.state == lexSQ):
			return true, p.token(tokString, p.tok, emit)
		}
		return true, p.checkSize()

	case lexDQEsc, lexSQEsc:
		// Any character may follow a backslash here; the parser rejects
		// the ones that are no escape.
		if b < 0x20 || b >= 0xFE {
			return true, p.strayWith(b, emit)
		}
		p.tok = append(p.tok, b)
		p.state--
		return true, p.checkSize()

	case lexZero:
		switch {
		case b >= '0' && b <= '9':
			return true, p.strayWith(b, emit)
		case b == '.':
			return true, p.grow(b, lexFrac)
		}
		// No exponent after a bare zero: "0e5" is 0, then the keyword e,
		// then 5, as in QEMU.
		return false, p.token(tokInt, p.tok, emit)

	case lexDigits:
		switch {
		case b >= '0' && b <= '9':
			return true, p.grow(b, lexDigits)
		case b == '.':
			return true, p.grow(b, lexFrac)
		case b == 'e' || b == 'E':
			return true, p.grow(b, lexExp)
		}
		return false, p.token(tokInt, p.tok, emit)

	case lexSign:
		switch {
		case b == '0':
			return true, p.grow(b, lexZero)
		case b >= '1' && b <= '9':
			return true, p.grow(b, lexDigits)
		}
		return true, p.strayWith(b, emit)

	case lexFrac:
		if b >= '0' && b <= '9' {
			return true, p.grow(b, lexFracDigits)
		}
		return true, p.strayWith(b, emit)

	case lexFracDigits:
		switch {
		case b >= '0' && b <= '9':
			return true, p.grow(b, lexFracDigits)
		case b == 'e' || b == 'E':
			return true, p.grow(b, lexExp)
		}
		return false, p.token(tokFloat, p.tok, emit)

	case lexExp:
		switch {
		case b == '+' || b == '-':
			return true, p.grow(b, lexExpSign)
		case b >= '0' && b <= '9':
			return true, p.grow(b, lexExpDigits)
		}
		return true, p.strayWith(b, emit)

	case lexExpSign:
		if b >= '0' && b <= '9' {
			return true, p.grow(b, lexExpDigits)
		}
		return true, p.strayWith(b, emit)

	case lexExpDigits:
		if b >= '0' && b <= '9' {
			return true, p.grow(b, lexExpDigits)
		}
		return false, p.token(tokFloat, p.tok, emit)

	case lexKeyword:
		if b >= 'a' && b <= 'z' {
			return true, p.grow(b, lexKeyword)
		}
		return false, p.token(tokKeyword, p.tok, emit)
	}
	return true, nil
}

func (p *streamParser) begin(b byte, st lexState) {
	p.tok = append(p.tok[:0], b)
	p.state = st
}

func (p *streamParser) grow(b byte, st lexState) error {
	p.tok = append(p.tok, b)
	p.state = st
	return p.checkSize()
}

// checkSize enforces maxSize on the pending value plus the partial token.
func (p *streamParser) checkSize() error {
	if p.maxSize > 0 && p.size+len(p.tok) > p.maxSize {
		return errTooLarge
	}
	return nil
}

// strayWith reports the partial token plus b as a lexical error.
func (p *streamParser) strayWith(b byte, emit emitFunc) error {
	p.tok = append(p.tok, b)
	return p.stray(emit)
}

// stray reports the partial token as a lexical error, drops the pending
// value and enters recovery.
func (p *streamParser) stray(emit emitFunc) error {
	text := p.tok
	// QEMU formats the token with %s: it ends at a NUL byte.
	if i := bytes.IndexByte(text, 0); i >= 0 {
		text = text[:i]
	}
	msg := "JSON parse error, stray '" + string(text) + "'"
	p.tok = p.tok[:0]
	p.state = lexRecovery
	return p.finish(nil, msg, emit)
}

// token hands one complete token to the streamer.
func (p *streamParser) token(k tokKind, text []byte, emit emitFunc) error {
	p.state = lexStart
	defer func() {
		if cap(p.tok) > 64<<10 {
			p.tok = nil // do not keep a large buffer per connection
		} else {
			p.tok = p.tok[:0]
		}
	}()

	switch k {
	case tokLCurly:
		p.braces++
	case tokRCurly:
		p.braces--
	case tokLSquare:
		p.brackets++
	case tokRSquare:
		p.brackets--
	}
	n := len(text)
	if n == 0 {
		n = 1
	}
	switch {
	case p.size+n+1 > maxTokenBytes:
		return p.finish(nil, "JSON token size limit exceeded", emit)
	case p.ntokens+1 > maxTokenCount:
		return p.finish(nil, "JSON token count limit exceeded", emit)
	case p.braces+p.brackets > maxNesting:
		return p.finish(nil, "JSON nesting depth limit exceeded", emit)
	}
	p.size += n
	p.ntokens++
	if p.maxSize > 0 && p.size > p.maxSize {
		return errTooLarge
	}
	if p.perr == "" {
		p.parse(k, text)
	}
	if (p.braces > 0 || p.brackets > 0) && p.braces >= 0 && p.brackets >= 0 {
		return nil
	}
	if p.perr != "" || !p.haveRes {
		msg := p.perr
		if msg == "" {
			msg = "JSON parse error, expecting value" // not reached
		}
		return p.finish(nil, msg, emit)
	}
	res := p.result
	return p.finish(&res, "", emit)
}

// finish ends the pending value: emits it or the error and resets the
// streamer and the parser.
func (p *streamParser) finish(v *value, perr string, emit emitFunc) error {
	p.braces, p.brackets = 0, 0
	p.ntokens, p.size = 0, 0
	for i := range p.stack {
		p.stack[i] = frame{}
	}
	p.stack = p.stack[:0]
	p.perr = ""
	p.result = value{}
	p.haveRes = false
	if !emit(v, perr) {
		return errStopped
	}
	return nil
}

func (p *streamParser) fail(format string, a ...any) {
	if p.perr == "" {
		p.perr = "JSON parse error, " + fmt.Sprintf(format, a...)
	}
}

// parse advances the parser by one token. The transitions and messages are
// those of QEMU's recursive descent parser, run one token at a time.
func (p *streamParser) parse(k tokKind, text []byte) {
	if len(p.stack) > 0 {
		top := &p.stack[len(p.stack)-1]
		switch top.st {
		case arrFirst:
			if k == tokRSquare {
				p.pop()
				return
			}
		case arrAfter:
			switch k {
			case tokComma:
				top.st = arrNext
			case tokRSquare:
				p.pop()
			default:
				p.fail("expected separator in list")
			}
			return
		case objFirst:
			if k == tokRCurly {
				p.pop()
				return
			}
		case objColon:
			if k == tokColon {
				top.st = objValue
			} else {
				p.fail("missing : in object pair")
			}
			return
		case objAfter:
			switch k {
			case tokComma:
				top.st = objKey
			case tokRCurly:
				p.pop()
			default:
				p.fail("expected separator in dict")
			}
			return
		}
	} else if p.haveRes {
		// A complete value is always followed by the end of the message.
		p.fail("expecting value")
		return
	}

	// A value is expected (as a key, too: QEMU parses a key as any value
	// and complains afterwards when it is not a string).
	switch k {
	case tokLCurly:
		p.stack = append(p.stack, frame{v: value{kind: kindObject}, st: objFirst})
	case tokLSquare:
		p.stack = append(p.stack, frame{v: value{kind: kindArray}, st: arrFirst})
	case tokString:
		s, msg := decodeString(text)
		if msg != "" {
			p.fail("%s", msg)
			return
		}
		p.complete(stringValue(s))
	case tokInt:
		p.complete(parseInteger(text))
	case tokFloat:
		p.complete(parseDouble(text))
	case tokKeyword:
		switch string(text) {
		case "true":
			p.complete(boolValue(true))
		case "false":
			p.complete(boolValue(false))
		case "null":
			p.complete(nullValue())
		default:
			p.fail("invalid keyword '%s'", text)
		}
	default:
		p.fail("expecting value")
	}
}

func (p *streamParser) pop() {
	top := p.stack[len(p.stack)-1]
	p.stack[len(p.stack)-1] = frame{}
	p.stack = p.stack[:len(p.stack)-1]
	p.complete(top.v)
}

// complete delivers a finished value to the container being built, or makes
// it the result.
func (p *streamParser) complete(v value) {
	if len(p.stack) == 0 {
		p.result, p.haveRes = v, true
		return
	}
	top := &p.stack[len(p.stack)-1]
	switch top.st {
	case arrFirst, arrNext:
		top.v.elems = append(top.v.elems, v)
		top.st = arrAfter
	case objFirst, objKey:
		if v.kind != kindString {
			p.fail("key is not a string in object")
			return
		}
		top.key = v.s
		top.st = objColon
	case objValue:
		if !p.allowDup && top.has(top.key) {
			p.fail("duplicate key")
			return
		}
		top.add(top.key, v)
		top.st = objAfter
	}
}

func (f *frame) has(key string) bool {
	if f.keys != nil {
		_, ok := f.keys[key]
		return ok
	}
	return f.v.find(key) >= 0
}

func (f *frame) add(key string, v value) {
	f.v.elems = append(f.v.elems, stringValue(key), v)
	if f.keys == nil && len(f.v.elems) >= 32 {
		f.keys = make(map[string]struct{}, len(f.v.elems))
		for i := 0; i < len(f.v.elems); i += 2 {
			f.keys[f.v.elems[i].s] = struct{}{}
		}
	} else if f.keys != nil {
		f.keys[key] = struct{}{}
	}
}

// parseInteger converts an integer token: int64 when it fits, else uint64,
// else a double.
func parseInteger(text []byte) value {
	s := string(text)
	if i, err := strconv.ParseInt(s, 10, 64); err == nil {
		return intValue(i)
	}
	if s[0] != '-' {
		if u, err := strconv.ParseUint(s, 10, 64); err == nil {
			return uintValue(u)
		}
	}
	return parseDouble(text)
}

func parseDouble(text []byte) value {
	// Out of range gives ±Inf or 0, as strtod does.
	f, _ := strconv.ParseFloat(string(text), 64)
	if math.IsNaN(f) {
		f = 0
	}
	return floatValue(f)
}

// decodeString decodes a string token, quotes included, with QEMU's rules:
// the JSON escapes plus \', input in modified UTF-8 (U+0000 may be written
// C0 80), and no surrogates or noncharacters. It returns the error message
// on failure.
func decodeString(tok []byte) (string, string) {
	body := tok[1 : len(tok)-1]
	plain := true
	for _, c := range body {
		if c == '\\' || c >= utf8.RuneSelf {
			plain = false
			break
		}
	}
	if plain {
		return string(body), ""
	}
	out := make([]byte, 0, len(body))
	for i := 0; i < len(body); {
		c := body[i]
		if c == '\\' {
			beg := i
			i++
			e := body[i] // the lexer puts a character after every backslash
			i++
			switch e {
			case '"', '\'', '\\', '/':
				out = append(out, e)
			case 'b':
				out = append(out, '\b')
			case 'f':
				out = append(out, '\f')
			case 'n':
				out = append(out, '\n')
			case 'r':
				out = append(out, '\r')
			case 't':
				out = append(out, '\t')
			case 'u':
				cp := hex4(body, i)
				i += 4
				if cp >= 0xD800 && cp <= 0xDBFF && i+1 < len(body) && body[i] == '\\' && body[i+1] == 'u' {
					trail := hex4(body, i+2)
					if trail >= 0xDC00 && trail <= 0xDFFF {
						cp = 0x10000 + (cp&0x3FF)<<10 | trail&0x3FF
						i += 6
					} else {
						cp = -1
					}
				}
				if !validCodepoint(cp) {
					// The message quotes the escape as written, up
					// to the end of the token.
					end := 1 + i
					if end > len(tok) {
						end = len(tok)
					}
					return "", string(tok[1+beg:end]) + " is not a valid Unicode character"
				}
				out = utf8.AppendRune(out, rune(cp))
			default:
				return "", "invalid escape sequence in string"
			}
			continue
		}
		if c < utf8.RuneSelf {
			out = append(out, c)
			i++
			continue
		}
		cp, n := decodeModUTF8(body[i:])
		if cp < 0 {
			return "", "invalid UTF-8 sequence in string"
		}
		out = utf8.AppendRune(out, rune(cp))
		i += n
	}
	return string(out), ""
}

// hex4 reads four hex digits at s[i:], or returns -1.
func hex4(s []byte, i int) int {
	if i+4 > len(s) {
		return -1
	}
	cp := 0
	for _, c := range s[i : i+4] {
		var d int
		switch {
		case c >= '0' && c <= '9':
			d = int(c - '0')
		case c >= 'a' && c <= 'f':
			d = int(c-'a') + 10
		case c >= 'A' && c <= 'F':
			d = int(c-'A') + 10
		default:
			return -1
		}
		cp = cp<<4 | d
	}
	return cp
}

// validCodepoint reports whether cp is a Unicode scalar value that is not
// a noncharacter.
func validCodepoint(cp int) bool {
	switch {
	case cp < 0 || cp > 0x10FFFF:
		return false
	case cp >= 0xFDD0 && cp <= 0xFDEF, cp&0xFFFE == 0xFFFE:
		return false
	case cp >= 0xD800 && cp <= 0xDFFF:
		return false
	}
	return true
}

// decodeModUTF8 decodes one modified UTF-8 sequence at the start of s (not
// empty). It returns the code point or -1, and the bytes consumed.
func decodeModUTF8(s []byte) (int, int) {
	b := s[0]
	switch {
	case b < 0x80:
		return int(b), 1
	case b >= 0xFE, b&0x40 == 0:
		return -1, 1 // impossible byte, or a stray continuation byte
	}
	n := 0
	for mask := byte(0x80); b&mask != 0; mask >>= 1 {
		n++
	}
	cp := int(b & (0x7F >> n))
	for i := 1; i < n; i++ {
		if i >= len(s) || s[i]&0xC0 != 0x80 {
			return -1, i
		}
		cp = cp<<6 | int(s[i]&0x3F)
	}
	minCP := [...]int{0x80, 0x800, 0x10000, 0x200000, 0x4000000}
	switch {
	case !validCodepoint(cp):
		return -1, n
	case cp < minCP[n-2] && !(cp == 0 && n == 2):
		return -1, n // overlong, except C0 80 for U+0000
	}
	return cp, n
}

// parseJSON parses exactly one JSON value from data (our own encoding, or a
// handler's json.RawMessage). Trailing input other than whitespace is an
// error.
func parseJSON(data []byte, allowDup bool) (value, error) {
	p := &streamParser{allowDup: allowDup}
	var (
		res   value
		count int
		msg   string
	)
	err := p.feed(data, func(v *value, perr string) bool {
		count++
		if perr != "" {
			msg = perr
			return false
		}
		if count > 1 {
			msg = "JSON parse error, trailing data"
			return false
		}
		res = *v
		return true
	})
	if err == nil && msg == "" {
		// Flush a trailing scalar such as a number, which only a following
		// byte terminates.
		err = p.feed([]byte{' '}, func(v *value, perr string) bool {
			count++
			if perr != "" {
				msg = perr
			} else if count > 1 {
				msg = "JSON parse error, trailing data"
			} else {
				res = *v
			}
			return true
		})
	}
	switch {
	case msg != "":
		return value{}, errors.New(msg)
	case err != nil && err != errStopped:
		return value{}, err
	case count == 0 || p.state != lexStart || len(p.stack) > 0 || p.braces+p.brackets > 0:
		return value{}, errors.New("JSON parse error, premature end of input")
	}
	return res, nil
}
