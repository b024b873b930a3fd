package nbd

import (
	"net"

	"golang.org/x/sys/unix"
)

// sendBufferBytes is the send buffer a UNIX-socket connection asks for.
// The kernel's default (about 208 KiB) is smaller than one 256 KiB read
// reply, the size nbdcopy asks for: such a reply then goes out in two
// writes with a wait for the client in between, which costs a trip
// through the poller and two wake-ups per request. With room for several
// replies a read reply is one writev, and the server stops paying for
// scheduling more than for copying (see docs/benchmarks.md, issue 17).
const sendBufferBytes = 4 << 20

// growSendBuffer raises a UNIX socket's send buffer to sendBufferBytes.
// SO_SNDBUF is capped by net.core.wmem_max; a daemon with CAP_NET_ADMIN
// may pass the cap with SO_SNDBUFFORCE, which is tried when the plain
// request fell short. TCP connections are left alone: setting SO_SNDBUF
// there turns off the kernel's own tuning, which does better.
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
		cur, err := unix.GetsockoptInt(s, unix.SOL_SOCKET, unix.SO_SNDBUF)
		// The kernel reports twice what was asked (it counts its own
		// bookkeeping), so compare against twice the target.
		if err != nil || cur >= 2*sendBufferBytes {
			return
		}
		unix.SetsockoptInt(s, unix.SOL_SOCKET, unix.SO_SNDBUF, sendBufferBytes)
		if cur, err = unix.GetsockoptInt(s, unix.SOL_SOCKET, unix.SO_SNDBUF); err == nil && cur < 2*sendBufferBytes {
			unix.SetsockoptInt(s, unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, sendBufferBytes) // best effort
		}
	})
}
