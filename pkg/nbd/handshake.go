package nbd

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/blockd/blockd/pkg/nbd/wire"
)

var be = binary.BigEndian

// errProtocol marks a protocol violation by the client: the connection is
// closed without a reply.
var errProtocol = errors.New("nbd protocol violation")

func protocolErrorf(format string, args ...any) error {
	return fmt.Errorf("%w: %s", errProtocol, fmt.Sprintf(format, args...))
}

// metaState is what NBD_OPT_SET_META_CONTEXT selected (or, while a
// NBD_OPT_LIST_META_CONTEXT is parsed, what it lists).
type metaState struct {
	exp     *Export // the export they were selected on (not its name: it may have been replaced since)
	base    bool    // base:allocation
	depth   bool    // qemu:allocation-depth
	bitmaps []bool  // qemu:dirty-bitmap:NAME, by index in the export's Bitmaps
	nbitmap int     // how many of bitmaps are set
}

// any reports whether a context is selected.
func (m *metaState) any() bool { return m.base || m.depth || m.nbitmap > 0 }

func (m *metaState) selectBitmap(i int) {
	if !m.bitmaps[i] {
		m.bitmaps[i] = true
		m.nbitmap++
	}
}

func (m *metaState) selectAllBitmaps() {
	for i := range m.bitmaps {
		m.selectBitmap(i)
	}
}

// conn is one client connection. The handshake runs on the connection's
// goroutine; the transmission phase is described in doc.go.
type conn struct {
	srv    *Server
	nc     net.Conn
	log    logrus.FieldLogger
	ctx    context.Context // passed to the backend; cancelled by kill
	cancel context.CancelFunc
	once   sync.Once // abort

	br *bufio.Reader // shared by handshake and transmission
	hw *bufio.Writer // handshake replies only

	// Set by the handshake, read-only in the transmission phase.
	fixed, noZeroes bool
	structured      bool
	meta            metaState
	exp             *Export
	blockSizeAgreed bool // the client asked for NBD_INFO_BLOCK_SIZE in NBD_OPT_GO

	// Transmission phase.
	reqs     chan *request // reader -> workers
	budget   budget
	pipes    pipePool     // pipes for spliced READ replies
	replying atomic.Int32 // workers with a reply to send
	wmu      sync.Mutex   // serialises replies
	out      []byte       // guarded by wmu: batch of reply bytes
	werr     error        // guarded by wmu: the first write error
}

func newConn(s *Server, nc net.Conn) *conn {
	ctx, cancel := context.WithCancel(context.Background())
	c := &conn{
		srv:    s,
		nc:     nc,
		ctx:    ctx,
		cancel: cancel,
		br:     bufio.NewReaderSize(nc, 64<<10),
	}
	remote := ""
	if a := nc.RemoteAddr(); a != nil {
		remote = a.String()
	}
	c.log = s.log.WithField("remote", remote)
	c.budget.init(s.opts.MaxBufferBytes)
	wire.GrowSendBuffer(nc)
	return c
}

// abort closes the socket, which stops the reader; work in flight finishes
// and its replies are dropped.
func (c *conn) abort() {
	c.once.Do(func() {
		c.nc.Close()
		c.budget.close()
	})
}

// kill aborts the connection and also cancels the context of backend calls
// and of requests waiting on a quiesced export.
func (c *conn) kill() {
	c.cancel()
	c.abort()
}

func (c *conn) serve() {
	defer c.kill()
	if t := c.srv.opts.HandshakeTimeout; t > 0 {
		c.nc.SetDeadline(time.Now().Add(t))
	}
	ok, err := c.handshake()
	if err != nil {
		c.logEnd("handshake", err)
	}
	if !ok {
		return
	}
	// In transmission a client may stay idle as long as it likes.
	if err := c.nc.SetDeadline(time.Time{}); err != nil {
		c.logEnd("handshake", err)
		return
	}
	defer c.exp.detach(c)
	c.log.WithField("export", c.exp.opts.Name).Debug("nbd: client entered transmission")
	err = c.transmit()
	c.logEnd("transmission", err)
}

