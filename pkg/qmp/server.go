package qmp

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"reflect"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sirupsen/logrus"
)

// Handler runs one command. args is the request's "arguments" object as
// plain JSON ({} when absent). The result is encoded with encoding/json; a
// nil result, or a nil pointer or map, encodes as {} and a nil slice as [].
// An error found to be an *Error (errors.As) is sent with its class and
// desc; any other error is a GenericError whose desc is err.Error().
//
// Handlers run one at a time, never concurrently with each other. ctx is
// cancelled when the server is closed, not when the client that sent the
// command goes away.
type Handler interface {
	ServeQMP(ctx context.Context, args json.RawMessage) (any, error)
}

// HandlerFunc adapts a function to a Handler.
type HandlerFunc func(ctx context.Context, args json.RawMessage) (any, error)

// ServeQMP calls f.
func (f HandlerFunc) ServeQMP(ctx context.Context, args json.RawMessage) (any, error) {
	return f(ctx, args)
}

// VersionInfo is what query-version returns and the greeting announces.
type VersionInfo struct {
	Major, Minor, Micro int
	Package             string
}

// ServerOptions configure a Server.
type ServerOptions struct {
	// Version is returned by query-version and sent in the greeting.
	Version VersionInfo
	// Logger receives the server's log; nil discards it.
	Logger logrus.FieldLogger
	// MaxMessageSize bounds the bytes of one JSON value a client sends;
	// 0 means 1 MiB. A client that exceeds it is disconnected.
	MaxMessageSize int
	// OutQueue is the length of each connection's queue of outgoing
	// replies and events; 0 means 4096. A client that lets its queue
	// overflow is disconnected.
	OutQueue int
	// Quit is called by the builtin 'quit' before its reply is sent, so
	// that events of the tear-down precede the reply. May be nil.
	Quit func(ctx context.Context)
	// Now stamps events; nil means time.Now.
	Now func() time.Time
	// KeepMemberOrder writes the members of returned values and event data
	// in the order encoding/json produces them. By default they are written
	// in qsd's order (see doc.go), so that output matches qsd byte for byte.
	KeepMemberOrder bool
	// OnCommand, if set, is called once for every command answered, with
	// its name ("" for a command that does not exist, so that clients
	// cannot grow a caller's label set) and the error class of the reply
	// ("" for success). It runs on the connection's or executor's
	// goroutine and must not block.
	OnCommand func(name string, class Class)
}

// MonitorOptions are the settings of one listening socket, like qsd's
// --monitor options.
type MonitorOptions struct {
	// Pretty writes every message indented over several lines, as qsd's
	// pretty=on does.
	Pretty bool
}

// Server is what the job runner and the graph need to send events.
var _ interface{ Emit(string, any) } = (*Server)(nil)

// ErrServerClosed is returned by Serve after Close or 'quit'.
var ErrServerClosed = errors.New("qmp: server closed")

const (
	defaultMaxMessageSize = 1 << 20
	defaultOutQueue       = 4096
	// drainTimeout bounds how long a closing connection may take to write
	// what is queued for it (after 'quit', or after the client's EOF).
	drainTimeout = 10 * time.Second
	readBufSize  = 32 << 10
)

// The builtin commands.
const (
	cmdCapabilities  = "qmp_capabilities"
	cmdQuit          = "quit"
	cmdQueryVersion  = "query-version"
	cmdQueryCommands = "query-commands"
	cmdQuerySchema   = "query-qmp-schema"
)

// Server is a QMP server: it accepts connections on any number of
// listeners, runs their commands one at a time and sends events to every
// negotiated connection. See doc.go for the model.
type Server struct {
	opts   ServerOptions
	log    logrus.FieldLogger
	ctx    context.Context // handlers' context; cancelled by Close
	cancel context.CancelFunc

	cmdMu    sync.RWMutex
	cmds     map[string]Handler // guarded by cmdMu
	cmdOrder []string           // guarded by cmdMu; registration order

	schemaMu sync.Mutex
	shapes   map[reflect.Type]Shape  // guarded by schemaMu; see DeclareType
	events   map[string]reflect.Type // guarded by schemaMu; see DeclareEvent

	exec      chan *request // to the executor; unbuffered
	stopping  chan struct{} // closed on 'quit' or Close: no more commands run
	closingCh chan struct{} // closed by Close
	done      chan struct{} // see Done

	mu struct {
		sync.Mutex
		conns        map[*conn]struct{}
		listeners    map[net.Listener]struct{}
		execStarted  bool
		stoppingDone bool // stopping is closed
		quitting     bool
		closing      bool
	}

	wg        sync.WaitGroup // every goroutine of the server, and Serve calls
	connWG    sync.WaitGroup // connection goroutines only
	doneOnce  sync.Once
	closeOnce sync.Once
	nextConn  atomic.Uint64
	greeting  [2][]byte // compact, pretty
}

