// Package nbd is the nbd protocol driver: a node whose data is an export
// of an NBD server (qemu-nbd, qemu-storage-daemon, another blockd),
// reached over a UNIX or TCP socket.
//
// One connection carries any number of requests at once (see conn).
// Structured replies are asked for, block status comes from the
// base:allocation context (or a dirty bitmap's with x-dirty-bitmap), and
// the server's block size constraints become the node's limits. FLUSH,
// FUA, TRIM, WRITE_ZEROES and FAST_ZERO are used when the server offers
// them; a read-only export makes a read-only node (with auto-read-only)
// or fails the open.
//
// A lost connection fails the requests in flight with EIO; the next
// request reconnects (one attempt, or retries for reconnect-delay
// seconds, during which requests wait and are then resent), as QEMU's
// client does. A server that breaks the protocol is not reconnected to.
package nbd

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"syscall"
	"time"

	"github.com/blockd/blockd/pkg/block"
	"github.com/blockd/blockd/pkg/nbd/wire"
)

func init() {
	block.Register("nbd", block.KindProtocol, open)
}

type driver struct {
	addr    SocketAddress
	export  string
	metaCtx string
	delay   time.Duration // reconnect-delay
	info    exportInfo    // from the first handshake; reconnects must match

	mu     sync.Mutex
	c      *conn     // guarded by mu; nil or dead between connections
	lostAt time.Time // guarded by mu; when c was found dead
	closed bool      // guarded by mu
}

// dialTimeout bounds one connection attempt (connect and handshake).
const dialTimeout = 10 * time.Second

// retryInterval is the pause between connection attempts while
// open-timeout or reconnect-delay lasts.
const retryInterval = 100 * time.Millisecond

func open(ctx context.Context, o *block.Opener, opts *Options) (block.Impl, error) {
	if opts.TLSCreds != nil || opts.TLSHostname != nil {
		return nil, errors.New("blockd does not support TLS for NBD yet")
	}
	d := &driver{addr: opts.Server, metaCtx: wire.CtxBaseAllocation}
	if opts.Export != nil {
		d.export = *opts.Export
	}
	if len(d.export) > wire.MaxStringLen {
		return nil, fmt.Errorf("export name too long to send to server")
	}
	if opts.XDirtyBitmap != nil {
		// As in QEMU, the option names the whole context (so
		// "qemu:dirty-bitmap:NAME"), whatever its namespace.
		d.metaCtx = *opts.XDirtyBitmap
	}
	if opts.ReconnectDelay != nil {
		d.delay = time.Duration(*opts.ReconnectDelay) * time.Second
	}
	if _, _, err := d.addr.dialArgs(); err != nil {
		return nil, err
	}
	var deadline time.Time
	if opts.OpenTimeout != nil && *opts.OpenTimeout > 0 {
		deadline = time.Now().Add(time.Duration(*opts.OpenTimeout) * time.Second)
	}
	c, err := d.connectRetry(ctx, deadline)
	if err != nil {
		return nil, err
	}
	d.info, d.c = c.info, c
	if opts.XDirtyBitmap != nil && !c.info.hasMeta {
		c.close()
		// compat(qsd-7.2): its nbd driver drops its own message
		// ("requested x-dirty-bitmap %s not found") and reports EINVAL.
		return nil, block.Errorf(block.ErrInvalid, "Could not open image: Invalid argument")
	}
	if c.info.has(wire.TFReadOnly) && !o.ReadOnly() {
		common := o.Common()
		if common.AutoReadOnly == nil || !*common.AutoReadOnly {
			c.close()
			// compat(qsd-7.2): its words for this refusal.
			return nil, block.Errorf(block.ErrReadOnly, "Could not open image: Permission denied")
		}
		o.SetReadOnly(true)
	}
	return d, nil
}

