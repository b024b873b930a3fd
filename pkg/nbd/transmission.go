package nbd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
)

// request is one NBD request from the time its header is read until its
// reply is written. Requests are pooled.
type request struct {
	handle uint64
	off    uint64
	length uint32
	typ    uint16
	flags  uint16

	buf  *buffer // WRITE payload or READ data (buffer path)
	cost int64   // budget bytes held

	pipe      *pipe // READ reply assembled in a pipe (splice path)
	piped     int   // bytes in pipe
	pipeEmpty bool  // pipe was sent in full and can be reused

	// Result.
	errno syscall.Errno
	err   error    // cause, for the message of a structured error
	spans []span   // sparse READ: the reply's content chunks, in order
	parts []span   // READ: the data parts to read (scratch)
	bs    []byte   // BLOCK_STATUS: encoded chunk payloads
	bsEnd []int    // end of each chunk payload in bs
	exts  []Extent // scratch for block status
}

// span is a piece of a sparse READ reply, relative to the request offset.
type span struct {
	off, n int64
	hole   bool
}

var requestPool = sync.Pool{New: func() any { return new(request) }}

// splicedReplies counts the read replies sent from a pipe (for tests).
var splicedReplies atomic.Int64

func (r *request) fail(errno syscall.Errno, err error) {
	r.errno = errno
	r.err = err
}

func (r *request) reset() {
	r.buf = nil
	r.cost = 0
	r.errno = 0
	r.err = nil
	r.spans = r.spans[:0]
	r.parts = r.parts[:0]
	r.bs = r.bs[:0]
	r.bsEnd = r.bsEnd[:0]
	r.exts = r.exts[:0]
}

// transmit runs the transmission phase: this goroutine reads requests, a
// pool of workers executes them and one writer sends the replies.
func (c *conn) transmit() error {
	n := c.srv.opts.Workers
	c.reqs = make(chan *request, n)
	c.out = make([]byte, 0, 64<<10)
	c.pipes.init(c.nc, n)
	defer c.pipes.closeAll()

	var workers sync.WaitGroup
	workers.Add(n)
	for i := 0; i < n; i++ {
		go func() {
			defer workers.Done()
			for r := range c.reqs {
				c.execute(r)
				c.reply(r)
			}
		}()
	}

	err := c.readLoop()
	close(c.reqs)
	workers.Wait()
	c.wmu.Lock()
	c.flush()
	if err == nil {
		err = c.werr
	}
	c.wmu.Unlock()
	return err
}

// readLoop reads requests until NBD_CMD_DISC (nil), end of input or a
// protocol violation.
func (c *conn) readLoop() error {
	var h [requestHeaderSize]byte
	maxBlock := c.exp.opts.MaxBlock
	// While the reader answers requests itself (see tryInline) it counts
	// as a replier, so that the replies of requests that arrived
	// together go out in one write: the batch is flushed when the reader
	// is about to wait for the client.
	held := false
	hold := func() {
		if !held {
			c.replying.Add(1)
			held = true
		}
	}
	unhold := func() {
		if held {
			held = false
			if c.replying.Add(-1) == 0 {
				c.wmu.Lock()
				c.flush()
				c.wmu.Unlock()
			}
		}
	}
	defer unhold()
	for {
		if c.br.Buffered() < requestHeaderSize {
			unhold()
		}
		if _, err := io.ReadFull(c.br, h[:]); err != nil {
			if err == io.EOF {
				return nil // the client went away between requests
			}
			return err
		}
		if m := be.Uint32(h[0:]); m != magicRequest {
			return protocolErrorf("bad request magic %#x", m)
		}
		typ := be.Uint16(h[6:])
		if typ == cmdDisc {
			return nil
		}
		r := requestPool.Get().(*request)
		r.reset()
		r.flags = be.Uint16(h[4:])
		r.typ = typ
		r.handle = be.Uint64(h[8:])
		r.off = be.Uint64(h[16:])
		r.length = be.Uint32(h[24:])

		switch {
		case typ == cmdWrite && r.length > maxBlock:
			// Drain the payload without keeping it; the connection stays
			// in sync and the request fails.
			if err := c.skip(r.length); err != nil {
				requestPool.Put(r)
				return err
			}
			r.fail(syscall.EINVAL, fmt.Errorf("request length %d exceeds the maximum block size %d", r.length, maxBlock))
		case typ == cmdWrite && r.length > 0:
			if c.br.Buffered() < int(r.length) {
				unhold()
			}
			if err := c.budget.acquire(int64(r.length)); err != nil {
				requestPool.Put(r)
				return err
			}
			r.cost = int64(r.length)
			r.buf = getBuffer(int(r.length))
			if _, err := io.ReadFull(c.br, r.buf.b[:r.length]); err != nil {
				c.release(r)
				return err
			}
		case typ == cmdRead && r.length > 0 && r.length <= maxBlock:
			if err := c.budget.acquire(int64(r.length)); err != nil {
				requestPool.Put(r)
				return err
			}
			r.cost = int64(r.length) // the buffer or pipe is taken by execute
			if r.length <= inlineMax {
				hold()
				if c.tryInline(r) {
					continue
				}
			}
		}
		select {
		case c.reqs <- r:
		default:
			unhold() // every worker is busy: let the replies go first
			c.reqs <- r
		}
	}
}

