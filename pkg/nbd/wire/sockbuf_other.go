//go:build !linux

package wire

import "net"

// GrowSendBuffer does nothing where the send buffer is not tuned.
func GrowSendBuffer(net.Conn) {}
