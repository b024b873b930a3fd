package nbd

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/blockd/blockd/pkg/kpipe"
)

// Large read replies can leave without passing through blockd's memory:
// the worker splices the reply into a pipe (its header written there,
// then the data moved in by reference from the page cache by a
// PipeReader backend), and the writer splices the pipe into the socket.
// Where pread and writev copy every byte twice, this copies nothing; the
// client's own receive is the only copy left. Replies smaller than
// spliceMin keep the buffer path, where several replies share one write.
const (
	spliceMin = 64 << 10
	pipeBytes = 1 << 20 // asked for with F_SETPIPE_SZ (fs.pipe-max-size is 1 MiB by default)
)

var pageSize = os.Getpagesize()

// pipe is a kernel pipe a request's reply is assembled in. It is
// blocking: the worker fills it only up to its capacity, so no write to
// it waits, and the writer empties it completely before it is reused.
type pipe kpipe.Pipe

func (p *pipe) close() { (*kpipe.Pipe)(p).Close() }

// fits says whether a reply with the given data parts and chunk headers
// can be assembled in the pipe without blocking: a spliced part may start
// and end inside a page, and each header may take a buffer of its own.
func (p *pipe) fits(data int64, parts, headers int) bool {
	need := int(data)/pageSize + 2*parts + headers + 1
	return need <= p.Size/pageSize
}

// write puts reply bytes (headers) into the pipe.
func (p *pipe) write(b []byte) error {
	for len(b) > 0 {
		n, err := unix.Write(p.W, b)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		b = b[n:]
	}
	return nil
}

// pipePool keeps one connection's pipes. At most Workers requests hold a
// pipe at once, so the pool never grows past that.
type pipePool struct {
	pipes *kpipe.Pool
	ok    bool // the connection is a socket splice can write to
}

func (pp *pipePool) init(nc net.Conn, workers int) {
	_, isSock := nc.(interface {
		SyscallConn() (syscall.RawConn, error)
	})
	switch nc.(type) {
	case *net.UnixConn, *net.TCPConn:
	default:
		isSock = false
	}
	pp.ok = isSock
	pp.pipes = kpipe.NewPool(workers, pipeBytes)
}

// get returns a pipe, or nil when none can be made (out of descriptors).
func (pp *pipePool) get() *pipe { return (*pipe)(pp.pipes.Get()) }

// put returns an empty pipe; a pipe that may hold bytes is closed.
func (pp *pipePool) put(p *pipe, empty bool) {
	if !empty {
		p.close()
		return
	}
	pp.pipes.Put((*kpipe.Pipe)(p))
}

func (pp *pipePool) closeAll() { pp.pipes.Close() }

// spliceRead assembles r's reply in a pipe when the backend can move the
// data without copying. It reports false, with nothing kept, when the
// reply takes the buffer path instead (the backend's ReadAt then runs
// and reports any error).
func (c *conn) spliceRead(ctx context.Context, b Backend, r *request, parts []span) bool {
	pr, ok := b.(PipeReader)
	if !ok || !c.pipes.ok || r.length < spliceMin {
		return false
	}
	var data int64
	for _, s := range parts {
		data += s.n
	}
	headers := 1
	if len(r.spans) > 0 {
		headers = len(r.spans)
	}
	p := c.pipes.get()
	if p == nil {
		return false
	}
	if !p.fits(data, len(parts), headers) {
		c.pipes.put(p, true)
		return false
	}
	moved := 0
	err := c.eachChunk(r, func(hdr []byte, s span, data bool) error {
		if err := p.write(hdr); err != nil {
			return err
		}
		moved += len(hdr)
		if !data {
			return nil
		}
		k, err := pr.ReadToPipe(ctx, p.W, int64(r.off)+s.off, int(s.n))
		moved += k
		if err == nil && k != int(s.n) {
			err = io.ErrUnexpectedEOF
		}
		return err
	})
	if err != nil {
		c.pipes.put(p, false)
		return false
	}
	r.pipe, r.piped = p, moved
	return true
}

// sendPipe writes the reply assembled in r's pipe to the socket. The
// caller holds wmu and has flushed the batch in front of it.
func (c *conn) sendPipe(r *request) error {
	rc, err := c.nc.(syscall.Conn).SyscallConn()
	if err != nil {
		return err
	}
	left := r.piped
	var serr error
	err = rc.Write(func(fd uintptr) bool {
		for left > 0 {
			k, err := unix.Splice(r.pipe.R, nil, int(fd), nil, left, unix.SPLICE_F_MOVE|unix.SPLICE_F_NONBLOCK)
			switch {
			case err == syscall.EINTR:
				continue
			case err == syscall.EAGAIN:
				return false // the socket is full: wait until it drains
			case err != nil:
				serr = err
				return true
			case k == 0:
				serr = errors.New("splice: pipe empty before the reply was sent")
				return true
			}
			left -= int(k)
		}
		return true
	})
	if err == nil {
		err = serr
	}
	if err == nil {
		r.pipeEmpty = true
		splicedReplies.Add(1)
	}
	return err
}
