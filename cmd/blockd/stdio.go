package main

import (
	"net"
	"os"
	"syscall"
	"time"
)

// stdioConn is the daemon's stdin and stdout as one connection, for a
// QMP monitor on `--chardev stdio` (how QEMU's own tests drive qsd: they
// pipe commands in and read replies out).
type stdioConn struct{ in, out *os.File }

// newStdioConn opens stdin and stdout in non-blocking mode, so that Go's
// poller runs them: a blocking read of stdin could not be interrupted,
// and quit would wait for the client to close its end. The mode is
// restored on Close, since a terminal shares it with the shell.
func newStdioConn() stdioConn {
	open := func(fd int, name string) *os.File {
		// Best effort: a file left blocking still works, except that
		// quit then waits for the client's EOF.
		_ = syscall.SetNonblock(fd, true)
		return os.NewFile(uintptr(fd), name) // pollable when non-blocking
	}
	return stdioConn{open(0, "stdin"), open(1, "stdout")}
}

func (c stdioConn) Read(p []byte) (int, error)  { return c.in.Read(p) }
func (c stdioConn) Write(p []byte) (int, error) { return c.out.Write(p) }

// Close closes both sides: the client sees EOF on our stdout.
func (c stdioConn) Close() error {
	for _, f := range []*os.File{c.in, c.out} {
		if rc, err := f.SyscallConn(); err == nil {
			rc.Control(func(fd uintptr) { syscall.SetNonblock(int(fd), false) })
		}
	}
	c.in.Close()
	return c.out.Close()
}

func (c stdioConn) LocalAddr() net.Addr  { return stdioAddr{} }
func (c stdioConn) RemoteAddr() net.Addr { return stdioAddr{} }

// The deadlines work where the files are pipes or terminals; on regular
// files (output redirected to a file) writes do not block anyway.
func (c stdioConn) SetDeadline(t time.Time) error {
	c.in.SetReadDeadline(t)
	return c.out.SetWriteDeadline(t)
}
func (c stdioConn) SetReadDeadline(t time.Time) error  { return c.in.SetReadDeadline(t) }
func (c stdioConn) SetWriteDeadline(t time.Time) error { return c.out.SetWriteDeadline(t) }

type stdioAddr struct{}

func (stdioAddr) Network() string { return "stdio" }
func (stdioAddr) String() string  { return "stdio" }