// request is one validated command on its way to the executor.
type request struct {
	c    *conn
	name string
	h    Handler
	args json.RawMessage
	id   *value // nil: the request had no id
	done chan struct{}
}

// builtinHandler marks commands the executor implements itself because they
// act on the connection or the server.
type builtinHandler string

func (builtinHandler) ServeQMP(context.Context, json.RawMessage) (any, error) {
	return nil, errors.New("builtin")
}

// NewServer returns a server with the builtin commands qmp_capabilities,
// query-version, query-commands, query-qmp-schema and quit.
func NewServer(o ServerOptions) *Server {
	if o.MaxMessageSize <= 0 {
		o.MaxMessageSize = defaultMaxMessageSize
	}
	if o.OutQueue <= 0 {
		o.OutQueue = defaultOutQueue
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	s := &Server{
		opts:      o,
		log:       o.Logger,
		cmds:      map[string]Handler{},
		shapes:    map[reflect.Type]Shape{},
		events:    map[string]reflect.Type{},
		exec:      make(chan *request),
		stopping:  make(chan struct{}),
		closingCh: make(chan struct{}),
		done:      make(chan struct{}),
	}
	if s.log == nil {
		l := logrus.New()
		l.Out = io.Discard
		s.log = l
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.mu.conns = map[*conn]struct{}{}
	s.mu.listeners = map[net.Listener]struct{}{}

	s.declareBuiltinShapes()
	s.register(cmdCapabilities, builtinHandler(cmdCapabilities))
	s.register(cmdQueryVersion, s.queryVersion())
	s.register(cmdQueryCommands, Command(s.queryCommands))
	s.register(cmdQuit, builtinHandler(cmdQuit))
	// compat(qsd-7.2): registered last, so listed before quit.
	s.register(cmdQuerySchema, Command(s.querySchema))

	g := fixedObject(stringValue("QMP"), fixedObject(
		stringValue("version"), s.versionValue(),
		stringValue("capabilities"), value{kind: kindArray, elems: []value{stringValue("oob")}},
	))
	s.greeting[0] = renderMessage(&g, false, true)
	s.greeting[1] = renderMessage(&g, true, true)
	return s
}

// versionValue is query-version's result, members in qsd's order.
func (s *Server) versionValue() value {
	v := s.opts.Version
	return fixedObject(
		stringValue("qemu"), fixedObject(
			stringValue("micro"), intValue(int64(v.Micro)),
			stringValue("minor"), intValue(int64(v.Minor)),
			stringValue("major"), intValue(int64(v.Major)),
		),
		stringValue("package"), stringValue(v.Package),
	)
}

type commandInfo struct {
	Name string `json:"name"`
}

// commandList lists the commands newest first, the order qsd lists them
// in (it registers a command by prepending it).
func (s *Server) commandList() []commandInfo {
	s.cmdMu.RLock()
	defer s.cmdMu.RUnlock()
	out := make([]commandInfo, 0, len(s.cmdOrder))
	for i := len(s.cmdOrder) - 1; i >= 0; i-- {
		out = append(out, commandInfo{Name: s.cmdOrder[i]})
	}
	return out
}

// Handle registers h as the command name, replacing an earlier
// registration of the same name. The builtin commands cannot be replaced;
// trying logs an error and changes nothing.
func (s *Server) Handle(name string, h Handler) {
	switch {
	case name == "" || h == nil:
		s.log.Errorf("qmp: Handle(%q): empty name or nil handler ignored", name)
		return
	case name == cmdCapabilities || name == cmdQuit || name == cmdQueryVersion || name == cmdQueryCommands || name == cmdQuerySchema:
		s.log.Errorf("qmp: Handle(%q): builtin command cannot be replaced", name)
		return
	}
	s.register(name, h)
}

func (s *Server) register(name string, h Handler) {
	s.cmdMu.Lock()
	defer s.cmdMu.Unlock()
	if _, ok := s.cmds[name]; !ok {
		s.cmdOrder = append(s.cmdOrder, name)
	}
	s.cmds[name] = h
}

func (s *Server) lookup(name string) Handler {
	s.cmdMu.RLock()
	defer s.cmdMu.RUnlock()
	return s.cmds[name]
}

// Serve accepts connections on l and serves each of them until Close or
// 'quit'; it then returns ErrServerClosed. Several listeners may be served
// at once, each by its own Serve call, and every listener serves any number
// of clients at once.
func (s *Server) Serve(l net.Listener) error {
	return s.ServeMonitor(l, MonitorOptions{})
}

// ServeMonitor is Serve with per-listener options.
func (s *Server) ServeMonitor(l net.Listener, o MonitorOptions) error {
	s.mu.Lock()
	if s.mu.closing || s.mu.quitting {
		s.mu.Unlock()
		l.Close()
		return ErrServerClosed
	}
	s.startExecutorLocked()
	s.mu.listeners[l] = struct{}{}
	s.wg.Add(1)
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.mu.listeners, l)
		s.mu.Unlock()
		s.wg.Done()
	}()

	var delay time.Duration
	for {
		nc, err := l.Accept()
		if err != nil {
			select {
			case <-s.stopping:
				return ErrServerClosed
			default:
			}
			if errors.Is(err, net.ErrClosed) {
				return err
			}
			// A transient failure such as EMFILE: back off and retry.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			s.log.WithError(err).Warnf("qmp: accept failed; retrying in %v", delay)
			t := time.NewTimer(delay)
			select {
			case <-t.C:
			case <-s.stopping:
				t.Stop()
				return ErrServerClosed
			}
			continue
		}
		delay = 0
		s.newConn(nc, o)
	}
}

