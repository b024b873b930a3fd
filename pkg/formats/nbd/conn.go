package nbd

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"syscall"

	"github.com/blockd/blockd/pkg/block"
	"github.com/blockd/blockd/pkg/nbd/wire"
)

// conn is one NBD connection in transmission: any number of requests in
// flight, one writer at a time (wmu) and one reader goroutine that hands
// every reply to the request whose handle it carries.
type conn struct {
	nc   net.Conn
	br   *bufio.Reader
	info exportInfo

	wmu sync.Mutex // serialises request writes

	mu      sync.Mutex
	pending map[uint64]*request // guarded by mu
	next    uint64              // guarded by mu; the next handle
	err     error               // guarded by mu; set once the connection is dead
	done    chan struct{}       // closed when the reader has stopped
}

// request is one command waiting for its reply.
type request struct {
	cmd    uint16
	off    uint64
	length uint32
	buf    []byte // CmdRead: where the data goes (len == length)

	// Filled by the reader before done is closed.
	err     error      // the server's error, or the connection's
	extents []statusEx // CmdBlockStatus
	done    chan struct{}
}

// statusEx is one block status descriptor.
type statusEx struct {
	length uint32
	flags  uint32
}

// maxStatusPayload bounds a BLOCK_STATUS chunk: the client only ever uses
// the first descriptors, so a long list is read and thrown away.
const maxStatusPayload = 64 << 10

// maxExtents bounds the descriptors kept for one block status request.
const maxExtents = 64

// maxErrorPayload bounds an error chunk (a message of at most 4096 bytes
// plus the fixed fields).
const maxErrorPayload = wire.MaxStringLen + 16

// errProtocol marks a reply the client cannot make sense of; the
// connection is dropped.
var errProtocol = errors.New("NBD protocol error")

// errDisconnected fails requests on a dead connection: EIO, as qsd's
// client reports them.
var errDisconnected = block.ErrnoError(syscall.EIO)

func newConn(nc net.Conn, br *bufio.Reader, info exportInfo) *conn {
	c := &conn{nc: nc, br: br, info: info, pending: map[uint64]*request{}, done: make(chan struct{})}
	go c.readLoop()
	return c
}

// do sends r with flags and the payload data, and waits for the reply.
// It does not give up on a cancelled context: the server owns r.buf
// until it answers (NBD has no way to cancel a request); a dead
// connection fails every request at once.
func (c *conn) do(r *request, flags uint16, data []byte) error {
	_, err := c.send(r, flags, func(hdr []byte) error {
		bufs := net.Buffers{hdr}
		if len(data) > 0 {
			bufs = append(bufs, data)
		}
		_, err := bufs.WriteTo(c.nc)
		return err
	})
	return err
}

// send registers r, writes its header and payload with write (under the
// write lock) and waits for the reply. sent says whether write was
// called: a request that failed before it can be sent again as it was.
func (c *conn) send(r *request, flags uint16, write func(hdr []byte) error) (sent bool, err error) {
	r.done = make(chan struct{})
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return false, errDisconnected
	}
	h := c.next
	c.next++
	c.pending[h] = r
	c.mu.Unlock()

	var hdr [wire.RequestHeaderSize]byte
	be.PutUint32(hdr[0:], wire.MagicRequest)
	be.PutUint16(hdr[4:], flags)
	be.PutUint16(hdr[6:], r.cmd)
	be.PutUint64(hdr[8:], h)
	be.PutUint64(hdr[16:], r.off)
	be.PutUint32(hdr[24:], r.length)
	c.wmu.Lock()
	err = write(hdr[:])
	c.wmu.Unlock()
	if err != nil {
		c.fail(fmt.Errorf("send: %w", err))
	}
	<-r.done
	return true, r.err
}

// fail kills the connection: every waiting request fails with EIO, and so
// does every later one.
func (c *conn) fail(cause error) {
	c.mu.Lock()
	if c.err == nil {
		c.err = cause
		c.nc.Close()
	}
	pending := c.pending
	c.pending = map[uint64]*request{}
	c.mu.Unlock()
	for _, r := range pending {
		r.err = errDisconnected
		close(r.done)
	}
}

// dead reports whether the connection has failed.
func (c *conn) dead() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err != nil
}

// permanent reports whether the connection died of a protocol error:
// the server is broken or hostile, and is not reconnected to.
func (c *conn) permanent() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return errors.Is(c.err, errProtocol)
}

