//go:build !linux

package nbd

import (
	"context"
	"errors"
	"net"
)

// Without splice(2) every read reply takes the buffer path.

type pipe struct{}

type pipePool struct{}

func (*pipePool) init(net.Conn, int)                                       {}
func (*pipePool) put(*pipe, bool)                                          {}
func (*pipePool) closeAll()                                                {}
func (c *conn) spliceRead(context.Context, Backend, *request, []span) bool { return false }
func (c *conn) sendPipe(*request) error                                    { return errors.New("splice is not available") }
