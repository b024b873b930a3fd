package qcow2

import (
	"context"
	"io"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/blockd/blockd/pkg/block"
)

// payload is the guest data of a write, taken from its front as the
// write goes: bytes in memory (WriteAt), or bytes waiting in a pipe
// (SpliceWrite), which the file takes with no copy through blockd.
type payload struct {
	p    []byte // the data, when it is in memory
	pipe int    // else the read end of the pipe holding it; -1 for p
}

// writeTo writes the next n bytes to the file at host.
func (src *payload) writeTo(ctx context.Context, file *block.Child, host, n int64) error {
	if src.pipe < 0 {
		err := file.WriteAt(ctx, src.p[:n], host, 0)
		src.p = src.p[n:]
		return err
	}
	return file.SpliceWrite(ctx, src.pipe, host, int(n), 0)
}

// readInto moves the next len(buf) bytes into buf: where a write is
// gathered with its copy-on-write data into one buffer.
func (src *payload) readInto(buf []byte) error {
	if src.pipe < 0 {
		src.p = src.p[copy(buf, src.p):]
		return nil
	}
	for len(buf) > 0 {
		k, err := unix.Read(src.pipe, buf)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		if k == 0 {
			return io.ErrUnexpectedEOF // the caller promised the bytes
		}
		buf = buf[k:]
	}
	return nil
}
