package chardev

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// socket is the socket backend: a server that listens, or a client that
// connects. Without a frontend it takes one connection at a time and
// drops what the peer sends, as qsd's chardevs without a frontend do;
// with a monitor attached, the monitor accepts (blockd's monitors serve
// several clients at once) and the socket follows the connections.
type socket struct {
	server bool
	desc   string        // the address as filename words it, without "disconnected:"
	addr   SocketAddress // the address, as qom-get addr reports it
	path   string        // a UNIX socket file blockd made and removes on close
	file   os.FileInfo   // that file, to tell it from one that replaced it

	l         net.Listener                    // a server's
	dial      func() (net.Conn, error)        // a client's
	reconnect time.Duration                   // a client's; 0 = never
	wait      func(ctx context.Context) error // a server's, for wait=on

	mu       sync.Mutex
	conns    []net.Conn // open connections, newest last
	started  bool
	attached bool
	closed   bool
	done     chan struct{} // closed by close
	wg       sync.WaitGroup
}

// SocketAddress is the flat SocketAddress qom-get reports for addr.
type SocketAddress struct {
	Type string `json:"type"`
	Path string `json:"path,omitempty"`
	Host string `json:"host,omitempty"`
	Port string `json:"port,omitempty"`
	IPv4 *bool  `json:"ipv4,omitempty"`
	IPv6 *bool  `json:"ipv6,omitempty"`
}

// newServerSocket wraps a listening socket.
func newServerSocket(l net.Listener) (*socket, error) {
	s := &socket{server: true, l: l, done: make(chan struct{})}
	switch a := l.Addr().(type) {
	case *net.UnixAddr:
		s.addr = SocketAddress{Type: "unix", Path: a.Name}
		s.desc = "unix:" + a.Name
	case *net.TCPAddr:
		host, port := a.IP.String(), strconv.Itoa(a.Port)
		s.addr = SocketAddress{Type: "inet", Host: host, Port: port}
		yes := true
		if a.IP.To4() != nil {
			s.addr.IPv4 = &yes
		} else {
			s.addr.IPv6 = &yes
		}
		s.desc = "tcp:" + host + ":" + port
	default:
		return nil, fmt.Errorf("unsupported listener address %v", l.Addr())
	}
	s.desc += ",server=on"
	return s, nil
}

// planSocket checks a socket's options in qsd's order and returns how to
// open it.
func planSocket(o *SocketOptions) (opener, error) {
	server := o.Server == nil || *o.Server
	switch {
	case o.TLSCreds != nil:
		// compat(qsd-7.2): blockd has no tls-creds objects, so no id
		// names one.
		return nil, fmt.Errorf("No TLS credentials with id '%s'", *o.TLSCreds)
	case o.Addr.Type == "fd" && o.Reconnect != nil:
		return nil, errors.New("'reconnect' option is incompatible with 'fd' address type")
	case o.TLSAuthz != nil:
		return nil, errors.New("'tls_authz' option requires 'tls_creds' option")
	case server && o.Reconnect != nil:
		return nil, errors.New("'reconnect' option is incompatible with socket in server listen mode")
	case !server && isTrue(o.Websocket):
		return nil, errors.New("Websocket client is not implemented")
	case !server && o.Wait != nil:
		return nil, errors.New("'wait' option is incompatible with socket in client connect mode")
	case isTrue(o.Telnet), isTrue(o.TN3270), isTrue(o.Websocket):
		return nil, errors.New("blockd does not support telnet, tn3270 or websocket chardevs")
	}
	switch o.Addr.Type {
	case "fd":
		// compat(qsd-7.2): qsd's words; neither daemon takes file
		// descriptors over QMP.
		return nil, errors.New("only QEMU supports file descriptor passing")
	case "vsock":
		return nil, errors.New("blockd does not support vsock chardevs")
	case "inet":
		if o.Addr.Inet.To != nil || isTrue(o.Addr.Inet.MPTCP) {
			return nil, errors.New("blockd does not support port ranges ('to') or 'mptcp' in chardevs")
		}
	case "unix":
		if isTrue(o.Addr.Unix.Abstract) && o.Addr.Unix.Tight != nil && !*o.Addr.Unix.Tight {
			return nil, errors.New("blockd supports only tight abstract socket addresses")
		}
	}
	if server {
		return func(ctx context.Context) (backend, error) {
			s, err := listenSocket(o.Addr)
			if err != nil {
				return nil, err
			}
			var first net.Conn
			if isTrue(o.Wait) {
				if first, err = s.acceptCtx(ctx); err != nil {
					s.close()
					return nil, err
				}
			}
			s.start(first)
			return s, nil
		}, nil
	}
	return func(ctx context.Context) (backend, error) {
		s := newClientSocket(o.Addr)
		if o.Reconnect != nil && *o.Reconnect > 0 {
			s.reconnect = time.Duration(*o.Reconnect) * time.Second
			s.start(nil) // connects in the background, as qsd does
			return s, nil
		}
		c, err := s.dial()
		if err != nil {
			return nil, err
		}
		s.start(c)
		return s, nil
	}, nil
}