// ServeConn serves one connection that is already open, such as a
// monitor on the daemon's stdin and stdout. The returned channel is
// closed when the connection is gone: the client closed its side, or
// the server closed it.
func (s *Server) ServeConn(nc net.Conn, o MonitorOptions) <-chan struct{} {
	s.mu.Lock()
	if !s.mu.closing && !s.mu.quitting {
		s.startExecutorLocked()
	}
	s.mu.Unlock()
	return s.newConn(nc, o).done
}

// startExecutorLocked starts the command executor once. s.mu is held.
func (s *Server) startExecutorLocked() {
	if !s.mu.execStarted {
		s.mu.execStarted = true
		s.wg.Add(1)
		go s.runExecutor()
	}
}

// Emit sends an event to every connection that completed capabilities
// negotiation, with one timestamp for all copies. data is encoded with
// encoding/json; nil encodes as {}. Emit never blocks on a client: one
// whose queue is full is disconnected. Events emitted by a handler reach
// the client that sent the command before the command's reply.
func (s *Server) Emit(event string, data any) {
	dv, err := marshalValue(data)
	if err != nil {
		s.log.WithError(err).Errorf("qmp: cannot encode data of event %s; event dropped", event)
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var (
		msg   value
		built bool
		out   [2][]byte
	)
	for c := range s.mu.conns {
		if c.closed || !c.negotiated {
			continue
		}
		if !built {
			ts := s.opts.Now()
			msg = fixedObject(
				stringValue("timestamp"), fixedObject(
					stringValue("seconds"), intValue(ts.Unix()),
					stringValue("microseconds"), intValue(int64(ts.Nanosecond()/1000)),
				),
				stringValue("event"), stringValue(event),
				stringValue("data"), dv,
			)
			built = true
		}
		f := 0
		if c.pretty {
			f = 1
		}
		if out[f] == nil {
			out[f] = renderMessage(&msg, c.pretty, s.opts.KeepMemberOrder)
		}
		c.sendLocked(out[f])
	}
}

// Done is closed once 'quit' has replied and every connection is closed
// (and also by Close). The daemon then calls Close and exits.
func (s *Server) Done() <-chan struct{} { return s.done }

// Close stops the listeners, closes every connection, cancels the context
// of a running command and waits for every goroutine of the server to end,
// the running command included. It must not be called from a handler or
// from the Quit callback.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		s.mu.Lock()
		s.mu.closing = true
		close(s.closingCh)
		s.stopLocked()
		for l := range s.mu.listeners {
			l.Close()
		}
		for c := range s.mu.conns {
			c.abortLocked()
		}
		s.mu.Unlock()
		s.cancel()
		s.wg.Wait()
		s.closeDone()
	})
	return nil
}