func (c *conn) logEnd(phase string, err error) {
	switch {
	case err == nil:
		c.log.Debug("nbd: client disconnected")
	case errors.Is(err, errProtocol):
		c.log.WithError(err).Info("nbd: closing connection in " + phase)
	default:
		c.log.WithError(err).Debug("nbd: connection ended in " + phase)
	}
}

// handshake runs the fixed newstyle negotiation. It returns true when the
// client entered the transmission phase on c.exp.
func (c *conn) handshake() (bool, error) {
	c.hw = bufio.NewWriterSize(c.nc, 4096)
	var b [18]byte
	be.PutUint64(b[0:], magicNBD)
	be.PutUint64(b[8:], magicOpt)
	be.PutUint16(b[16:], flagFixedNewstyle|flagNoZeroes)
	c.hw.Write(b[:18])
	if err := c.hw.Flush(); err != nil {
		return false, err
	}
	if _, err := io.ReadFull(c.br, b[:4]); err != nil {
		return false, err
	}
	cf := be.Uint32(b[:4])
	if cf&^(clientFlagFixedNewstyle|clientFlagNoZeroes) != 0 {
		return false, protocolErrorf("unknown client flags %#x", cf)
	}
	c.fixed = cf&clientFlagFixedNewstyle != 0
	c.noZeroes = cf&clientFlagNoZeroes != 0

	for {
		var h [16]byte
		if _, err := io.ReadFull(c.br, h[:]); err != nil {
			return false, err
		}
		if m := be.Uint64(h[0:]); m != magicOpt {
			return false, protocolErrorf("bad option magic %#x", m)
		}
		opt := be.Uint32(h[8:])
		length := be.Uint32(h[12:])
		if !c.fixed && opt != optExportName {
			return false, protocolErrorf("option %d without fixed newstyle", opt)
		}
		if c.srv.closing() && opt != optAbort && opt != optExportName {
			if err := c.skip(length); err != nil {
				return false, err
			}
			if err := c.optError(opt, repErrShutdown, "server is shutting down"); err != nil {
				return false, err
			}
			continue
		}
		if opt == optExportName {
			return c.exportName(length)
		}
		if length > maxOptionLen {
			if err := c.skip(length); err != nil {
				return false, err
			}
			// No valid option of ours is that long (names and queries
			// are at most 4 KiB), so it is invalid rather than too big.
			typ := uint32(repErrInvalid)
			if !knownOption(opt) {
				typ = repErrUnsup
			}
			if err := c.optError(opt, typ, "option %s is too long (%d bytes)", optName(opt), length); err != nil {
				return false, err
			}
			continue
		}
		data := make([]byte, length)
		if _, err := io.ReadFull(c.br, data); err != nil {
			return false, err
		}
		entered, done, err := c.option(opt, data)
		if err != nil || done {
			return false, err
		}
		if err := c.hw.Flush(); err != nil {
			if entered {
				c.exp.detach(c)
			}
			return false, err
		}
		if entered {
			return true, nil
		}
	}
}

func knownOption(opt uint32) bool {
	switch opt {
	case optAbort, optList, optStartTLS, optInfo, optGo, optStructuredReply, optListMetaContext, optSetMetaContext:
		return true
	}
	return false
}

func optName(opt uint32) string {
	switch opt {
	case optExportName:
		return "NBD_OPT_EXPORT_NAME"
	case optAbort:
		return "NBD_OPT_ABORT"
	case optList:
		return "NBD_OPT_LIST"
	case optStartTLS:
		return "NBD_OPT_STARTTLS"
	case optInfo:
		return "NBD_OPT_INFO"
	case optGo:
		return "NBD_OPT_GO"
	case optStructuredReply:
		return "NBD_OPT_STRUCTURED_REPLY"
	case optListMetaContext:
		return "NBD_OPT_LIST_META_CONTEXT"
	case optSetMetaContext:
		return "NBD_OPT_SET_META_CONTEXT"
	}
	return fmt.Sprintf("option %d", opt)
}