// connectRetry connects until it succeeds, the deadline passes (zero: one
// attempt) or ctx ends. A refused export is not retried.
func (d *driver) connectRetry(ctx context.Context, deadline time.Time) (*conn, error) {
	for {
		c, err := d.connect(ctx)
		if err == nil || errors.Is(err, errUnknownExport) || !time.Now().Before(deadline) {
			return c, err
		}
		t := time.NewTimer(retryInterval)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, err
		case <-t.C:
		}
	}
}

// connect dials the server and negotiates the export.
func (d *driver) connect(ctx context.Context) (*conn, error) {
	network, addr, err := d.addr.dialArgs()
	if err != nil {
		return nil, err
	}
	dctx, cancel := context.WithTimeout(ctx, dialTimeout)
	defer cancel()
	var dialer net.Dialer
	nc, err := dialer.DialContext(dctx, network, addr)
	if err != nil {
		return nil, fmt.Errorf("Failed to connect to '%s': %s", d.addr.describe(), block.Strerror(err))
	}
	nc.SetDeadline(time.Now().Add(dialTimeout)) //nolint:errcheck // best effort
	wire.GrowSendBuffer(nc)
	br := bufio.NewReaderSize(nc, 256<<10)
	info, err := handshake(nc, br, d.export, d.metaCtx)
	if err != nil {
		nc.Close()
		return nil, err
	}
	nc.SetDeadline(time.Time{}) //nolint:errcheck // best effort
	return newConn(nc, br, info), nil
}

// conn returns a live connection, reconnecting if the last one died: one
// attempt without reconnect-delay, else attempts until the delay since
// the loss has passed.
func (d *driver) conn(ctx context.Context) (*conn, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil, errDisconnected
	}
	if d.c != nil && !d.c.dead() {
		return d.c, nil
	}
	if d.c != nil {
		if d.c.permanent() {
			return nil, errDisconnected
		}
		d.c.close()
		d.c = nil
		d.lostAt = time.Now()
	}
	c, err := d.connectRetry(ctx, d.lostAt.Add(d.delay))
	if err != nil {
		return nil, errDisconnected
	}
	if c.info.size != d.info.size || c.info.flags&wire.TFReadOnly > d.info.flags&wire.TFReadOnly {
		// Another export now: using it would corrupt the data.
		c.close()
		return nil, errDisconnected
	}
	d.c = c
	return c, nil
}

// request runs r, resending it after a reconnect while reconnect-delay
// allows.
func (d *driver) request(ctx context.Context, r *request, flags uint16, data []byte) error {
	for {
		c, err := d.conn(ctx)
		if err != nil {
			return err
		}
		err = c.do(r, flags, data)
		if err != errDisconnected || d.delay == 0 || ctx.Err() != nil {
			return err
		}
		r.err, r.extents = nil, nil
	}
}

func (d *driver) Caps() block.Caps {
	i := d.info
	maxT := int64(i.maxBlock)
	return block.Caps{
		Zero:        i.has(wire.TFSendWriteZeroes),
		Discard:     i.has(wire.TFSendTrim),
		FUA:         i.has(wire.TFSendFUA),
		BlockStatus: i.hasMeta,
		Limits: block.Limits{
			RequestAlign:    int64(i.minBlock),
			MaxTransfer:     maxT,
			OptimalTransfer: int64(i.prefBlock),
		},
	}
}

func (d *driver) Size(ctx context.Context) (int64, error) { return int64(d.info.size), nil }

func (d *driver) ReadAt(ctx context.Context, p []byte, off int64, f block.Flags) error {
	return d.request(ctx, &request{cmd: wire.CmdRead, off: uint64(off), length: uint32(len(p)), buf: p}, 0, nil)
}

func (d *driver) WriteAt(ctx context.Context, p []byte, off int64, f block.Flags) error {
	return d.request(ctx, &request{cmd: wire.CmdWrite, off: uint64(off), length: uint32(len(p))}, d.fua(f), p)
}

func (d *driver) fua(f block.Flags) uint16 {
	if f&block.FlagFUA != 0 && d.info.has(wire.TFSendFUA) {
		return wire.CmdFlagFUA
	}
	return 0
}

