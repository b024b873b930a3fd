package nbd

import (
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/sirupsen/logrus"
)

// ServerOptions configure a Server. Zero values select defaults; the
// caller's value is never modified.
type ServerOptions struct {
	// Logger receives connection events at debug level and protocol
	// violations at info level. Nil discards them.
	Logger logrus.FieldLogger
	// MaxConnections limits the connections served at once (handshake
	// included). At the limit the server stops accepting, as qsd does:
	// the next client waits in the listen backlog until a connection
	// ends. 0 means no limit.
	MaxConnections int
	// Workers is the number of requests one connection executes at once
	// (its queue depth towards the backend). 0 means 16.
	Workers int
	// MaxBufferBytes bounds the payload bytes (write data received, read
	// data to send) one connection holds at once; the connection stops
	// reading requests while it is reached. 0 means 64 MiB. It must be at
	// least the largest MaxBlock of the exports.
	MaxBufferBytes int64
	// HandshakeTimeout is how long a client may take from its connection
	// to the end of option negotiation; then it is dropped, so clients
	// that never negotiate cannot hold connection slots (CVE-2024-7409;
	// qsd 7.2.22 drops them after 10 seconds). 0 means 10 seconds, a
	// negative value no limit.
	HandshakeTimeout time.Duration
}

const (
	defaultWorkers          = 16
	defaultBufferBytes      = 64 << 20
	defaultHandshakeTimeout = 10 * time.Second
)

// ErrServerClosed is returned by Serve after Close.
var ErrServerClosed = errors.New("nbd: server closed")

// ErrExportExists is wrapped by AddExport when the name is taken.
var ErrExportExists = errors.New("export name already in use")

// ErrExportNotFound is wrapped by RemoveExport for an unknown name.
var ErrExportNotFound = errors.New("export not found")

// ErrExportInUse is wrapped by a safe RemoveExport while clients are
// connected.
var ErrExportInUse = errors.New("export still in use")

// Server serves NBD exports on any number of listeners.
type Server struct {
	opts ServerOptions // defaults applied
	log  logrus.FieldLogger

	done chan struct{} // closed by Close
	wg   sync.WaitGroup

	mu struct {
		sync.Mutex
		closed    bool
		exports   []*Export // in the order they were added (NBD_OPT_LIST order)
		listeners map[net.Listener]struct{}
		conns     map[*conn]struct{}
		slotFreed chan struct{} // closed and replaced when a connection ends
	}
}

// NewServer returns a server with no exports and no listeners.
func NewServer(o ServerOptions) *Server {
	if o.Logger == nil {
		l := logrus.New()
		l.Out = io.Discard
		o.Logger = l
	}
	if o.Workers <= 0 {
		o.Workers = defaultWorkers
	}
	if o.MaxBufferBytes <= 0 {
		o.MaxBufferBytes = defaultBufferBytes
	}
	if o.HandshakeTimeout == 0 {
		o.HandshakeTimeout = defaultHandshakeTimeout
	}
	s := &Server{opts: o, log: o.Logger, done: make(chan struct{})}
	s.mu.listeners = make(map[net.Listener]struct{})
	s.mu.conns = make(map[*conn]struct{})
	s.mu.slotFreed = make(chan struct{})
	return s
}

// AddExport adds an export of b. The name must not be in use
// (ErrExportExists).
func (s *Server) AddExport(b Backend, o ExportOptions) (*Export, error) {
	if b == nil {
		return nil, errors.New("nbd: nil backend")
	}
	if err := checkExportOptions(&o, s.opts.MaxBufferBytes); err != nil {
		return nil, err
	}
	e := &Export{srv: s, opts: o}
	e.gate.cond.L = &e.gate.mu
	e.mu.conns = make(map[*conn]struct{})
	e.backend.Store(&backendBox{b})
	e.lastSize.Store(b.Size())

	s.mu.Lock()
	defer s.mu.Unlock()
	if s.mu.closed {
		return nil, ErrServerClosed
	}
	for _, x := range s.mu.exports {
		if x.opts.Name == o.Name {
			return nil, fmt.Errorf("NBD server already has export named '%s': %w", o.Name, ErrExportExists)
		}
	}
	s.mu.exports = append(s.mu.exports, e)
	return e, nil
}

// Export returns the export called name, or nil.
func (s *Server) Export(name string) *Export {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.findLocked(name)
}

// Exports returns the exports in the order they were added.
func (s *Server) Exports() []*Export {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]*Export(nil), s.mu.exports...)
}

func (s *Server) findLocked(name string) *Export {
	for _, e := range s.mu.exports {
		if e.opts.Name == name {
			return e
		}
	}
	return nil
}