// skip discards n bytes of option data without buffering them.
func (c *conn) skip(n uint32) error {
	_, err := io.CopyN(io.Discard, c.br, int64(n))
	return err
}

// option handles one option other than NBD_OPT_EXPORT_NAME. entered: the
// transmission phase starts; done: close the connection.
func (c *conn) option(opt uint32, data []byte) (entered, done bool, err error) {
	switch opt {
	case optAbort:
		// The client may already have gone; the reply is best effort.
		c.optReply(opt, repAck, nil)
		c.hw.Flush()
		return false, true, nil
	case optList:
		if len(data) != 0 {
			return false, false, c.optError(opt, repErrInvalid, "NBD_OPT_LIST must not have data")
		}
		for _, e := range c.srv.Exports() {
			p := make([]byte, 4, 4+len(e.opts.Name)+len(e.opts.Description))
			be.PutUint32(p, uint32(len(e.opts.Name)))
			p = append(p, e.opts.Name...)
			p = append(p, e.opts.Description...)
			if err := c.optReply(opt, repServer, p); err != nil {
				return false, false, err
			}
		}
		return false, false, c.optReply(opt, repAck, nil)
	case optStartTLS:
		if len(data) != 0 {
			return false, false, c.optError(opt, repErrInvalid, "NBD_OPT_STARTTLS must not have data")
		}
		return false, false, c.optError(opt, repErrPolicy, "TLS not configured")
	case optStructuredReply:
		if len(data) != 0 {
			return false, false, c.optError(opt, repErrInvalid, "NBD_OPT_STRUCTURED_REPLY must not have data")
		}
		if c.structured {
			return false, false, c.optError(opt, repErrInvalid, "structured reply already negotiated")
		}
		c.structured = true
		return false, false, c.optReply(opt, repAck, nil)
	case optInfo, optGo:
		entered, err := c.infoGo(opt, data)
		return entered, false, err
	case optListMetaContext, optSetMetaContext:
		return false, false, c.metaContext(opt, data)
	}
	return false, false, c.optError(opt, repErrUnsup, "unsupported option %d", opt)
}

func (c *conn) optReply(opt, typ uint32, data []byte) error {
	var h [20]byte
	be.PutUint64(h[0:], magicOptReply)
	be.PutUint32(h[8:], opt)
	be.PutUint32(h[12:], typ)
	be.PutUint32(h[16:], uint32(len(data)))
	c.hw.Write(h[:])
	_, err := c.hw.Write(data)
	return err
}

func (c *conn) optError(opt, typ uint32, format string, args ...any) error {
	msg := fmt.Sprintf(format, args...)
	if err := c.optReply(opt, typ, []byte(msg)); err != nil {
		return err
	}
	return c.hw.Flush()
}

// sanitize makes a client-supplied name printable in a message.
func sanitize(name string) string {
	if len(name) > 80 {
		name = name[:80] + "..."
	}
	return strings.ToValidUTF8(name, "?")
}

func (c *conn) exportName(length uint32) (bool, error) {
	if length > maxStringLen {
		return false, protocolErrorf("export name too long (%d bytes)", length)
	}
	name := make([]byte, length)
	if _, err := io.ReadFull(c.br, name); err != nil {
		return false, err
	}
	e := c.srv.Export(string(name))
	if e == nil {
		return false, protocolErrorf("export '%s' not present", sanitize(string(name)))
	}
	size, err := e.size()
	if err != nil || !e.attach(c) {
		return false, protocolErrorf("export '%s' not present", sanitize(string(name)))
	}
	var b [10 + 124]byte
	be.PutUint64(b[0:], uint64(size))
	be.PutUint16(b[8:], e.transmissionFlags(c.structured))
	n := len(b)
	if c.noZeroes {
		n = 10
	}
	c.hw.Write(b[:n])
	if err := c.hw.Flush(); err != nil {
		e.detach(c)
		return false, err
	}
	c.enter(e, false)
	return true, nil
}