func isTrue(b *bool) bool { return b != nil && *b }

// listenSocket binds a server socket. Like qsd it replaces a socket file
// left at the path; unlike qsd it never removes a file that is no socket.
func listenSocket(a SocketAddressLegacy) (*socket, error) {
	if a.Type == "inet" {
		l, err := net.Listen(inetNetwork(a.Inet), net.JoinHostPort(a.Inet.Host, a.Inet.Port))
		if err != nil {
			return nil, inetError("Failed to find an available port", a.Inet, err)
		}
		return newServerSocket(l)
	}
	u := a.Unix
	name := u.Path
	if isTrue(u.Abstract) {
		name = "@" + u.Path
	} else if fi, err := os.Lstat(u.Path); err == nil && fi.Mode()&fs.ModeSocket != 0 {
		os.Remove(u.Path)
	}
	ul, err := net.ListenUnix("unix", &net.UnixAddr{Name: name, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("Failed to bind socket to %s: %s", u.Path, strerror(err))
	}
	ul.SetUnlinkOnClose(false) // close removes the file only if still ours
	s, err := newServerSocket(ul)
	if err != nil {
		ul.Close()
		return nil, err
	}
	if isTrue(u.Abstract) {
		s.addr.Path = u.Path
		s.desc = "unix:" + u.Path + ",abstract=on,tight=on,server=on"
	} else if s.file, err = os.Lstat(u.Path); err == nil {
		s.path = u.Path
	}
	return s, nil
}

func inetNetwork(a *InetSocketAddress) string {
	switch {
	case isTrue(a.IPv4) && !isTrue(a.IPv6):
		return "tcp4"
	case isTrue(a.IPv6) && !isTrue(a.IPv4):
		return "tcp6"
	}
	return "tcp"
}

// inetError words a failure to listen on or connect to a TCP address as
// qsd does: resolution failures as getaddrinfo words them, the others
// after what.
func inetError(what string, a *InetSocketAddress, err error) error {
	var dns *net.DNSError
	var addr *net.AddrError
	switch {
	case errors.As(err, &addr) || strings.Contains(err.Error(), "unknown port") || strings.Contains(err.Error(), "invalid port"):
		return fmt.Errorf("address resolution failed for %s:%s: Servname not supported for ai_socktype", a.Host, a.Port)
	case errors.As(err, &dns):
		return fmt.Errorf("address resolution failed for %s:%s: Name or service not known", a.Host, a.Port)
	}
	return fmt.Errorf("%s: %s", what, strerror(err))
}

// newClientSocket is a client socket that is not connected yet.
func newClientSocket(a SocketAddressLegacy) *socket {
	s := &socket{done: make(chan struct{})}
	if a.Type == "inet" {
		in := a.Inet
		target := net.JoinHostPort(in.Host, in.Port)
		s.addr = SocketAddress{Type: "inet", Host: in.Host, Port: in.Port}
		s.desc = "tcp:" + in.Host + ":" + in.Port
		s.dial = func() (net.Conn, error) {
			c, err := net.Dial(inetNetwork(in), target)
			if err != nil {
				return nil, inetError(fmt.Sprintf("Failed to connect to '%s'", target), in, err)
			}
			return c, nil
		}
		return s
	}
	u := a.Unix
	name := u.Path
	s.desc = "unix:" + u.Path
	if isTrue(u.Abstract) {
		name = "@" + u.Path
		s.desc += ",abstract=on,tight=on"
	}
	s.addr = SocketAddress{Type: "unix", Path: u.Path}
	s.dial = func() (net.Conn, error) {
		c, err := net.Dial("unix", name)
		if err != nil {
			return nil, fmt.Errorf("Failed to connect to '%s': %s", u.Path, strerror(err))
		}
		return c, nil
	}
	return s
}

// acceptCtx waits for the first client (wait=on), or for ctx's end.
func (s *socket) acceptCtx(ctx context.Context) (net.Conn, error) {
	stop := context.AfterFunc(ctx, func() { s.l.Close() })
	defer stop()
	c, err := s.l.Accept()
	if err != nil {
		return nil, fmt.Errorf("no client connected: %v", err)
	}
	return c, nil
}

// start serves the socket without a frontend, beginning with first if
// it is already connected.
func (s *socket) start(first net.Conn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.started || s.attached || s.closed {
		return
	}
	s.started = true
	if first != nil {
		// Tracked now, not in run: a query right after chardev-add
		// returns must see the chardev connected.
		s.conns = append(s.conns, first)
	}
	s.wg.Add(1)
	go s.run(first)
}

// run holds one connection at a time until the peer closes it, then
// takes the next: accepts it (a server) or connects again after the
// reconnect delay (a client that has one). A first c is tracked already.
func (s *socket) run(c net.Conn) {
	defer s.wg.Done()
	for {
		if c == nil {
			var err error
			if c, err = s.next(); err != nil {
				return
			}
			if !s.track(c) {
				c.Close()
				return
			}
		}
		io.Copy(io.Discard, c)
		s.untrack(c)
		c.Close()
		c = nil
		if !s.server && s.reconnect == 0 {
			return
		}
	}
}

// next returns the next connection, or an error once the socket closes.
func (s *socket) next() (net.Conn, error) {
	for {
		if s.server {
			c, err := s.l.Accept()
			if err == nil || s.isClosed() {
				return c, err
			}
		} else if c, err := s.dial(); err == nil {
			return c, nil
		}
		// A transient failure (EMFILE), or a server not up yet: retry.
		t := time.NewTimer(max(s.reconnect, 100*time.Millisecond))
		select {
		case <-s.done:
			t.Stop()
			return nil, net.ErrClosed
		case <-t.C:
		}
	}
}

func (s *socket) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

func (s *socket) track(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.conns = append(s.conns, c)
	return true
}

func (s *socket) untrack(c net.Conn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if i := slices.Index(s.conns, c); i >= 0 {
		s.conns = append(s.conns[:i], s.conns[i+1:]...)
	}
}

// filename is "disconnected:ADDRESS" without a connection, else the two
// ends of the newest one, in qsd's words.
func (s *socket) filename() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.conns) == 0 {
		return "disconnected:" + s.desc
	}
	c := s.conns[len(s.conns)-1]
	suffix := ""
	if s.server {
		suffix = ",server=on"
	}
	local, lok := c.LocalAddr().(*net.TCPAddr)
	remote, rok := c.RemoteAddr().(*net.TCPAddr)
	if lok && rok {
		return "tcp:" + local.String() + suffix + " <-> " + remote.String()
	}
	if s.server {
		return "unix:" + s.addr.Path + suffix
	}
	// compat(qsd-7.2): qsd names no path for a connected UNIX client.
	return "unix:"
}