// inlineMax is the largest READ the reader goroutine answers itself.
const inlineMax = 32 << 10

// tryInline answers a small READ on the reader goroutine when the
// backend can read it from memory without waiting (NoWaitReader): a
// cached read then costs no hand-off to a worker and no wake-up, and the
// replies of a burst of reads share one write. A read that would wait
// goes to the workers as before, so a slow disk never stalls the reader.
func (c *conn) tryInline(r *request) bool {
	e := c.exp
	if r.typ != cmdRead || r.errno != 0 || r.length == 0 || r.length > inlineMax ||
		c.structured && r.flags&cmdFlagDF == 0 && e.opts.SparseReadMin > 0 && r.length >= uint32(e.opts.SparseReadMin) {
		return false
	}
	if !e.gate.tryEnter() {
		return false
	}
	b := e.backend.Load().b
	nw, ok := b.(NoWaitReader)
	if !ok {
		e.leave()
		return false
	}
	if c.validate(r) && c.inRange(b, r) {
		if r.buf == nil {
			r.buf = getBuffer(int(r.length))
		}
		err := nw.ReadNoWait(c.ctx, r.buf.b[:r.length], int64(r.off))
		if errors.Is(err, ErrWouldBlock) {
			e.leave()
			return false // the worker reads into the same buffer
		}
		if err != nil {
			r.fail(ErrnoOf(err), err)
		}
	}
	e.leave()
	c.reply(r)
	return true
}

// release returns what a request holds and recycles it.
func (c *conn) release(r *request) {
	if r.buf != nil {
		putBuffer(r.buf)
		r.buf = nil
	}
	if r.pipe != nil {
		c.pipes.put(r.pipe, r.pipeEmpty)
		r.pipe, r.piped, r.pipeEmpty = nil, 0, false
	}
	c.budget.release(r.cost)
	r.cost = 0
	r.err = nil
	// Keep only small scratch space in the pool.
	if cap(r.bs) > 64<<10 {
		r.bs = nil
	}
	if cap(r.exts) > 1024 {
		r.exts = nil
	}
	if cap(r.spans) > 1024 {
		r.spans = nil
	}
	if cap(r.parts) > 1024 {
		r.parts = nil
	}
	requestPool.Put(r)
}

var cmdNames = [...]string{"NBD_CMD_READ", "NBD_CMD_WRITE", "NBD_CMD_DISC", "NBD_CMD_FLUSH", "NBD_CMD_TRIM", "NBD_CMD_CACHE", "NBD_CMD_WRITE_ZEROES", "NBD_CMD_BLOCK_STATUS"}

func cmdName(typ uint16) string {
	if int(typ) < len(cmdNames) {
		return cmdNames[typ]
	}
	return fmt.Sprintf("command %d", typ)
}

// execute validates a request and runs it on the backend, filling in the
// result. It runs on a worker.
func (c *conn) execute(r *request) {
	if r.errno != 0 || !c.validate(r) {
		return
	}
	b, err := c.exp.enter(c.ctx)
	if err != nil {
		r.fail(syscall.ESHUTDOWN, err)
		return
	}
	defer c.exp.leave()
	if c.inRange(b, r) {
		c.run(b, r)
	}
}

