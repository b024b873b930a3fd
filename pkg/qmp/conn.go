package qmp

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"time"

	"github.com/sirupsen/logrus"
)

// conn is one client connection: a reader goroutine that parses the input
// stream, validates requests and hands them to the executor one at a time,
// and a writer goroutine that owns the socket's write side and drains a
// bounded queue of replies and events.
type conn struct {
	s      *Server
	nc     net.Conn
	pretty bool
	log    logrus.FieldLogger
	parser *streamParser // reader goroutine only

	// out carries complete messages to the writer. Sends happen only with
	// s.mu held and while !closed, so closing it is safe.
	out chan []byte

	done chan struct{} // closed when the connection is gone

	closed     bool // guarded by s.mu; out is closed
	negotiated bool // guarded by s.mu; qmp_capabilities succeeded
	oob        bool // guarded by s.mu; negotiated with "oob" enabled
}

func (s *Server) newConn(nc net.Conn, o MonitorOptions) *conn {
	c := &conn{
		done:   make(chan struct{}),
		s:      s,
		nc:     nc,
		pretty: o.Pretty,
		log:    s.log.WithField("qmp-conn", s.nextConn.Add(1)),
		parser: newStreamParser(s.opts.MaxMessageSize),
		out:    make(chan []byte, s.opts.OutQueue),
	}
	s.mu.Lock()
	if s.mu.closing || s.mu.quitting {
		s.mu.Unlock()
		nc.Close()
		close(c.done)
		return c
	}
	s.mu.conns[c] = struct{}{}
	s.wg.Add(2)
	s.connWG.Add(2)
	g := s.greeting[0]
	if c.pretty {
		g = s.greeting[1]
	}
	c.sendLocked(g)
	s.mu.Unlock()
	c.log.Debug("qmp: client connected")
	go c.readLoop()
	go c.writeLoop()
	return c
}

// sendLocked queues one message. A full queue means the client does not
// keep up: it is disconnected rather than let it hold anyone up.
// s.mu must be held.
func (c *conn) sendLocked(b []byte) {
	if c.closed {
		return
	}
	select {
	case c.out <- b:
	default:
		c.log.Warn("qmp: output queue full; disconnecting client")
		c.abortLocked()
	}
}

// abortLocked closes the connection at once, dropping what is queued.
// s.mu must be held.
func (c *conn) abortLocked() {
	if !c.closed {
		c.closed = true
		close(c.out)
	}
	c.nc.Close()
}

// drainLocked closes the connection after the writer has written what is
// queued, within drainTimeout. s.mu must be held.
func (c *conn) drainLocked() {
	if c.closed {
		return
	}
	c.closed = true
	close(c.out)
	c.nc.SetWriteDeadline(time.Now().Add(drainTimeout))
}

func (c *conn) writeLoop() {
	s := c.s
	defer func() {
		c.nc.Close()
		s.mu.Lock()
		delete(s.mu.conns, c)
		s.mu.Unlock()
		c.log.Debug("qmp: connection closed")
		close(c.done)
		s.connWG.Done()
		s.wg.Done()
	}()
	bw := bufio.NewWriterSize(c.nc, 32<<10)
	var err error
	for b := range c.out {
		if err != nil {
			continue // the client is gone; drain the queue until it is closed
		}
		if _, err = bw.Write(b); err == nil && len(c.out) == 0 {
			err = bw.Flush()
		}
		if err != nil {
			c.log.WithError(err).Debug("qmp: write failed")
			c.nc.Close() // wakes the reader
		}
	}
	if err == nil {
		bw.Flush()
	}
}

func (c *conn) readLoop() {
	s := c.s
	defer func() {
		s.mu.Lock()
		c.drainLocked()
		s.mu.Unlock()
		s.connWG.Done()
		s.wg.Done()
	}()
	buf := make([]byte, readBufSize)
	for {
		n, err := c.nc.Read(buf)
		if n > 0 {
			switch c.parser.feed(buf[:n], c.handle) {
			case nil:
			case errTooLarge:
				c.log.Warnf("qmp: client sent a JSON value larger than %d bytes; disconnecting it", s.opts.MaxMessageSize)
				s.mu.Lock()
				c.abortLocked()
				s.mu.Unlock()
				return
			default:
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// handle takes one parsed value or parse error. It returns false when the
// server stops taking commands.
func (c *conn) handle(v *value, perr string) bool {
	if perr != "" {
		// The id could not be parsed: parse errors never carry one.
		c.replyError(nil, GenericError, perr)
		return true
	}
	return c.dispatch(v)
}

func (c *conn) replyError(id *value, class Class, desc string) {
	msg := errorMsg(id, class, desc)
	b := renderMessage(&msg, c.pretty, c.s.opts.KeepMemberOrder)
	c.s.mu.Lock()
	c.sendLocked(b)
	c.s.mu.Unlock()
}

// dispatch checks a request the way qsd does, in qsd's order, and runs it.
// compat(qsd-7.2): qmp-protocol.md sections 4 and 5, transcripts P-1, P-2.
func (c *conn) dispatch(v *value) bool {
	s := c.s
	if v.kind != kindObject {
		c.replyError(nil, GenericError, "QMP input must be a JSON object")
		return true
	}
	id := v.get("id")

	s.mu.Lock()
	negotiated, oob := c.negotiated, c.oob
	s.mu.Unlock()

	// Members are checked in the order qsd iterates them (its QDict's
	// order), so that of several faults the one qsd reports is reported.
	var execKey, name string
	var args *value
	for _, i := range qdictOrder(v) {
		k, m := v.member(i)
		switch {
		case k == "execute" || (k == "exec-oob" && oob):
			if m.kind != kindString {
				c.replyError(id, GenericError, fmt.Sprintf("QMP input member '%s' must be a string", k))
				return true
			}
			if execKey != "" {
				c.replyError(id, GenericError, fmt.Sprintf("QMP input member '%s' clashes with '%s'", k, execKey))
				return true
			}
			execKey, name = k, m.s
		case k == "arguments":
			if m.kind != kindObject {
				c.replyError(id, GenericError, "QMP input member 'arguments' must be an object")
				return true
			}
			args = m
		case k == "id":
		default:
			c.replyError(id, GenericError, fmt.Sprintf("QMP input member '%s' is unexpected", k))
			return true
		}
	}
	if execKey == "" {
		c.replyError(id, GenericError, "QMP input lacks member 'execute'")
		return true
	}

	var h Handler
	if !negotiated {
		if name != cmdCapabilities {
			c.s.observe("", CommandNotFound)
			c.replyError(id, CommandNotFound, "Expecting capabilities negotiation with 'qmp_capabilities'")
			return true
		}
		h = builtinHandler(cmdCapabilities)
	} else if h = s.lookup(name); h == nil {
		c.s.observe("", CommandNotFound)
		c.replyError(id, CommandNotFound, fmt.Sprintf("The command %s has not been found", name))
		return true
	}
	if execKey == "exec-oob" {
		// No command of qsd 7.2 allows out-of-band execution.
		c.replyError(id, GenericError, fmt.Sprintf("The command %s does not support OOB", name))
		return true
	}

	req := &request{c: c, name: name, h: h, id: id, args: json.RawMessage("{}"), done: make(chan struct{})}
	if args != nil {
		req.args = renderArgs(args)
	}
	select {
	case s.exec <- req:
	case <-s.stopping:
		return false
	}
	select {
	case <-req.done:
		return true
	case <-s.closingCh:
		return false
	}
}
