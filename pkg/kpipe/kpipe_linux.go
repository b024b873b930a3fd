package kpipe

import "golang.org/x/sys/unix"

// Pipe is a kernel pipe: data moves through it by reference, from one
// descriptor to another (splice(2)).
type Pipe struct {
	R, W int
	Size int // bytes it holds without blocking, for page-aligned data
}

// New makes a pipe of about size bytes (the kernel may give less:
// fs.pipe-max-size, 1 MiB by default, is the most an unprivileged
// process gets; Size says what it got).
func New(size int) (*Pipe, error) {
	var fds [2]int
	if err := unix.Pipe2(fds[:], unix.O_CLOEXEC); err != nil {
		return nil, err
	}
	p := &Pipe{R: fds[0], W: fds[1]}
	unix.FcntlInt(uintptr(p.W), unix.F_SETPIPE_SZ, size) // best effort: the size is read back
	got, err := unix.FcntlInt(uintptr(p.W), unix.F_GETPIPE_SZ, 0)
	if err != nil {
		p.Close()
		return nil, err
	}
	p.Size = got
	return p, nil
}

// Close closes both ends.
func (p *Pipe) Close() {
	unix.Close(p.R)
	unix.Close(p.W)
}