// maxRange is the most one zero, trim or block status request covers:
// lengths are 32 bits on the wire, and this keeps them aligned to any
// block size the server can ask for.
const maxRange = 1 << 30

func (d *driver) Zero(ctx context.Context, off, n int64, f block.Flags) error {
	if !d.info.has(wire.TFSendWriteZeroes) {
		return block.ErrNotSupported
	}
	flags := d.fua(f)
	if f&block.FlagMayUnmap == 0 {
		flags |= wire.CmdFlagNoHole
	}
	if f&block.FlagNoFallback != 0 {
		if !d.info.has(wire.TFSendFastZero) {
			return block.ErrNotSupported
		}
		flags |= wire.CmdFlagFastZero
	}
	return d.ranges(ctx, wire.CmdWriteZeroes, flags, off, n)
}

func (d *driver) Discard(ctx context.Context, off, n int64) error {
	if !d.info.has(wire.TFSendTrim) {
		return nil
	}
	return d.ranges(ctx, wire.CmdTrim, 0, off, n)
}

// ranges sends cmd over [off, off+n) in pieces of at most maxRange.
func (d *driver) ranges(ctx context.Context, cmd, flags uint16, off, n int64) error {
	for n > 0 {
		l := min(n, maxRange)
		if err := d.request(ctx, &request{cmd: cmd, off: uint64(off), length: uint32(l)}, flags, nil); err != nil {
			return err
		}
		off, n = off+l, n-l
	}
	return nil
}

func (d *driver) Flush(ctx context.Context) error {
	if !d.info.has(wire.TFSendFlush) {
		return nil
	}
	return d.request(ctx, &request{cmd: wire.CmdFlush}, 0, nil)
}

// BlockStatus asks the server for the first extent of the range.
func (d *driver) BlockStatus(ctx context.Context, off, n int64) (block.Extent, error) {
	data := block.Extent{Len: n, Status: block.StatusData | block.StatusAllocated | block.StatusOffsetValid, Offset: off}
	if !d.info.hasMeta {
		return data, nil
	}
	r := &request{cmd: wire.CmdBlockStatus, off: uint64(off), length: uint32(min(n, maxRange))}
	if err := d.request(ctx, r, wire.CmdFlagReqOne, nil); err != nil {
		return block.Extent{}, err
	}
	if len(r.extents) == 0 || r.extents[0].length == 0 {
		// The server answered nothing usable: a broken server, not a
		// reason to fail a job that would copy the data anyway.
		return block.Extent{}, block.ErrnoError(syscall.EIO)
	}
	e := r.extents[0]
	if d.metaCtx == wire.CtxAllocationDepth {
		// compat(qsd-7.2): read through x-dirty-bitmap, a depth of 2 or
		// more (a backing layer) counts as 2, the zero flag.
		e.flags = min(e.flags, 2)
	}
	// A dirty bitmap's NBD_STATE_DIRTY is bit 0, as HOLE is: a dirty
	// range reads as a hole, as QEMU's x-dirty-bitmap shows it.
	st := block.StatusAllocated | block.StatusOffsetValid
	if e.flags&wire.StateHole == 0 {
		st |= block.StatusData
	}
	if e.flags&wire.StateZero != 0 {
		st |= block.StatusZero
	}
	return block.Extent{Len: min(int64(e.length), n), Status: st, Offset: off}, nil
}

// Truncate cannot change an export's size; like QEMU it accepts the
// sizes that need no change.
func (d *driver) Truncate(ctx context.Context, size int64, exact bool) error {
	cur := int64(d.info.size)
	switch {
	case size == cur:
		return nil
	case size > cur:
		return errors.New("Cannot grow NBD nodes")
	case exact:
		return errors.New("Cannot resize NBD nodes")
	}
	return nil
}

// Filename implements block.Filenamer: the export's NBD URI.
func (d *driver) Filename() string { return filename(&d.addr, d.export) }

func (d *driver) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.closed = true
	if d.c != nil {
		d.c.close()
	}
	return nil
}