func (c *conn) enter(e *Export, blockSize bool) {
	c.exp = e
	c.blockSizeAgreed = blockSize
	if c.meta.exp != e {
		c.meta = metaState{}
	}
}

func (c *conn) infoGo(opt uint32, data []byte) (bool, error) {
	if len(data) < 6 {
		return false, c.optError(opt, repErrInvalid, "%s: option too short", optName(opt))
	}
	nameLen := be.Uint32(data)
	if nameLen > uint32(len(data)-6) {
		return false, c.optError(opt, repErrInvalid, "%s: name length %d exceeds option length", optName(opt), nameLen)
	}
	name := string(data[4 : 4+nameLen])
	p := data[4+nameLen:]
	nreq := int(be.Uint16(p))
	p = p[2:]
	if len(p) != 2*nreq {
		return false, c.optError(opt, repErrInvalid, "%s: %d information requests do not match the option length", optName(opt), nreq)
	}
	if nameLen > maxStringLen {
		return false, c.optError(opt, repErrInvalid, "%s: export name too long", optName(opt))
	}
	var wantName, wantBlockSize bool
	for i := 0; i < nreq; i++ {
		switch be.Uint16(p[2*i:]) {
		case infoName:
			wantName = true
		case infoBlockSize:
			wantBlockSize = true
		}
	}
	e := c.srv.Export(name)
	var size int64
	var err error
	if e != nil {
		size, err = e.size()
	}
	if e == nil || err != nil {
		return false, c.optError(opt, repErrUnknown, "export '%s' not present", sanitize(name))
	}

	if wantName {
		if err := c.optReply(opt, repInfo, append([]byte{0, infoName}, name...)); err != nil {
			return false, err
		}
	}
	// The description goes out whenever there is one, requested or not,
	// as QEMU does.
	if e.opts.Description != "" {
		if err := c.optReply(opt, repInfo, append([]byte{0, infoDescription}, e.opts.Description...)); err != nil {
			return false, err
		}
	}
	// Block sizes go out always, as QEMU does; a client that did not ask
	// is told a minimum of 1, since it will not honour a larger one.
	var bs [14]byte
	be.PutUint16(bs[0:], infoBlockSize)
	minBlock := uint32(1)
	if wantBlockSize {
		minBlock = e.opts.MinBlock
	}
	be.PutUint32(bs[2:], minBlock)
	be.PutUint32(bs[6:], e.opts.PrefBlock)
	be.PutUint32(bs[10:], e.opts.MaxBlock)
	if err := c.optReply(opt, repInfo, bs[:]); err != nil {
		return false, err
	}
	var ex [12]byte
	be.PutUint16(ex[0:], infoExport)
	be.PutUint64(ex[2:], uint64(size))
	be.PutUint16(ex[10:], e.transmissionFlags(c.structured))
	if err := c.optReply(opt, repInfo, ex[:]); err != nil {
		return false, err
	}
	if opt == optInfo {
		return false, c.optReply(opt, repAck, nil)
	}
	if !e.attach(c) {
		return false, c.optError(opt, repErrUnknown, "export '%s' not present", sanitize(name))
	}
	if err := c.optReply(opt, repAck, nil); err != nil {
		e.detach(c)
		return false, err
	}
	c.enter(e, wantBlockSize)
	return true, nil
}

