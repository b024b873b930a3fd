package wire

import (
	"net"

	"golang.org/x/sys/unix"
)

// SendBufferBytes is the send buffer both ends of a UNIX-socket NBD
// connection ask for. With the kernel's default (about 208 KiB) a 256 KiB
// read reply or a 1 MiB WRITE leaves in several pieces: the sender parks
// in the poller between them and the peer wakes up for each. With room
// for a few such messages each goes out in one writev (docs/benchmarks.md,
// the NBD export and migration sections).
const SendBufferBytes = 4 << 20

// GrowSendBuffer raises a UNIX socket's send buffer to SendBufferBytes.
// SO_SNDBUF is capped by net.core.wmem_max; a daemon with CAP_NET_ADMIN
// may pass the cap with SO_SNDBUFFORCE, which is tried when the plain
// request fell short. TCP connections are left alone: setting SO_SNDBUF
// there turns off the kernel's own tuning, which does better.
func GrowSendBuffer(nc net.Conn) {
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
		if err != nil || cur >= 2*SendBufferBytes {
			return
		}
		unix.SetsockoptInt(s, unix.SOL_SOCKET, unix.SO_SNDBUF, SendBufferBytes)
		if cur, err = unix.GetsockoptInt(s, unix.SOL_SOCKET, unix.SO_SNDBUF); err == nil && cur < 2*SendBufferBytes {
			unix.SetsockoptInt(s, unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, SendBufferBytes) // best effort
		}
	})
}
