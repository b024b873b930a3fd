package main

import (
	"net"
	"os"
	"sync"
	"syscall"
	"time"
)

// stdioConn is the daemon's stdin and stdout as one connection, for a
// QMP monitor on `--chardev stdio` (how QEMU's own tests drive qsd: they
// pipe commands in and read replies out).
type stdioConn struct {
	in, out *os.File
	// modes are duplicates of fds 0 and 1 (-1 where dup failed), kept to
	// restore their blocking mode after in and out are closed.
	modes [2]int
	once  sync.Once // Close closes the duplicates once
	err   error
}

// newStdioConn opens stdin and stdout in non-blocking mode, so that Go's
// poller runs them: a blocking read of stdin could not be interrupted,
// and quit would wait for the client to close its end. The mode belongs
// to the open file, which a terminal shares with the shell, so Close
// restores it.
func newStdioConn() *stdioConn { return newFDConn(0, 1) }

// newFDConn is newStdioConn for any two descriptors.
func newFDConn(in, out int) *stdioConn {
	c := &stdioConn{modes: [2]int{-1, -1}}
	open := func(i, fd int, name string) *os.File {
		if d, err := syscall.Dup(fd); err == nil {
			syscall.CloseOnExec(d)
			c.modes[i] = d
		}
		// Best effort: a file left blocking still works, except that
		// quit then waits for the client's EOF.
		_ = syscall.SetNonblock(fd, true)
		return os.NewFile(uintptr(fd), name) // pollable when non-blocking
	}
	c.in, c.out = open(0, in, "stdin"), open(1, out, "stdout")
	return c
}

func (c *stdioConn) Read(p []byte) (int, error)  { return c.in.Read(p) }
func (c *stdioConn) Write(p []byte) (int, error) { return c.out.Write(p) }

// Close closes both sides (the client sees EOF on our stdout), then
// makes the files blocking again through the duplicates. Not before: a
// read that started while the file was non-blocking and reached the
// kernel after it was made blocking would wait for the client, and
// closing the file waits for that read.
func (c *stdioConn) Close() error {
	c.once.Do(func() {
		c.in.Close()
		c.err = c.out.Close()
		for _, d := range c.modes {
			if d >= 0 {
				_ = syscall.SetNonblock(d, false)
				syscall.Close(d)
			}
		}
	})
	return c.err
}

func (c *stdioConn) LocalAddr() net.Addr  { return stdioAddr{} }
func (c *stdioConn) RemoteAddr() net.Addr { return stdioAddr{} }

// The deadlines work where the files are pipes or terminals; on regular
// files (output redirected to a file) writes do not block anyway.
func (c *stdioConn) SetDeadline(t time.Time) error {
	c.in.SetReadDeadline(t)
	return c.out.SetWriteDeadline(t)
}
func (c *stdioConn) SetReadDeadline(t time.Time) error  { return c.in.SetReadDeadline(t) }
func (c *stdioConn) SetWriteDeadline(t time.Time) error { return c.out.SetWriteDeadline(t) }

type stdioAddr struct{}

func (stdioAddr) Network() string { return "stdio" }
func (stdioAddr) String() string  { return "stdio" }
