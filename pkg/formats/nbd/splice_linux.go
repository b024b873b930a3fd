package nbd

import (
	"context"
	"errors"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/blockd/blockd/pkg/block"
	"github.com/blockd/blockd/pkg/nbd/wire"
)

// SpliceWritable implements block.SpliceWriter: a connection lost after
// the pipe was read is SpliceWrite's to report.
func (d *driver) SpliceWritable() bool { return true }

// SpliceWrite implements block.SpliceWriter: the request header is
// written, then the payload is spliced from the pipe into the socket, so
// that page cache pages a job spliced into the pipe (a mirror's source)
// reach the server's receive by reference: blockd copies none of the
// bytes. A connection lost before the pipe was read is waited for and
// resent on as WriteAt's requests are; one lost after is not (the bytes
// are gone from the pipe): ErrNoSplice then tells the caller to write
// from memory, with WriteAt's reconnection rules.
func (d *driver) SpliceWrite(ctx context.Context, pipe int, off int64, n int, f block.Flags) error {
	r := &request{cmd: wire.CmdWrite, off: uint64(off), length: uint32(n)}
	for {
		c, err := d.conn(ctx)
		if err != nil {
			return err
		}
		sent, err := c.send(r, d.fua(f), func(hdr []byte) error { return c.writeFromPipe(hdr, pipe, n) })
		if err != errDisconnected || d.delay == 0 || ctx.Err() != nil {
			return err
		}
		if sent {
			return block.ErrNoSplice
		}
		r.err = nil
	}
}

// writeFromPipe writes hdr, then n bytes from the pipe, to the socket.
func (c *conn) writeFromPipe(hdr []byte, pipe, n int) error {
	sc, ok := c.nc.(syscall.Conn)
	if !ok {
		return errors.New("splice: not a socket")
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return err
	}
	if _, err := c.nc.Write(hdr); err != nil {
		return err
	}
	var serr error
	err = rc.Write(func(fd uintptr) bool {
		for n > 0 {
			k, err := unix.Splice(pipe, nil, int(fd), nil, n, unix.SPLICE_F_MOVE|unix.SPLICE_F_NONBLOCK)
			switch {
			case err == syscall.EINTR:
				continue
			case err == syscall.EAGAIN:
				return false // the socket is full (the pipe holds n bytes): wait until it drains
			case err != nil:
				serr = err
				return true
			case k == 0:
				serr = errors.New("splice: pipe empty before the payload was sent")
				return true
			}
			n -= int(k)
		}
		return true
	})
	if err == nil {
		err = serr
	}
	return err
}