// validate checks what a request may ask of this export; on failure the
// request carries its error and reports false.
func (c *conn) validate(r *request) bool {
	e := c.exp
	valid := uint16(cmdFlagFUA)
	writes := false
	switch r.typ {
	case cmdRead:
		if c.structured {
			valid |= cmdFlagDF
		}
		if r.length > e.opts.MaxBlock {
			r.fail(syscall.EINVAL, fmt.Errorf("request length %d exceeds the maximum block size %d", r.length, e.opts.MaxBlock))
			return false
		}
	case cmdWrite, cmdTrim:
		writes = true
	case cmdWriteZeroes:
		writes = true
		valid |= cmdFlagNoHole | cmdFlagFastZero
	case cmdBlockStatus:
		valid |= cmdFlagReqOne
	case cmdCache:
		if r.length > e.opts.MaxBlock {
			r.fail(syscall.EINVAL, fmt.Errorf("request length %d exceeds the maximum block size %d", r.length, e.opts.MaxBlock))
			return false
		}
	case cmdFlush:
	default:
		r.fail(syscall.EINVAL, fmt.Errorf("unknown command %d", r.typ))
		return false
	}
	if bad := r.flags &^ valid; bad != 0 {
		r.fail(syscall.EINVAL, fmt.Errorf("unsupported flags %#x for %s", bad, cmdName(r.typ)))
		return false
	}
	if writes && !e.opts.Writable {
		r.fail(syscall.EPERM, errors.New("export is read-only"))
		return false
	}
	if r.typ == cmdBlockStatus {
		if !c.meta.any() {
			r.fail(syscall.EINVAL, errors.New("no metadata context was negotiated"))
			return false
		}
		if r.length == 0 {
			r.fail(syscall.EINVAL, errors.New("block status needs a nonzero length"))
			return false
		}
	}
	if c.blockSizeAgreed && e.opts.MinBlock > 1 && r.typ != cmdFlush {
		if m := uint64(e.opts.MinBlock); r.off%m != 0 || uint64(r.length)%m != 0 {
			r.fail(syscall.EINVAL, fmt.Errorf("request is not aligned to the minimum block size %d", m))
			return false
		}
	}
	return true
}

// inRange checks the request against the backend's size.
func (c *conn) inRange(b Backend, r *request) bool {
	if r.typ == cmdFlush {
		return true
	}
	size := uint64(b.Size())
	if r.off > size || uint64(r.length) > size-r.off {
		// EINVAL for every command, as qemu-storage-daemon 7.2 does
		// (the protocol suggests ENOSPC for writes).
		r.fail(syscall.EINVAL, fmt.Errorf("request at offset %d length %d is past the end of the export (size %d)", r.off, r.length, size))
		return false
	}
	return true
}

// run executes a valid request on the backend, filling in the result.
func (c *conn) run(b Backend, r *request) {
	var err error
	ctx := c.ctx
	off, n := int64(r.off), int64(r.length)
	fua := r.flags&cmdFlagFUA != 0
	switch r.typ {
	case cmdRead:
		if n > 0 {
			err = c.read(ctx, b, r)
		}
	case cmdWrite:
		if n > 0 {
			err = b.WriteAt(ctx, r.buf.b[:n], off, fua)
		}
	case cmdFlush:
		if err = b.Flush(ctx); isNotSupported(err) {
			err = nil // nothing to flush
		}
	case cmdTrim:
		if n > 0 {
			if err = b.Trim(ctx, off, n, fua); isNotSupported(err) {
				err = nil // trim is advisory
			}
		}
	case cmdCache:
		if n > 0 {
			if err = b.Cache(ctx, off, n); isNotSupported(err) {
				err = nil // a hint
			}
		}
	case cmdWriteZeroes:
		if n > 0 {
			err = c.writeZeroes(ctx, b, off, n, r.flags)
		}
	case cmdBlockStatus:
		err = c.blockStatus(ctx, b, r)
	}
	if err != nil {
		r.fail(ErrnoOf(err), err)
	}
}

// zeroes is a read-only buffer of zeroes for write-zeroes emulation.
var zeroes = make([]byte, 1<<20)

func (c *conn) writeZeroes(ctx context.Context, b Backend, off, n int64, flags uint16) error {
	fua := flags&cmdFlagFUA != 0
	fast := flags&cmdFlagFastZero != 0
	err := b.Zero(ctx, off, n, flags&cmdFlagNoHole == 0, fua, fast)
	if err == nil || fast || !isNotSupported(err) {
		return err
	}
	// Without FAST_ZERO, ENOTSUP is not an allowed answer: write zeroes.
	for n > 0 {
		k := min(n, int64(len(zeroes)))
		if err := b.WriteAt(ctx, zeroes[:k], off, fua); err != nil {
			return err
		}
		off += k
		n -= k
	}
	return nil
}

