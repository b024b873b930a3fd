package nbd_test

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/blockd/blockd/pkg/nbd"
)

// A minimal NBD client for tests, written from the protocol document.

var be = binary.BigEndian

const (
	optExportName      = 1
	optAbort           = 2
	optList            = 3
	optStartTLS        = 5
	optInfo            = 6
	optGo              = 7
	optStructuredReply = 8
	optListMetaContext = 9
	optSetMetaContext  = 10

	repAck         = 1
	repServer      = 2
	repInfo        = 3
	repMetaContext = 4
	repErrUnsup    = 1<<31 + 1
	repErrPolicy   = 1<<31 + 2
	repErrInvalid  = 1<<31 + 3
	repErrUnknown  = 1<<31 + 6
	repErrTooBig   = 1<<31 + 9

	cmdRead        = 0
	cmdWrite       = 1
	cmdDisc        = 2
	cmdFlush       = 3
	cmdTrim        = 4
	cmdCache       = 5
	cmdWriteZeroes = 6
	cmdBlockStatus = 7

	flagFUA      = 1
	flagNoHole   = 2
	flagDF       = 4
	flagReqOne   = 8
	flagFastZero = 16

	chunkNone        = 0
	chunkOffsetData  = 1
	chunkOffsetHole  = 2
	chunkBlockStatus = 5
	chunkError       = 1<<15 + 1

	tfHasFlags     = 1 << 0
	tfReadOnly     = 1 << 1
	tfSendFlush    = 1 << 2
	tfSendFUA      = 1 << 3
	tfSendTrim     = 1 << 5
	tfSendZeroes   = 1 << 6
	tfSendDF       = 1 << 7
	tfMultiConn    = 1 << 8
	tfSendCache    = 1 << 10
	tfSendFastZero = 1 << 11
)

type client struct {
	t  testing.TB
	nc net.Conn
	br *bufio.Reader

	structured bool
	reads      map[uint64]uint32    // handle -> length of simple-reply reads in flight
	sent       map[uint64][2]uint64 // handle -> offset and length of reads sent
}

// optReply is one option reply.
type optReply struct {
	opt, typ uint32
	data     []byte
}

// reply is one simple reply or structured chunk.
type reply struct {
	simple  bool
	errno   uint32 // simple reply error, or error chunk error
	handle  uint64
	flags   uint16
	typ     uint16
	payload []byte // simple read data or chunk payload
}

func (r reply) done() bool { return r.simple || r.flags&1 != 0 }

// testServer is a Server on a UNIX socket in a short temporary directory.
type testServer struct {
	*nbd.Server
	path string
	errc chan error
}

func startServer(t testing.TB, o nbd.ServerOptions) *testServer {
	t.Helper()
	dir, err := os.MkdirTemp("", "nbdt")
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "s.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	s := &testServer{Server: nbd.NewServer(o), path: path, errc: make(chan error, 1)}
	go func() { s.errc <- s.Serve(l) }()
	t.Cleanup(func() {
		s.Close()
		if err := <-s.errc; !errors.Is(err, nbd.ErrServerClosed) {
			t.Errorf("Serve: %v", err)
		}
		os.RemoveAll(dir)
	})
	return s
}

func (s *testServer) uri(name string) string {
	return "nbd+unix:///" + name + "?socket=" + s.path
}

