package mirror

import (
	"golang.org/x/sys/unix"
)

// pipe is a kernel pipe a copy moves its data through by reference: the
// source splices its page cache pages in, the target (an NBD client)
// splices them on into its socket.
type pipe struct {
	r, w int
	size int // bytes it holds without blocking, for page-aligned data
}

// pipeBytes is the capacity asked for (fs.pipe-max-size, 1 MiB by
// default, is the most an unprivileged process gets): the mirror's
// copies are 1 MiB.
const pipeBytes = 1 << 20

func newPipe() (*pipe, error) {
	var fds [2]int
	if err := unix.Pipe2(fds[:], unix.O_CLOEXEC); err != nil {
		return nil, err
	}
	p := &pipe{r: fds[0], w: fds[1]}
	unix.FcntlInt(uintptr(p.w), unix.F_SETPIPE_SZ, pipeBytes) // best effort: the size is read back
	size, err := unix.FcntlInt(uintptr(p.w), unix.F_GETPIPE_SZ, 0)
	if err != nil {
		p.close()
		return nil, err
	}
	p.size = size
	return p, nil
}

func (p *pipe) close() {
	unix.Close(p.r)
	unix.Close(p.w)
}