// read answers a READ: a structured read large enough is checked for
// holes first (sent as hole chunks); the data parts are then spliced
// into a pipe when the backend can (see splice_linux.go) or read into a
// buffer.
func (c *conn) read(ctx context.Context, b Backend, r *request) error {
	e := c.exp
	if c.structured && r.flags&cmdFlagDF == 0 && e.opts.SparseReadMin > 0 && r.length >= uint32(e.opts.SparseReadMin) {
		if err := c.findHoles(ctx, b, r); err != nil {
			return err
		}
	}
	parts := r.parts[:0]
	if len(r.spans) == 0 {
		parts = append(parts, span{n: int64(r.length)})
	}
	for _, s := range r.spans {
		if !s.hole {
			parts = append(parts, s)
		}
	}
	r.parts = parts
	if c.spliceRead(ctx, b, r, parts) {
		return nil
	}
	if r.buf == nil {
		r.buf = getBuffer(int(r.length))
	}
	for _, s := range parts {
		if err := b.ReadAt(ctx, r.buf.b[s.off:s.off+s.n], int64(r.off)+s.off); err != nil {
			r.spans = r.spans[:0]
			return err
		}
	}
	return nil
}

// findHoles records in r.spans the parts of the read that are data and
// those that read as zeroes; it leaves r.spans empty when the whole
// range is data (one chunk, as without sparse reads).
func (c *conn) findHoles(ctx context.Context, b Backend, r *request) error {
	off, n := int64(r.off), int64(r.length)
	spans := r.spans[:0]
	add := func(pos, l int64, hole bool) {
		if k := len(spans); k > 0 && spans[k-1].hole == hole {
			spans[k-1].n += l
			return
		}
		spans = append(spans, span{off: pos, n: l, hole: hole})
	}
	var pos int64
	for pos < n {
		exts, err := b.BlockStatus(ctx, off+pos, n-pos)
		if err != nil && !isNotSupported(err) {
			// compat(qsd-7.2): the read fails, as qsd's does.
			return fmt.Errorf("unable to check for holes: %w", err)
		}
		progress := false
		if err == nil {
			for _, x := range exts {
				if x.Length <= 0 {
					break
				}
				l := min(x.Length, n-pos)
				add(pos, l, x.Zero)
				pos += l
				progress = true
				if pos >= n {
					break
				}
			}
		}
		if !progress {
			add(pos, n-pos, false) // unknown status: read it
			pos = n
		}
	}
	r.spans = spans
	if len(spans) == 1 && !spans[0].hole {
		r.spans = spans[:0]
	}
	return nil
}

// maxExtents bounds the extents of one block status chunk; the client
// asks again for the rest. (qsd allows 131072; a smaller bound keeps the
// pooled reply buffers of a connection's workers small.)
const maxExtents = 8192

// blockStatus encodes one chunk payload per negotiated context: the
// allocation contexts from the backend's block status, then each
// selected bitmap from its map. Each chunk describes the range from its
// start, as far as its extents (1 with REQ_ONE) reach.
func (c *conn) blockStatus(ctx context.Context, b Backend, r *request) error {
	off, n := int64(r.off), int64(r.length)
	limit := maxExtents
	if r.flags&cmdFlagReqOne != 0 {
		limit = 1
	}
	r.bs, r.bsEnd = r.bs[:0], r.bsEnd[:0]
	if c.meta.base || c.meta.depth {
		if err := c.allocationStatus(ctx, b, r, off, n, limit); err != nil {
			return err
		}
	}
	for i, on := range c.meta.bitmaps {
		if on {
			m := c.exp.opts.Bitmaps[i].Map
			x := extentWriter{bs: be.AppendUint32(r.bs, ctxIDDirtyBitmap+uint32(i)), limit: limit}
			x.bitmap(m, off, off+n)
			r.bs = x.bs
			r.bsEnd = append(r.bsEnd, len(r.bs))
		}
	}
	return nil
}