func (s *testServer) dial(t testing.TB) *client {
	t.Helper()
	nc, err := net.Dial("unix", s.path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	return &client{t: t, nc: nc, br: newReader(nc), reads: map[uint64]uint32{}}
}

func (c *client) deadline() {
	c.nc.SetDeadline(time.Now().Add(20 * time.Second))
}

func (c *client) readFull(p []byte) error {
	c.deadline()
	_, err := io.ReadFull(c.br, p)
	return err
}

func (c *client) write(p []byte) {
	c.t.Helper()
	c.deadline()
	if _, err := c.nc.Write(p); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

// greeting reads the server greeting and sends client flags.
func (c *client) greeting(clientFlags uint32) {
	c.t.Helper()
	var b [18]byte
	if err := c.readFull(b[:]); err != nil {
		c.t.Fatalf("greeting: %v", err)
	}
	if be.Uint64(b[0:]) != 0x4e42444d41474943 || be.Uint64(b[8:]) != 0x49484156454F5054 {
		c.t.Fatalf("bad greeting %x", b)
	}
	if f := be.Uint16(b[16:]); f != 3 {
		c.t.Fatalf("handshake flags %#x, want 3", f)
	}
	var f [4]byte
	be.PutUint32(f[:], clientFlags)
	c.write(f[:])
}

func (c *client) sendOpt(opt uint32, data []byte) {
	c.t.Helper()
	b := make([]byte, 16, 16+len(data))
	be.PutUint64(b[0:], 0x49484156454F5054)
	be.PutUint32(b[8:], opt)
	be.PutUint32(b[12:], uint32(len(data)))
	c.write(append(b, data...))
}

func (c *client) readOptReply() (optReply, error) {
	var h [20]byte
	if err := c.readFull(h[:]); err != nil {
		return optReply{}, err
	}
	if m := be.Uint64(h[0:]); m != 0x3e889045565a9 {
		return optReply{}, fmt.Errorf("bad option reply magic %#x", m)
	}
	r := optReply{opt: be.Uint32(h[8:]), typ: be.Uint32(h[12:]), data: make([]byte, be.Uint32(h[16:]))}
	return r, c.readFull(r.data)
}

// opt sends an option and collects replies up to the final one.
func (c *client) opt(opt uint32, data []byte) []optReply {
	c.t.Helper()
	c.sendOpt(opt, data)
	var out []optReply
	for {
		r, err := c.readOptReply()
		if err != nil {
			c.t.Fatalf("option %d: %v", opt, err)
		}
		if r.opt != opt {
			c.t.Fatalf("reply for option %d, want %d", r.opt, opt)
		}
		out = append(out, r)
		if r.typ == repAck || r.typ&(1<<31) != 0 {
			return out
		}
	}
}

func nameData(name string) []byte {
	b := be.AppendUint32(nil, uint32(len(name)))
	return append(b, name...)
}

func infoData(name string, reqs ...uint16) []byte {
	b := nameData(name)
	b = be.AppendUint16(b, uint16(len(reqs)))
	for _, r := range reqs {
		b = be.AppendUint16(b, r)
	}
	return b
}

func metaData(name string, queries ...string) []byte {
	b := nameData(name)
	b = be.AppendUint32(b, uint32(len(queries)))
	for _, q := range queries {
		b = append(b, nameData(q)...)
	}
	return b
}

// exportInfo is what NBD_OPT_GO told.
type exportInfo struct {
	size                 uint64
	flags                uint16
	min, pref, max       uint32
	name, desc           string
	contexts             map[string]uint32
	hasName, hasDesc     bool
	hasBlockSize, hasExp bool
}

func parseInfo(t testing.TB, rs []optReply) (exportInfo, uint32) {
	t.Helper()
	var x exportInfo
	for _, r := range rs {
		switch r.typ {
		case repInfo:
			switch be.Uint16(r.data) {
			case 0:
				x.hasExp = true
				x.size = be.Uint64(r.data[2:])
				x.flags = be.Uint16(r.data[10:])
			case 1:
				x.hasName, x.name = true, string(r.data[2:])
			case 2:
				x.hasDesc, x.desc = true, string(r.data[2:])
			case 3:
				x.hasBlockSize = true
				x.min, x.pref, x.max = be.Uint32(r.data[2:]), be.Uint32(r.data[6:]), be.Uint32(r.data[10:])
			}
		case repAck:
			return x, repAck
		default:
			return x, r.typ
		}
	}
	t.Fatalf("no final reply")
	return x, 0
}

// connect negotiates a connection to name: structured replies if asked,
// the given metadata contexts, then NBD_OPT_GO with block sizes.
func (s *testServer) connect(t testing.TB, name string, structured bool, contexts ...string) (*client, exportInfo) {
	t.Helper()
	c := s.dial(t)
	c.greeting(3)
	ctx := map[string]uint32{}
	if structured {
		if rs := c.opt(optStructuredReply, nil); rs[0].typ != repAck {
			t.Fatalf("structured reply: %#x", rs[0].typ)
		}
		c.structured = true
		if len(contexts) > 0 {
			for _, r := range c.opt(optSetMetaContext, metaData(name, contexts...)) {
				if r.typ == repMetaContext {
					ctx[string(r.data[4:])] = be.Uint32(r.data)
				} else if r.typ != repAck {
					t.Fatalf("set meta context: %#x %q", r.typ, r.data)
				}
			}
		}
	}
	x, typ := parseInfo(t, c.opt(optGo, infoData(name, 3)))
	if typ != repAck {
		t.Fatalf("NBD_OPT_GO %q: reply %#x", name, typ)
	}
	x.contexts = ctx
	return c, x
}

func (c *client) send(typ, flags uint16, handle, off uint64, length uint32, data []byte) {
	c.t.Helper()
	b := make([]byte, 28, 28+len(data))
	be.PutUint32(b[0:], 0x25609513)
	be.PutUint16(b[4:], flags)
	be.PutUint16(b[6:], typ)
	be.PutUint64(b[8:], handle)
	be.PutUint64(b[16:], off)
	be.PutUint32(b[24:], length)
	if typ == cmdRead && !c.structured {
		c.reads[handle] = length
	}
	if typ == cmdRead {
		if c.sent == nil {
			c.sent = map[uint64][2]uint64{}
		}
		c.sent[handle] = [2]uint64{off, uint64(length)}
	}
	c.write(append(b, data...))
}

func (c *client) readReply() (reply, error) {
	var m [4]byte
	if err := c.readFull(m[:]); err != nil {
		return reply{}, err
	}
	switch be.Uint32(m[:]) {
	case 0x67446698:
		var h [12]byte
		if err := c.readFull(h[:]); err != nil {
			return reply{}, err
		}
		r := reply{simple: true, errno: be.Uint32(h[0:]), handle: be.Uint64(h[4:])}
		if n, ok := c.reads[r.handle]; ok {
			delete(c.reads, r.handle)
			if r.errno == 0 {
				r.payload = make([]byte, n)
				if err := c.readFull(r.payload); err != nil {
					return r, err
				}
			}
		}
		return r, nil
	case 0x668e33ef:
		var h [16]byte
		if err := c.readFull(h[:]); err != nil {
			return reply{}, err
		}
		r := reply{flags: be.Uint16(h[0:]), typ: be.Uint16(h[2:]), handle: be.Uint64(h[4:])}
		r.payload = make([]byte, be.Uint32(h[12:]))
		if err := c.readFull(r.payload); err != nil {
			return r, err
		}
		if r.typ&(1<<15) != 0 {
			r.errno = be.Uint32(r.payload)
		}
		return r, nil
	}
	return reply{}, fmt.Errorf("bad reply magic %x", m)
}

// result is a whole reply to one request, chunks assembled.
type result struct {
	errno  uint32
	msg    string
	data   []byte // READ: assembled data, holes as zeroes
	holes  int    // number of hole chunks
	chunks int    // number of content chunks
	status map[uint32][][2]uint32
}

// roundTrip sends one request and waits for its complete reply.
func (c *client) roundTrip(typ, flags uint16, off uint64, length uint32, data []byte) result {
	c.t.Helper()
	const h = 0xabcdef
	c.send(typ, flags, h, off, length, data)
	res, err := c.collect(h, off, length)
	if err != nil {
		c.t.Fatalf("%d: %v", typ, err)
	}
	return res
}

func (c *client) collect(handle, off uint64, length uint32) (result, error) {
	var res result
	for {
		r, err := c.readReply()
		if err != nil {
			return res, err
		}
		if r.handle != handle {
			return res, fmt.Errorf("reply for handle %#x, want %#x", r.handle, handle)
		}
		if err := res.add(r, off, length); err != nil {
			return res, err
		}
		if r.done() {
			return res, nil
		}
	}
}

func (res *result) add(r reply, off uint64, length uint32) error {
	if r.simple {
		res.errno = r.errno
		res.data = r.payload
		return nil
	}
	if res.data == nil && (r.typ == chunkOffsetData || r.typ == chunkOffsetHole) {
		res.data = make([]byte, length)
	}
	switch r.typ {
	case chunkNone:
	case chunkOffsetData:
		o := be.Uint64(r.payload) - off
		copy(res.data[o:], r.payload[8:])
		res.chunks++
	case chunkOffsetHole:
		o := be.Uint64(r.payload) - off
		n := be.Uint32(r.payload[8:])
		if o+uint64(n) > uint64(length) {
			return fmt.Errorf("hole beyond request")
		}
		res.holes++
		res.chunks++
	case chunkBlockStatus:
		if res.status == nil {
			res.status = map[uint32][][2]uint32{}
		}
		id := be.Uint32(r.payload)
		for p := r.payload[4:]; len(p) >= 8; p = p[8:] {
			res.status[id] = append(res.status[id], [2]uint32{be.Uint32(p), be.Uint32(p[4:])})
		}
	default:
		if r.typ&(1<<15) == 0 {
			return fmt.Errorf("unknown chunk type %d", r.typ)
		}
		res.errno = be.Uint32(r.payload)
		ml := be.Uint16(r.payload[4:])
		res.msg = string(r.payload[6 : 6+ml])
	}
	return nil
}

// expectClosed checks that the server closes the connection.
func (c *client) expectClosed() {
	c.t.Helper()
	c.nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err := io.ReadAll(c.br)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		c.t.Fatalf("connection not closed by the server")
	}
}

func newReader(nc net.Conn) *bufio.Reader { return bufio.NewReader(nc) }

// collectAny reads the complete reply of whichever request answers next.
func (c *client) collectAny(t testing.TB) (result, uint64) {
	t.Helper()
	var res result
	var handle uint64
	for first := true; ; first = false {
		r, err := c.readReply()
		if err != nil {
			t.Fatal(err)
		}
		if first {
			handle = r.handle
		} else if r.handle != handle {
			t.Fatalf("chunks of handles %#x and %#x interleave", handle, r.handle)
		}
		req := c.sent[r.handle]
		if err := res.add(r, req[0], uint32(req[1])); err != nil {
			t.Fatal(err)
		}
		if r.done() {
			return res, handle
		}
	}
}