// close ends the connection politely (NBD_CMD_DISC) and waits for the
// reader.
func (c *conn) close() {
	if !c.dead() {
		var hdr [wire.RequestHeaderSize]byte
		be.PutUint32(hdr[0:], wire.MagicRequest)
		be.PutUint16(hdr[6:], wire.CmdDisc)
		c.wmu.Lock()
		c.nc.Write(hdr[:]) //nolint:errcheck // the connection closes anyway
		c.wmu.Unlock()
	}
	c.fail(errors.New("closed"))
	<-c.done
}

func (c *conn) readLoop() {
	defer close(c.done)
	p := replyParser{r: c.br, structured: c.info.structured, lookup: c.lookup}
	for {
		r, last, err := p.next()
		if err != nil {
			c.fail(err)
			return
		}
		if last {
			c.mu.Lock()
			delete(c.pending, p.handle)
			c.mu.Unlock()
			close(r.done)
		}
	}
}

// lookup finds the request a reply names.
func (c *conn) lookup(h uint64) *request {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.pending[h]
}

// replyParser reads replies from the server: simple replies and the
// chunks of structured ones, checking every length and offset against
// the request it answers before using it. A hostile server gets a
// protocol error, never a panic or an unbounded allocation.
type replyParser struct {
	r          io.Reader
	structured bool
	lookup     func(handle uint64) *request
	handle     uint64 // of the reply just parsed
	scratch    []byte
}

// next parses one reply or chunk; last says the request is complete.
func (p *replyParser) next() (r *request, last bool, err error) {
	var magic [4]byte
	if _, err := io.ReadFull(p.r, magic[:]); err != nil {
		return nil, false, err
	}
	switch be.Uint32(magic[:]) {
	case wire.MagicSimple:
		return p.simple()
	case wire.MagicStructured:
		if !p.structured {
			return nil, false, fmt.Errorf("%w: structured reply not negotiated", errProtocol)
		}
		return p.chunk()
	}
	return nil, false, fmt.Errorf("%w: bad reply magic %#x", errProtocol, be.Uint32(magic[:]))
}

func (p *replyParser) simple() (*request, bool, error) {
	var hdr [wire.SimpleReplySize - 4]byte
	if _, err := io.ReadFull(p.r, hdr[:]); err != nil {
		return nil, false, err
	}
	errno, h := be.Uint32(hdr[0:]), be.Uint64(hdr[4:])
	r := p.lookup(h)
	if r == nil {
		return nil, false, fmt.Errorf("%w: reply to unknown handle %d", errProtocol, h)
	}
	p.handle = h
	if errno != 0 {
		r.err = errnoErr(errno)
		return r, true, nil
	}
	if r.cmd == wire.CmdRead {
		if p.structured {
			// With structured replies a read must be answered in chunks.
			return nil, false, fmt.Errorf("%w: simple reply with data to a structured read", errProtocol)
		}
		if _, err := io.ReadFull(p.r, r.buf); err != nil {
			return nil, false, err
		}
	}
	if r.cmd == wire.CmdBlockStatus {
		return nil, false, fmt.Errorf("%w: simple reply to block status", errProtocol)
	}
	return r, true, nil
}