// allocationStatus asks the backend about [off, off+n) and encodes the
// chunks of base:allocation and qemu:allocation-depth, as selected.
func (c *conn) allocationStatus(ctx context.Context, b Backend, r *request, off, n int64, limit int) error {
	exts := r.exts[:0]
	var pos int64
	for pos < n && len(exts) < maxExtents {
		got, err := b.BlockStatus(ctx, off+pos, n-pos)
		if err != nil {
			if !isNotSupported(err) {
				return err
			}
			// No status: allocated data, in this node.
			got = []Extent{{Length: n - pos, Depth: 1}}
		}
		progress := false
		for _, x := range got {
			if x.Length <= 0 || pos >= n {
				break
			}
			x.Length = min(x.Length, n-pos)
			exts = append(exts, x)
			pos += x.Length
			progress = true
		}
		if !progress {
			if pos == 0 {
				return fmt.Errorf("block status at offset %d returned no extent: %w", off, syscall.EIO)
			}
			break
		}
		if limit == 1 {
			break
		}
	}
	r.exts = exts
	encode := func(id uint32, flagsOf func(Extent) uint32) {
		x := extentWriter{bs: be.AppendUint32(r.bs, id), limit: limit}
		for _, e := range exts {
			if !x.add(e.Length, flagsOf(e)) {
				break
			}
		}
		x.finish()
		r.bs = x.bs
		r.bsEnd = append(r.bsEnd, len(r.bs))
	}
	if c.meta.base {
		encode(ctxIDBaseAllocation, func(x Extent) uint32 {
			var f uint32
			if x.Hole {
				f |= stateHole
			}
			if x.Zero {
				f |= stateZero
			}
			return f
		})
	}
	if c.meta.depth {
		encode(ctxIDAllocationDepth, func(x Extent) uint32 { return uint32(max(x.Depth, 0)) })
	}
	return nil
}

// extentWriter appends the descriptors of one block status chunk to bs:
// runs with equal flags are merged, and at most limit descriptors are
// written (a run that does not fit ends the chunk).
type extentWriter struct {
	bs    []byte
	limit int
	count int    // descriptors written
	cur   uint32 // flags of the pending run
	n     int64  // length of the pending run; 0 if none
}

// add appends a run; it reports false once the chunk is full.
func (x *extentWriter) add(n int64, flags uint32) bool {
	if n <= 0 {
		return true
	}
	if x.n > 0 && flags == x.cur {
		x.n += n
		return true
	}
	if x.n > 0 && !x.emit() {
		return false
	}
	x.cur, x.n = flags, n
	return true
}

// emit writes the pending run, in pieces that fit a descriptor's 32-bit
// length; it reports false if the limit cut it short.
func (x *extentWriter) emit() bool {
	for x.n > 0 {
		if x.count == x.limit {
			return false
		}
		k := min(x.n, 0xffffffff)
		x.bs = be.AppendUint32(x.bs, uint32(k))
		x.bs = be.AppendUint32(x.bs, x.cur)
		x.count++
		x.n -= k
	}
	return true
}

func (x *extentWriter) finish() { x.emit() }

// bitmap writes the runs of m over [off, end): dirty ranges with
// NBD_STATE_DIRTY, the gaps between them clean. A map that answers
// outside the range it was asked about is clipped to it.
func (x *extentWriter) bitmap(m DirtyMap, off, end int64) {
	for pos := off; pos < end; {
		d, l := m.NextDirtyIn(pos, end)
		if l <= 0 || d >= end {
			x.add(end-pos, 0)
			break
		}
		d = max(d, pos)
		l = min(l, end-d)
		if !x.add(d-pos, 0) || !x.add(l, stateDirty) {
			return
		}
		pos = d + l
	}
	x.finish()
}

// reply sends the reply of a finished request. Replies are serialised by
// wmu: the worker that holds it writes its frames into the batch buffer,
// and the last of the workers waiting to reply flushes the batch, so
// replies that complete together go out in one write. Large READ payloads
// go out with writev together with the batch in front of them.
func (c *conn) reply(r *request) {
	c.replying.Add(1)
	c.wmu.Lock()
	if c.werr == nil {
		c.writeReply(r)
	}
	c.release(r)
	if c.replying.Add(-1) == 0 {
		c.flush()
	}
	c.wmu.Unlock()
}

const (
	writevMin = 32 << 10  // payloads at least this big are not copied
	flushAt   = 256 << 10 // batch size that forces a write
)

func (c *conn) flush() {
	if c.werr != nil || len(c.out) == 0 {
		c.out = c.out[:0]
		return
	}
	_, err := c.nc.Write(c.out)
	c.out = c.out[:0]
	if err != nil {
		c.writeFailed(err)
	}
}

func (c *conn) writeFailed(err error) {
	c.werr = err
	c.abort() // stop reading; work in flight finishes, replies are dropped
}

func (c *conn) payload(p []byte) {
	if len(p) >= writevMin {
		bufs := net.Buffers{c.out, p}
		_, err := bufs.WriteTo(c.nc)
		c.out = c.out[:0]
		if err != nil {
			c.writeFailed(err)
		}
		return
	}
	c.out = append(c.out, p...)
	if len(c.out) >= flushAt {
		c.flush()
	}
}