// connected is qom-get connected.
func (s *socket) connected() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns) > 0
}

// attach hands the listener to a monitor, which must come before start.
func (s *socket) attach() (net.Listener, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.server || s.started {
		return nil, errors.New("a monitor needs a server socket chardev that nothing serves yet")
	}
	s.attached = true
	return &trackedListener{Listener: s.l, s: s}, nil
}

func (s *socket) close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	close(s.done)
	conns := s.conns
	s.conns = nil
	s.mu.Unlock()
	var err error
	if s.l != nil {
		err = s.l.Close()
		s.removeFile()
	}
	for _, c := range conns {
		c.Close()
	}
	s.wg.Wait()
	return err
}

// removeFile removes the UNIX socket file listenSocket made, unless
// another socket has taken the path since.
func (s *socket) removeFile() {
	if s.path == "" {
		return
	}
	if fi, err := os.Lstat(s.path); err == nil && os.SameFile(fi, s.file) {
		os.Remove(s.path)
	}
}

// trackedListener is a monitor's view of a socket chardev: its
// connections count for query-chardev.
type trackedListener struct {
	net.Listener
	s *socket
}

func (t *trackedListener) Accept() (net.Conn, error) {
	c, err := t.Listener.Accept()
	if err != nil {
		return nil, err
	}
	if !t.s.track(c) {
		c.Close()
		return nil, net.ErrClosed
	}
	return &trackedConn{Conn: c, s: t.s}, nil
}

type trackedConn struct {
	net.Conn
	s    *socket
	once sync.Once
}

func (c *trackedConn) Close() error {
	c.once.Do(func() { c.s.untrack(c.Conn) })
	return c.Conn.Close()
}