// metaContext handles NBD_OPT_LIST_META_CONTEXT and
// NBD_OPT_SET_META_CONTEXT, in QEMU's order: the export name, the export,
// the query count, the queries. No query in a LIST lists everything the
// export offers; each query is matched by matchQuery. Selected contexts
// are answered base:allocation first, then qemu:allocation-depth, then
// the bitmaps in the export's order, each once.
func (c *conn) metaContext(opt uint32, data []byte) error {
	set := opt == optSetMetaContext
	if set {
		c.meta = metaState{} // replaced even when the option fails
	}
	if set && !c.structured {
		// As QEMU: listing works without structured replies, selecting
		// does not.
		return c.optError(opt, repErrInvalid, "request option '%s' when structured reply is not negotiated", optName(opt))
	}
	p := data
	name, ok := readString32(&p)
	if !ok {
		return c.optError(opt, repErrInvalid, "%s: export name does not fit in the option", optName(opt))
	}
	if len(name) > maxStringLen {
		return c.optError(opt, repErrInvalid, "%s: export name too long", optName(opt))
	}
	e := c.srv.Export(name)
	if e == nil {
		return c.optError(opt, repErrUnknown, "export '%s' not present", sanitize(name))
	}
	if len(p) < 4 {
		return c.optError(opt, repErrInvalid, "%s: missing query count", optName(opt))
	}
	nq := be.Uint32(p)
	p = p[4:]
	m := metaState{exp: e}
	if n := len(e.opts.Bitmaps); n > 0 {
		m.bitmaps = make([]bool, n)
	}
	if nq == 0 && !set {
		m.base, m.depth = true, e.opts.AllocationDepth
		m.selectAllBitmaps()
	}
	for i := uint32(0); i < nq; i++ {
		q, ok := readString32(&p)
		if !ok {
			return c.optError(opt, repErrInvalid, "%s: query %d does not fit in the option", optName(opt), i)
		}
		matchQuery(&m, e, q, set)
	}
	// Data after the last query is ignored, as QEMU does.
	if m.base {
		if err := c.optReply(opt, repMetaContext, metaContextReply(ctxIDBaseAllocation, ctxBaseAllocation, set)); err != nil {
			return err
		}
	}
	if m.depth {
		if err := c.optReply(opt, repMetaContext, metaContextReply(ctxIDAllocationDepth, ctxAllocationDepth, set)); err != nil {
			return err
		}
	}
	for i, on := range m.bitmaps {
		if on {
			id := ctxIDDirtyBitmap + uint32(i)
			if err := c.optReply(opt, repMetaContext, metaContextReply(id, ctxDirtyBitmap+e.opts.Bitmaps[i].Name, set)); err != nil {
				return err
			}
		}
	}
	if set {
		c.meta = m
	}
	return c.optReply(opt, repAck, nil)
}

// matchQuery selects in m what one query names, as QEMU matches them:
// "base:allocation", "qemu:allocation-depth" (if the export offers it)
// and "qemu:dirty-bitmap:NAME" (the first of the export's bitmaps of that
// name) select their context; in a LIST only, "base:", "qemu:" and
// "qemu:dirty-bitmap:" select every context of their namespace. Anything
// else selects nothing.
func matchQuery(m *metaState, e *Export, q string, set bool) {
	switch {
	case q == ctxBaseAllocation:
		m.base = true
	case q == "base:":
		m.base = m.base || !set
	case q == ctxAllocationDepth:
		m.depth = m.depth || e.opts.AllocationDepth
	case q == "qemu:":
		if !set {
			m.depth = m.depth || e.opts.AllocationDepth
			m.selectAllBitmaps()
		}
	case q == ctxDirtyBitmap:
		if !set {
			m.selectAllBitmaps()
		}
	case strings.HasPrefix(q, ctxDirtyBitmap):
		want := q[len(ctxDirtyBitmap):]
		for i, b := range e.opts.Bitmaps {
			if b.Name == want {
				m.selectBitmap(i)
				break
			}
		}
	}
}

func metaContextReply(id uint32, name string, set bool) []byte {
	if !set {
		id = 0 // reserved in list replies
	}
	p := make([]byte, 4, 4+len(name))
	be.PutUint32(p, id)
	return append(p, name...)
}

// readString32 reads a 32-bit length and that many bytes from *p.
func readString32(p *[]byte) (string, bool) {
	if len(*p) < 4 {
		return "", false
	}
	n := be.Uint32(*p)
	if uint64(n) > uint64(len(*p)-4) {
		return "", false
	}
	s := string((*p)[4 : 4+n])
	*p = (*p)[4+n:]
	return s, true
}