func (p *replyParser) chunk() (*request, bool, error) {
	var hdr [wire.StructuredHeaderSize - 4]byte
	if _, err := io.ReadFull(p.r, hdr[:]); err != nil {
		return nil, false, err
	}
	flags, typ, h, n := be.Uint16(hdr[0:]), be.Uint16(hdr[2:]), be.Uint64(hdr[4:]), be.Uint32(hdr[12:])
	r := p.lookup(h)
	if r == nil {
		return nil, false, fmt.Errorf("%w: reply to unknown handle %d", errProtocol, h)
	}
	p.handle = h
	last := flags&wire.ReplyFlagDone != 0
	switch typ {
	case wire.ChunkNone:
		if n != 0 || !last {
			return nil, false, fmt.Errorf("%w: bad NBD_REPLY_TYPE_NONE", errProtocol)
		}
	case wire.ChunkOffsetData:
		if r.cmd != wire.CmdRead || n < 8 {
			return nil, false, fmt.Errorf("%w: unexpected data chunk", errProtocol)
		}
		off, err := p.u64()
		if err != nil {
			return nil, false, err
		}
		dst, err := r.window(off, uint64(n-8))
		if err != nil {
			return nil, false, err
		}
		if _, err := io.ReadFull(p.r, dst); err != nil {
			return nil, false, err
		}
	case wire.ChunkOffsetHole:
		if r.cmd != wire.CmdRead || n != 12 {
			return nil, false, fmt.Errorf("%w: unexpected hole chunk", errProtocol)
		}
		b, err := p.read(12)
		if err != nil {
			return nil, false, err
		}
		dst, err := r.window(be.Uint64(b), uint64(be.Uint32(b[8:])))
		if err != nil {
			return nil, false, err
		}
		clear(dst)
	case wire.ChunkBlockStatus:
		if r.cmd != wire.CmdBlockStatus || n < 12 || (n-4)%8 != 0 {
			return nil, false, fmt.Errorf("%w: unexpected block status chunk", errProtocol)
		}
		if err := p.blockStatus(r, n); err != nil {
			return nil, false, err
		}
	default:
		if typ&(1<<15) == 0 {
			return nil, false, fmt.Errorf("%w: unknown reply chunk type %d", errProtocol, typ)
		}
		// An error chunk (a known one or not: the protocol says an
		// unknown error type is still an error).
		if n < 6 || n > maxErrorPayload {
			return nil, false, fmt.Errorf("%w: bad error chunk length %d", errProtocol, n)
		}
		b, err := p.read(int(n))
		if err != nil {
			return nil, false, err
		}
		if msgLen := int(be.Uint16(b[4:])); msgLen > int(n)-6 {
			return nil, false, fmt.Errorf("%w: error message overruns its chunk", errProtocol)
		}
		errno := be.Uint32(b)
		if errno == 0 {
			errno = wire.ErrnoIO // an error chunk must carry an error
		}
		if r.err == nil {
			r.err = errnoErr(errno)
		}
	}
	return r, last, nil
}

func (p *replyParser) blockStatus(r *request, n uint32) error {
	if n > maxStatusPayload {
		// Use the first descriptors, skip the rest.
		if err := p.blockStatus(r, maxStatusPayload-(maxStatusPayload-4)%8); err != nil {
			return err
		}
		_, err := io.CopyN(io.Discard, p.r, int64(n-(maxStatusPayload-(maxStatusPayload-4)%8)))
		return err
	}
	b, err := p.read(int(n))
	if err != nil {
		return err
	}
	// The context id is not checked against the negotiated one beyond
	// this: the client selects exactly one context.
	// Only the first extents are used (the client asks for one); a server
	// that sends chunk after chunk cannot grow the list without bound.
	for i := 4; i+8 <= len(b) && len(r.extents) < maxExtents; i += 8 {
		r.extents = append(r.extents, statusEx{length: be.Uint32(b[i:]), flags: be.Uint32(b[i+4:])})
	}
	return nil
}

// window is the part of a read request's buffer that [off, off+n) covers,
// or a protocol error when it lies outside the request.
func (r *request) window(off, n uint64) ([]byte, error) {
	if off < r.off || n > uint64(r.length) || off-r.off > uint64(r.length)-n {
		return nil, fmt.Errorf("%w: chunk [%d, +%d) outside the read [%d, +%d)", errProtocol, off, n, r.off, r.length)
	}
	start := off - r.off
	return r.buf[start : start+n], nil
}

func (p *replyParser) u64() (uint64, error) {
	b, err := p.read(8)
	if err != nil {
		return 0, err
	}
	return be.Uint64(b), nil
}

// read reads n bytes (n is bounded by the callers) into scratch space.
func (p *replyParser) read(n int) ([]byte, error) {
	if cap(p.scratch) < n {
		p.scratch = make([]byte, n)
	}
	b := p.scratch[:n]
	_, err := io.ReadFull(p.r, b)
	return b, err
}

// errnoErr maps an NBD error value to the errno the block layer reports.
func errnoErr(v uint32) error {
	switch v {
	case wire.ErrnoPerm, wire.ErrnoIO, wire.ErrnoNoMem, wire.ErrnoInval, wire.ErrnoNoSpc,
		wire.ErrnoOverflow, wire.ErrnoNotSup, wire.ErrnoShutdown:
		return block.ErrnoError(syscall.Errno(v))
	}
	// Unknown values are EINVAL, as the protocol document advises.
	return block.ErrnoError(syscall.EINVAL)
}
