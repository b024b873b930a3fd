package file

import (
	"context"
	"io"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/blockd/blockd/pkg/block"
)

// SpliceRead implements block.Splicer: splice(2) moves page cache pages
// of the file into the pipe by reference. A file opened with O_DIRECT
// reads with ReadAt, where its alignment rules live. The pipe is never
// waited for: a pipe that fills up (data that does not start on a page
// boundary takes more of its slots than its size says) ends the splice
// with ErrNoSplice, and the caller reads with ReadAt.
func (d *file) SpliceRead(ctx context.Context, pipe int, off int64, n int) (int, error) {
	if d.direct {
		return 0, block.ErrNoSplice
	}
	moved := 0
	for moved < n {
		o := off + int64(moved)
		k, err := unix.Splice(d.fd, &o, pipe, nil, n-moved, unix.SPLICE_F_MOVE|unix.SPLICE_F_NONBLOCK)
		if err == syscall.EINTR {
			continue
		}
		if err == syscall.EAGAIN {
			return moved, block.ErrNoSplice
		}
		if err != nil {
			return moved, ioErr("read", d.name, err)
		}
		if k == 0 {
			return moved, nil // end of file: the caller reads the rest as zeroes
		}
		moved += int(k)
	}
	return moved, nil
}

// SpliceWritable implements block.SpliceWriter: a file opened with
// O_DIRECT writes with WriteAt, where its alignment rules live.
func (d *file) SpliceWritable() bool { return !d.direct }

// SpliceWrite implements block.SpliceWriter: splice(2) copies the pipe's
// pages into the file's page cache, the one copy a write must make (a
// pread into a buffer and a pwrite out of it make two).
func (d *file) SpliceWrite(ctx context.Context, pipe int, off int64, n int, f block.Flags) error {
	if d.direct {
		return block.ErrNoSplice
	}
	done := 0
	for done < n {
		o := off + int64(done)
		k, err := unix.Splice(pipe, nil, d.fd, &o, n-done, unix.SPLICE_F_MOVE)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return ioErr("write", d.name, err)
		}
		if k == 0 {
			// The caller promised n bytes in the pipe.
			return ioErr("write", d.name, io.ErrUnexpectedEOF)
		}
		done += int(k)
	}
	if f&block.FlagFUA != 0 {
		return d.Flush(ctx)
	}
	d.startWriteBack(off, int64(n))
	return nil
}

// ReadNoWait implements block.NoWaitReader with preadv2(RWF_NOWAIT): the
// read succeeds only if the page cache holds all of it. O_DIRECT files
// and file systems without RWF_NOWAIT always answer ErrWouldBlock.
func (d *file) ReadNoWait(ctx context.Context, p []byte, off int64) error {
	if d.direct || d.noNoWait.Load() {
		return block.ErrWouldBlock
	}
	iov := [][]byte{p}
	for {
		n, err := unix.Preadv2(d.fd, iov, off, unix.RWF_NOWAIT)
		switch {
		case err == syscall.EINTR:
			continue
		case err == syscall.EAGAIN:
			return block.ErrWouldBlock
		case err == syscall.EOPNOTSUPP || err == syscall.EINVAL:
			d.noNoWait.Store(true)
			return block.ErrWouldBlock
		case err != nil:
			return ioErr("read", d.name, err)
		case n < len(p):
			// Partly cached, or the file shrank: ReadAt finishes it.
			return block.ErrWouldBlock
		}
		return nil
	}
}
