package nbd

import (
	"net"

	"golang.org/x/sys/unix"
)

// sendBufferBytes is the send buffer a UNIX-socket connection asks for:
// room for a few of the mirror's 1 MiB write requests. With the kernel's
// default (about 208 KiB) a 1 MiB WRITE leaves in five or so pieces, the
// sender parks in the poller between them, and the server reads the
// payload in as many pieces, waking up for each (see docs/benchmarks.md,
// the migration section). The server's side does the same for its read
// replies (pkg/nbd's growSendBuffer).
const sendBufferBytes = 4 << 20

// growSendBuffer raises a UNIX socket's send buffer to sendBufferBytes,
// within net.core.wmem_max (SO_SNDBUFFORCE past it, where the daemon may).
// TCP is left to the kernel's own tuning.
func growSendBuffer(nc net.Conn) {
	uc, ok := nc.(*net.UnixConn)
	if !ok {
		return
	}
	rc, err := uc.SyscallConn()
	if err != nil {
		return
	}
	rc.Control(func(fd uintptr) {
		s := int(fd)
		// The kernel reports twice what was asked (its bookkeeping).
		cur, err := unix.GetsockoptInt(s, unix.SOL_SOCKET, unix.SO_SNDBUF)
		if err != nil || cur >= 2*sendBufferBytes {
			return
		}
		unix.SetsockoptInt(s, unix.SOL_SOCKET, unix.SO_SNDBUF, sendBufferBytes)
		if cur, err = unix.GetsockoptInt(s, unix.SOL_SOCKET, unix.SO_SNDBUF); err == nil && cur < 2*sendBufferBytes {
			unix.SetsockoptInt(s, unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, sendBufferBytes) // best effort
		}
	})
}