func (s *Server) closeDone() { s.doneOnce.Do(func() { close(s.done) }) }

// stopLocked stops the executor from taking further commands.
// s.mu must be held.
func (s *Server) stopLocked() {
	if !s.mu.stoppingDone {
		s.mu.stoppingDone = true
		close(s.stopping)
	}
}

// runExecutor runs commands one at a time, in the order they are submitted.
// Per connection that is request order: a reader submits its next command
// only after the previous one was answered.
func (s *Server) runExecutor() {
	defer s.wg.Done()
	s.serve(nil)
}

// serve executes commands until the server stops or stop is closed.
func (s *Server) serve(stop <-chan struct{}) {
	for {
		select {
		case <-s.stopping:
			return
		case <-stop:
			return
		case req := <-s.exec:
			quit := s.execute(req)
			close(req.done)
			if quit {
				return
			}
		}
	}
}

type unblockKey struct{}

// Unblocked runs f, part of a command handler that waits on the outside
// world (a cluster connection that may take the cluster's timeout), while
// the server goes on executing other commands, from every client, one at
// a time as always. f must touch nothing that other handlers use; the
// handler continues, alone again, once f has returned and the command
// executed meanwhile (if any) has finished. ctx is the handler's; outside
// a handler f just runs.
func Unblocked(ctx context.Context, f func()) {
	s, _ := ctx.Value(unblockKey{}).(*Server)
	if s == nil {
		f()
		return
	}
	stop, stopped := make(chan struct{}), make(chan struct{})
	s.wg.Add(1) // the calling handler's executor is counted: no race with Close
	go func() {
		defer s.wg.Done()
		defer close(stopped)
		s.serve(stop)
	}()
	f()
	close(stop)
	<-stopped
}

// execute runs one command and queues its reply. It reports whether the
// command was a successful 'quit'.
func (s *Server) execute(req *request) bool {
	log := req.c.log.WithField("command", req.name)
	log.Debug("qmp: executing")
	if b, ok := req.h.(builtinHandler); ok {
		switch b {
		case cmdCapabilities:
			s.execCapabilities(req)
			return false
		case cmdQuit:
			return s.execQuit(req)
		}
	}
	res, err := s.call(req.name, func() (any, error) {
		return req.h.ServeQMP(context.WithValue(s.ctx, unblockKey{}, s), req.args)
	})
	s.reply(req, res, err)
	return false
}

// call runs fn, turning a panic into an error so that a bug in one command
// does not take the daemon down.
func (s *Server) call(name string, fn func() (any, error)) (res any, err error) {
	defer func() {
		if r := recover(); r != nil {
			s.log.WithField("command", name).Errorf("qmp: command panicked: %v\n%s", r, debug.Stack())
			res, err = nil, &Error{Class: GenericError, Desc: "Internal error", Err: fmt.Errorf("panic: %v", r)}
		}
	}()
	return fn()
}

// reply queues the reply to req.
func (s *Server) reply(req *request, res any, err error) {
	var msg value
	if err = normErr(err); err != nil {
		s.observe(req.name, asError(err).Class)
		msg = s.errorMsg(req, err)
	} else if rv, merr := marshalValue(res); merr != nil {
		msg = s.errorMsg(req, &Error{Class: GenericError, Desc: "Internal error",
			Err: fmt.Errorf("cannot encode result: %w", merr)})
	} else {
		s.observe(req.name, "")
		msg = returnMsg(rv, req.id)
	}
	b := renderMessage(&msg, req.c.pretty, s.opts.KeepMemberOrder)
	s.mu.Lock()
	req.c.sendLocked(b)
	s.mu.Unlock()
}