// RemoveExport removes the export called name. Without hard it fails with
// an error wrapping ErrExportInUse while clients are connected (QEMU:
// "export 'X' still in use", hint "Use mode='hard' to force client
// disconnect"). With hard, its clients are disconnected; their requests in
// flight finish first.
//
// When RemoveExport returns nil, no backend call of the export is in flight
// and none will start: the caller may close the backend.
func (s *Server) RemoveExport(name string, hard bool) error {
	s.mu.Lock()
	e := s.findLocked(name)
	if e == nil {
		s.mu.Unlock()
		return fmt.Errorf("export '%s' not found: %w", name, ErrExportNotFound)
	}
	e.mu.Lock()
	if !hard && len(e.mu.conns) > 0 {
		e.mu.Unlock()
		s.mu.Unlock()
		return fmt.Errorf("export '%s' still in use: %w", name, ErrExportInUse)
	}
	e.mu.removed = true
	conns := make([]*conn, 0, len(e.mu.conns))
	for c := range e.mu.conns {
		conns = append(conns, c)
	}
	e.mu.Unlock()
	for i, x := range s.mu.exports {
		if x == e {
			s.mu.exports = append(s.mu.exports[:i:i], s.mu.exports[i+1:]...)
			break
		}
	}
	s.mu.Unlock()

	for _, c := range conns {
		c.kill()
	}
	e.gate.close()
	return nil
}

// Serve accepts connections on l until Close, which closes l. It returns
// ErrServerClosed after Close, or the error that stopped accepting.
func (s *Server) Serve(l net.Listener) error {
	s.mu.Lock()
	if s.mu.closed {
		s.mu.Unlock()
		return ErrServerClosed
	}
	s.mu.listeners[l] = struct{}{}
	s.wg.Add(1)
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.mu.listeners, l)
		s.mu.Unlock()
		s.wg.Done()
	}()

	var backoff time.Duration
	for {
		if !s.waitSlot() {
			return ErrServerClosed
		}
		nc, err := l.Accept()
		if err != nil {
			select {
			case <-s.done:
				return ErrServerClosed
			default:
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || isTemporaryAcceptError(err) {
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				s.log.WithError(err).Warn("nbd: accept failed; retrying")
				t := time.NewTimer(backoff)
				select {
				case <-t.C:
				case <-s.done:
					t.Stop()
					return ErrServerClosed
				}
				continue
			}
			return err
		}
		backoff = 0
		s.startConn(nc)
	}
}

func (s *Server) startConn(nc net.Conn) {
	s.mu.Lock()
	if s.mu.closed {
		s.mu.Unlock()
		nc.Close()
		return
	}
	if s.opts.MaxConnections > 0 && len(s.mu.conns) >= s.opts.MaxConnections {
		// Only when another listener took the slot first.
		s.mu.Unlock()
		s.log.WithField("remote", nc.RemoteAddr().String()).
			Info("nbd: refusing connection: too many connections")
		nc.Close()
		return
	}
	c := newConn(s, nc)
	s.mu.conns[c] = struct{}{}
	s.wg.Add(1)
	s.mu.Unlock()

	go func() {
		defer s.wg.Done()
		c.serve()
		s.connDone(c)
	}()
}

// waitSlot waits until fewer than MaxConnections connections are served;
// false means the server closed meanwhile.
func (s *Server) waitSlot() bool {
	for {
		s.mu.Lock()
		closed, full, freed := s.mu.closed, s.opts.MaxConnections > 0 && len(s.mu.conns) >= s.opts.MaxConnections, s.mu.slotFreed
		s.mu.Unlock()
		switch {
		case closed:
			return false
		case !full:
			return true
		}
		select {
		case <-freed:
		case <-s.done:
			return false
		}
	}
}

// connDone forgets a connection that ended and wakes the accept loops
// waiting for a slot.
func (s *Server) connDone(c *conn) {
	s.mu.Lock()
	delete(s.mu.conns, c)
	close(s.mu.slotFreed)
	s.mu.slotFreed = make(chan struct{})
	s.mu.Unlock()
}

// ServeConn serves one already-accepted connection and returns when it is
// closed. It counts towards MaxConnections.
func (s *Server) ServeConn(nc net.Conn) {
	s.mu.Lock()
	if s.mu.closed || (s.opts.MaxConnections > 0 && len(s.mu.conns) >= s.opts.MaxConnections) {
		s.mu.Unlock()
		nc.Close()
		return
	}
	c := newConn(s, nc)
	s.mu.conns[c] = struct{}{}
	s.wg.Add(1)
	s.mu.Unlock()
	defer s.wg.Done()
	c.serve()
	s.connDone(c)
}

// Connections returns the number of connections being served.
func (s *Server) Connections() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.mu.conns)
}

// Close closes every listener and connection and waits until every
// goroutine of the server has returned. Exports stay registered but serve
// nobody; Close is idempotent.
func (s *Server) Close() error {
	s.mu.Lock()
	if !s.mu.closed {
		s.mu.closed = true
		close(s.done)
	}
	var err error
	for l := range s.mu.listeners {
		if e := l.Close(); e != nil && err == nil && !errors.Is(e, net.ErrClosed) {
			err = e
		}
	}
	conns := make([]*conn, 0, len(s.mu.conns))
	for c := range s.mu.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	for _, c := range conns {
		c.kill()
	}
	s.wg.Wait()
	return err
}

func (s *Server) closing() bool {
	select {
	case <-s.done:
		return true
	default:
		return false
	}
}
