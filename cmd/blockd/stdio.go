package main

import (
	"net"
	"os"
	"time"
)

// stdioConn is the daemon's stdin and stdout as one connection, for a
// QMP monitor on `--chardev stdio` (how QEMU's own tests drive qsd: they
// pipe commands in and read replies out).
type stdioConn struct{ in, out *os.File }

func (c stdioConn) Read(p []byte) (int, error)  { return c.in.Read(p) }
func (c stdioConn) Write(p []byte) (int, error) { return c.out.Write(p) }

// Close closes both sides: the client sees EOF on our stdout.
func (c stdioConn) Close() error {
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