func appendSimpleReply(b []byte, handle uint64, errno syscall.Errno) []byte {
	b = be.AppendUint32(b, magicSimple)
	b = be.AppendUint32(b, uint32(errno))
	return be.AppendUint64(b, handle)
}

func appendChunkHeader(b []byte, handle uint64, flags, typ uint16, length uint32) []byte {
	b = be.AppendUint32(b, magicStructured)
	b = be.AppendUint16(b, flags)
	b = be.AppendUint16(b, typ)
	b = be.AppendUint64(b, handle)
	return be.AppendUint32(b, length)
}

func (c *conn) simpleReply(r *request, errno syscall.Errno) {
	c.out = appendSimpleReply(c.out, r.handle, errno)
}

func (c *conn) chunkHeader(r *request, flags, typ uint16, length uint32) {
	c.out = appendChunkHeader(c.out, r.handle, flags, typ, length)
}

func (c *conn) errorChunk(r *request) {
	msg := "I/O error"
	if r.err != nil {
		msg = r.err.Error()
	}
	if len(msg) > maxStringLen {
		msg = msg[:maxStringLen]
	}
	msg = strings.ToValidUTF8(msg, "?")
	if len(msg) > maxStringLen {
		msg = msg[:maxStringLen-3]
	}
	c.chunkHeader(r, replyFlagDone, chunkError, uint32(6+len(msg)))
	c.out = be.AppendUint32(c.out, uint32(r.errno))
	c.out = be.AppendUint16(c.out, uint16(len(msg)))
	c.out = append(c.out, msg...)
}

func (c *conn) writeReply(r *request) {
	switch {
	case r.errno != 0 && c.structured:
		c.errorChunk(r)
	case r.errno != 0:
		c.simpleReply(r, r.errno)
	case r.pipe != nil:
		c.flush() // replies batched before this one go first
		if c.werr == nil {
			if err := c.sendPipe(r); err != nil {
				c.writeFailed(err)
			}
		}
	case r.typ == cmdRead && c.structured && r.length == 0:
		c.chunkHeader(r, replyFlagDone, chunkNone, 0)
	case r.typ == cmdRead:
		c.eachChunk(r, func(hdr []byte, s span, data bool) error {
			c.out = append(c.out, hdr...)
			if data && s.n > 0 {
				c.payload(r.buf.b[s.off : s.off+s.n])
			}
			return nil
		})
	case r.typ == cmdBlockStatus:
		start := 0
		for i := range r.bsEnd {
			var flags uint16
			if i == len(r.bsEnd)-1 {
				flags = replyFlagDone
			}
			p := r.bs[start:r.bsEnd[i]]
			c.chunkHeader(r, flags, chunkBlockStatus, uint32(len(p)))
			c.out = append(c.out, p...)
			start = r.bsEnd[i]
		}
	default:
		c.simpleReply(r, 0)
	}
	if len(c.out) >= flushAt {
		c.flush()
	}
}

// eachChunk walks the reply of a successful READ of nonzero length: for
// each chunk, the bytes in front of its data (the simple reply header, or
// a structured chunk header with its offset, or a whole hole chunk) and
// the data part it carries, if any. The buffer and the pipe paths both
// send replies through it, so their bytes are the same.
func (c *conn) eachChunk(r *request, fn func(hdr []byte, s span, data bool) error) error {
	var h [32]byte
	if !c.structured {
		return fn(appendSimpleReply(h[:0], r.handle, 0), span{n: int64(r.length)}, true)
	}
	if len(r.spans) == 0 {
		hdr := appendChunkHeader(h[:0], r.handle, replyFlagDone, chunkOffsetData, 8+r.length)
		return fn(be.AppendUint64(hdr, r.off), span{n: int64(r.length)}, true)
	}
	for i, s := range r.spans {
		var flags uint16
		if i == len(r.spans)-1 {
			flags = replyFlagDone
		}
		var hdr []byte
		if s.hole {
			hdr = appendChunkHeader(h[:0], r.handle, flags, chunkOffsetHole, 12)
			hdr = be.AppendUint64(hdr, r.off+uint64(s.off))
			hdr = be.AppendUint32(hdr, uint32(s.n))
		} else {
			hdr = appendChunkHeader(h[:0], r.handle, flags, chunkOffsetData, uint32(8+s.n))
			hdr = be.AppendUint64(hdr, r.off+uint64(s.off))
		}
		if err := fn(hdr, s, !s.hole); err != nil {
			return err
		}
	}
	return nil
}