// observe reports an answered command to OnCommand.
func (s *Server) observe(name string, class Class) {
	if s.opts.OnCommand != nil {
		s.opts.OnCommand(name, class)
	}
}

func (s *Server) errorMsg(req *request, err error) value {
	qe := asError(err)
	entry := req.c.log.WithField("command", req.name)
	if qe.Err != nil {
		entry = entry.WithError(qe.Err)
	}
	entry.Debugf("qmp: %s: %s", qe.Class, qe.Desc)
	return errorMsg(req.id, qe.Class, qe.Desc)
}

// execCapabilities is qmp_capabilities. compat(qsd-7.2): section 4.
func (s *Server) execCapabilities(req *request) {
	var a capabilitiesArgs
	err := Decode(req.args, "", &a)
	c := req.c
	s.mu.Lock()
	defer s.mu.Unlock()
	if err == nil && c.negotiated {
		err = &Error{Class: CommandNotFound, Desc: "Capabilities negotiation is already complete, command ignored"}
	}
	var msg value
	if err != nil {
		s.observe(req.name, asError(err).Class)
		msg = s.errorMsg(req, err)
	} else {
		s.observe(req.name, "")
		// Negotiated and the reply queued under one lock: no event can
		// slip in before the reply.
		c.negotiated = true
		for _, cp := range a.Enable {
			if cp == "oob" {
				c.oob = true
			}
		}
		msg = returnMsg(value{kind: kindObject}, req.id)
	}
	c.sendLocked(renderMessage(&msg, c.pretty, s.opts.KeepMemberOrder))
}

type capability string

func (capability) EnumValues() []string { return []string{"oob"} }

// execQuit is quit: the Quit callback (whose events precede the reply),
// the reply, then every connection is flushed and closed and Done closed.
// compat(qsd-7.2): section 8.
func (s *Server) execQuit(req *request) bool {
	if err := Decode(req.args, "", &struct{}{}); err != nil {
		s.reply(req, nil, err)
		return false
	}
	s.log.Info("qmp: quit")
	if s.opts.Quit != nil {
		s.call(cmdQuit, func() (any, error) {
			s.opts.Quit(s.ctx)
			return nil, nil
		})
	}
	s.observe(req.name, "")
	msg := returnMsg(value{kind: kindObject}, req.id)
	b := renderMessage(&msg, req.c.pretty, s.opts.KeepMemberOrder)
	s.mu.Lock()
	req.c.sendLocked(b)
	s.mu.quitting = true
	s.stopLocked()
	for l := range s.mu.listeners {
		l.Close()
	}
	for c := range s.mu.conns {
		c.drainLocked()
	}
	s.mu.Unlock()
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.connWG.Wait()
		s.closeDone()
	}()
	return true
}

func returnMsg(ret value, id *value) value {
	if id == nil {
		return fixedObject(stringValue("return"), ret)
	}
	return fixedObject(stringValue("return"), ret, stringValue("id"), *id)
}

func errorMsg(id *value, class Class, desc string) value {
	e := fixedObject(stringValue("class"), stringValue(string(class)), stringValue("desc"), stringValue(desc))
	if id == nil {
		return fixedObject(stringValue("error"), e)
	}
	return fixedObject(stringValue("id"), *id, stringValue("error"), e)
}

// marshalValue encodes a handler's result or an event's data.
func marshalValue(x any) (value, error) {
	switch x := x.(type) {
	case nil:
		return value{kind: kindObject}, nil
	case value:
		return x, nil
	case json.RawMessage:
		if len(x) == 0 {
			return value{kind: kindObject}, nil
		}
		return parseJSON(x, true)
	}
	rv := reflect.ValueOf(x)
	switch rv.Kind() {
	case reflect.Pointer, reflect.Map, reflect.Interface:
		if rv.IsNil() {
			return value{kind: kindObject}, nil
		}
	case reflect.Slice:
		if rv.IsNil() {
			return value{kind: kindArray}, nil
		}
	}
	b, err := json.Marshal(x)
	if err != nil {
		return value{}, err
	}
	return parseJSON(b, true)
}
