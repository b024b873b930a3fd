package qmp

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestManyClientsPerSocket: unlike qsd, one socket serves many clients at
// once; every negotiated one gets every event, with one timestamp.
func TestManyClientsPerSocket(t *testing.T) {
	e := newEnv(t, ServerOptions{}, 1)
	const n = 16
	clients := make([]*client, n)
	for i := range clients {
		clients[i] = e.connect(0)
	}
	var wg sync.WaitGroup
	for i, c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; j < 20; j++ {
				id := fmt.Sprintf(`"%d-%d"`, i, j)
				if _, err := io.WriteString(c.nc, `{"execute": "query-version", "id": `+id+"}\n"); err != nil {
					t.Error(err)
					return
				}
				got, err := c.line()
				if want := versionReply + `, "id": ` + id + "}"; err != nil || got != want {
					t.Errorf("client %d: got %q %v", i, got, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	e.clock.push(1795278400, 123456)
	e.s.Emit("BLOCK_JOB_READY", map[string]any{"device": "j", "len": 5, "offset": 5, "speed": 0, "type": "mirror"})
	for _, c := range clients {
		c.expect(`{"timestamp": {"seconds": 1795278400, "microseconds": 123456}, "event": "BLOCK_JOB_READY", "data": {"device": "j", "len": 5, "offset": 5, "speed": 0, "type": "mirror"}}`)
	}
}

// TestOversizedMessage: a value larger than MaxMessageSize closes that
// connection only.
func TestOversizedMessage(t *testing.T) {
	e := newEnv(t, ServerOptions{}, 1)
	big := e.connect(0)
	other := e.connect(0)
	go func() {
		// The server closes the connection while we are still writing.
		io.WriteString(big.nc, `{"execute": "query-version", "id": "`+strings.Repeat("x", 10<<20)+"\"}\n")
	}()
	big.expectEOF()
	other.send(`{"execute": "query-version"}`)
	other.expect(versionReply + "}")
	// A value just under the limit is fine.
	ok := e.connect(0)
	ok.send(`{"execute": "query-version", "id": "` + strings.Repeat("y", 1<<19) + `"}`)
	ok.expect(versionReply + `, "id": "` + strings.Repeat("y", 1<<19) + `"}`)
}

// TestSlowClient: a client that does not read never holds up Emit or other
// clients; it is disconnected when its queue overflows.
func TestSlowClient(t *testing.T) {
	e := newEnv(t, ServerOptions{OutQueue: 8}, 1)
	slow := e.connect(0)
	fast := e.connect(0)
	payload := strings.Repeat("z", 64<<10)
	const n = 100
	for i := 0; i < n; i++ {
		// Paced by the fast client, so that only the slow one overflows.
		e.s.Emit("TEST_EVENT", map[string]any{"n": i, "pad": payload})
		l, err := fast.line()
		if err != nil || !strings.Contains(l, fmt.Sprintf(`"n": %d`, i)) {
			t.Fatalf("event %d: %.100s %v", i, l, err)
		}
	}
	// The slow client was dropped: after what the kernel buffered, EOF.
	slow.nc.SetReadDeadline(time.Now().Add(waitFor))
	if _, err := io.Copy(io.Discard, slow.nc); err != nil {
		t.Fatalf("slow client: %v", err)
	}
	fast.send(`{"execute": "query-version"}`)
	fast.expect(versionReply + "}")
}

// TestQuit: the Quit callback's events, then the reply, then EOF for every
// client; Done is closed and Serve returns.
func TestQuit(t *testing.T) {
	var e *testEnv
	quitCalled := make(chan struct{})
	e = newEnv(t, ServerOptions{Quit: func(ctx context.Context) {
		e.s.Emit("BLOCK_EXPORT_DELETED", map[string]string{"id": "exp0"})
		close(quitCalled)
	}}, 2)
	a := e.connect(0)
	d := e.connect(1)
	n := e.dial(1) // never negotiates
	n.expect(greeting)
	e.clock.push(1795278500, 1)
	ev := `{"timestamp": {"seconds": 1795278500, "microseconds": 1}, "event": "BLOCK_EXPORT_DELETED", "data": {"id": "exp0"}}`
	a.send(`{"execute": "quit", "id": "q"}` + "\n" + `{"execute": "query-version"}` + "\n")
	a.expect(ev, `{"return": {}, "id": "q"}`)
	a.expectEOF() // the pipelined query-version is not run
	d.expect(ev)
	d.expectEOF()
	n.expectEOF()
	<-quitCalled
	select {
	case <-e.s.Done():
	case <-time.After(waitFor):
		t.Fatal("Done not closed")
	}
	for i := 0; i < 2; i++ {
		if err := <-e.serve; !errors.Is(err, ErrServerClosed) {
			t.Errorf("Serve: %v", err)
		}
		e.serve <- ErrServerClosed // for the cleanup
	}
	if _, err := net.Dial("unix", e.paths[0]); err == nil {
		t.Error("still accepting after quit")
	}
}

func TestQuitWithArguments(t *testing.T) {
	e := newEnv(t, ServerOptions{}, 1)
	a := e.connect(0)
	a.send(`{"execute": "quit", "arguments": {"force": true}}`)
	a.expect(`{"error": {"class": "GenericError", "desc": "Parameter 'force' is unexpected"}}`)
	a.send(`{"execute": "query-version"}`)
	a.expect(versionReply + "}")
}

// TestOneCommandAtATime: commands of all connections run one at a time.
func TestOneCommandAtATime(t *testing.T) {
	e := newEnv(t, ServerOptions{}, 2)
	var running, max atomic.Int32
	e.s.Handle("x-slow", HandlerFunc(func(context.Context, json.RawMessage) (any, error) {
		n := running.Add(1)
		if n > max.Load() {
			max.Store(n)
		}
		for i := 0; i < 100; i++ {
			runtime.Gosched()
		}
		running.Add(-1)
		return nil, nil
	}))
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		c := e.connect(i % 2)
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Pipelined: replies come back in request order.
			var req strings.Builder
			for j := 0; j < 10; j++ {
				fmt.Fprintf(&req, `{"execute": "x-slow", "id": %d}`, j)
			}
			io.WriteString(c.nc, req.String())
			for j := 0; j < 10; j++ {
				l, err := c.line()
				if want := fmt.Sprintf(`{"return": {}, "id": %d}`, j); err != nil || l != want {
					t.Errorf("got %q %v, want %q", l, err, want)
					return
				}
			}
		}()
	}
	wg.Wait()
	if max.Load() != 1 {
		t.Errorf("%d commands ran at once", max.Load())
	}
}

// TestHandlerPanic: a panicking command gets an error reply; the daemon
// lives on.
func TestHandlerPanic(t *testing.T) {
	e := newEnv(t, ServerOptions{}, 1)
	e.s.Handle("x-panic", HandlerFunc(func(context.Context, json.RawMessage) (any, error) {
		var m map[string]int
		m["boom"]++
		return nil, nil
	}))
	// A nil *Error returned as error is success (the typed-nil pitfall).
	e.s.Handle("x-nilerr", Command(func(context.Context, *struct{}) (struct{}, error) {
		var noErr *Error
		return struct{}{}, noErr
	}))
	c := e.connect(0)
	c.send(`{"execute": "x-nilerr", "id": 0}`)
	c.expect(`{"return": {}, "id": 0}`)
	c.send(`{"execute": "x-panic", "id": 1}`)
	c.expect(`{"id": 1, "error": {"class": "GenericError", "desc": "Internal error"}}`)
	c.send(`{"execute": "query-version"}`)
	c.expect(versionReply + "}")
}

// TestDisconnectMidCommand: a command whose client went away runs to
// completion; nobody else notices.
func TestDisconnectMidCommand(t *testing.T) {
	e := newEnv(t, ServerOptions{}, 1)
	started, release, finished := make(chan struct{}), make(chan struct{}), make(chan struct{})
	e.s.Handle("x-block", HandlerFunc(func(ctx context.Context, _ json.RawMessage) (any, error) {
		close(started)
		<-release
		e.s.Emit("X_DONE", nil)
		close(finished)
		if ctx.Err() != nil {
			return nil, errors.New("cancelled")
		}
		return map[string]int{"big": 1}, nil
	}))
	a := e.connect(0)
	b := e.connect(0)
	a.send(`{"execute": "x-block"}`)
	<-started
	a.nc.Close()
	close(release)
	<-finished
	b.expect(`{"timestamp": {"seconds": 1795278000, "microseconds": 0}, "event": "X_DONE", "data": {}}`)
	b.send(`{"execute": "query-version"}`)
	b.expect(versionReply + "}")
}

// TestCloseCancels: Close cancels a running command's context, waits for
// it, and leaves no goroutine behind.
func TestCloseCancels(t *testing.T) {
	before := runtime.NumGoroutine()
	dir := t.TempDir()
	s := NewServer(ServerOptions{Version: qsdVersion})
	started, returned := make(chan struct{}), make(chan struct{})
	s.Handle("x-wait", HandlerFunc(func(ctx context.Context, _ json.RawMessage) (any, error) {
		close(started)
		<-ctx.Done()
		close(returned)
		return nil, ctx.Err()
	}))
	l, err := Listen(filepath.Join(dir, "s"))
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- s.Serve(l) }()
	nc, err := net.Dial("unix", filepath.Join(dir, "s"))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	io.WriteString(nc, `{"execute": "qmp_capabilities"}{"execute": "x-wait"}`)
	<-started
	s.Close()
	select {
	case <-returned:
	default:
		t.Fatal("Close returned before the command")
	}
	if err := <-served; !errors.Is(err, ErrServerClosed) {
		t.Errorf("Serve: %v", err)
	}
	select {
	case <-s.Done():
	default:
		t.Error("Done not closed by Close")
	}
	if _, err := os.Lstat(filepath.Join(dir, "s")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket left behind: %v", err)
	}
	if err := s.Serve(l); !errors.Is(err, ErrServerClosed) {
		t.Errorf("Serve after Close: %v", err)
	}
	nc.Close()
	// Only the test's own goroutines may remain.
	deadline := time.Now().Add(waitFor)
	for runtime.NumGoroutine() > before {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("%d goroutines left (had %d):\n%s", runtime.NumGoroutine(), before, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestResults: how handler results and event data are encoded.
func TestResults(t *testing.T) {
	e := newEnv(t, ServerOptions{}, 1)
	results := map[string]any{
		"nil":       nil,
		"nil-ptr":   (*jobInfo)(nil),
		"nil-slice": []jobInfo(nil),
		"nil-map":   map[string]int(nil),
		"raw":       json.RawMessage(`{"b":1,"a":[1.5,"x"]}`),
		"text":      map[string]string{"s": "<é&\u2028\U0001F600\x01/>"},
		"numbers":   []any{int64(-1), uint64(1 << 63), 0.1, 1e21},
		"struct":    struct{}{},
		"bad":       map[string]any{"c": make(chan int)},
	}
	for name, r := range results {
		e.s.Handle("x-"+name, HandlerFunc(func(context.Context, json.RawMessage) (any, error) { return r, nil }))
	}
	c := e.connect(0)
	for _, tt := range []struct{ name, want string }{
		{"nil", `{"return": {}}`},
		{"nil-ptr", `{"return": {}}`},
		{"nil-slice", `{"return": []}`},
		{"nil-map", `{"return": {}}`},
		{"struct", `{"return": {}}`},
		{"raw", `{"return": {"a": [1.5, "x"], "b": 1}}`},
		{"text", `{"return": {"s": "<\u00E9&\u2028\uD83D\uDE00\u0001/>"}}`},
		{"numbers", `{"return": [-1, 9223372036854775808, 0.10000000000000001, 1e+21]}`},
		{"bad", `{"error": {"class": "GenericError", "desc": "Internal error"}}`},
	} {
		c.send(`{"execute": "x-` + tt.name + `"}`)
		c.expect(tt.want)
	}
}

// TestKeepMemberOrder: the option writes results in Go's order; envelopes
// keep qsd's.
func TestKeepMemberOrder(t *testing.T) {
	e := newEnv(t, ServerOptions{KeepMemberOrder: true}, 1)
	c := e.connect(0)
	c.send(`{"execute": "query-jobs", "id": 1}`)
	c.expect(`{"return": [{"id": "c1", "type": "create", "status": "concluded", "current-progress": 1, "total-progress": 1}], "id": 1}`)
	c.send(`{"execute": "nosuch", "id": {"b": 1, "a": 2}}`)
	c.expect(`{"id": {"b": 1, "a": 2}, "error": {"class": "CommandNotFound", "desc": "The command nosuch has not been found"}}`)
}

// TestRequestChecks covers checks the transcripts do not show.
func TestRequestChecks(t *testing.T) {
	e := newEnv(t, ServerOptions{}, 1)
	c := e.dial(0)
	c.expect(greeting)
	replay(t, e, map[string]*client{"A": c}, `
# Request checks come before the negotiation check.
-> {"execute": "query-version", "bogus": 1, "id": "pre"}
<- {"id": "pre", "error": {"class": "GenericError", "desc": "QMP input member 'bogus' is unexpected"}}
-> {"execute": "qmp_capabilities", "arguments": {"enable": ["oob"], "x": 1}}
<- {"error": {"class": "GenericError", "desc": "Parameter 'x' is unexpected"}}
# A failed qmp_capabilities leaves the connection negotiating.
-> {"execute": "query-version"}
<- {"error": {"class": "CommandNotFound", "desc": "Expecting capabilities negotiation with 'qmp_capabilities'"}}
-> {"execute": "qmp_capabilities", "arguments": {"enable": ["oob"]}}
<- {"return": {}}
# With oob: execute and exec-oob clash; the member met first in qsd's order is named first.
-> {"execute": "query-version", "exec-oob": "query-version", "id": 1}
<- {"id": 1, "error": {"class": "GenericError", "desc": "QMP input member 'execute' clashes with 'exec-oob'"}}
-> {"exec-oob": 5}
<- {"error": {"class": "GenericError", "desc": "QMP input member 'exec-oob' must be a string"}}
-> {"exec-oob": "nosuch"}
<- {"error": {"class": "CommandNotFound", "desc": "The command nosuch has not been found"}}
-> {"exec-oob": "qmp_capabilities"}
<- {"error": {"class": "GenericError", "desc": "The command qmp_capabilities does not support OOB"}}
# Of several faults, the one of the member first in qsd's order: bogus (bucket 136) before execute (299).
-> {"execute": 5, "bogus": 1}
<- {"error": {"class": "GenericError", "desc": "QMP input member 'bogus' is unexpected"}}
-> {"arguments": 1, "execute": 5}
<- {"error": {"class": "GenericError", "desc": "QMP input member 'execute' must be a string"}}
`)
}

func TestHandleReserved(t *testing.T) {
	s := NewServer(ServerOptions{})
	for _, name := range []string{"qmp_capabilities", "quit", "query-version", "query-commands", "query-qmp-schema", ""} {
		s.Handle(name, HandlerFunc(func(context.Context, json.RawMessage) (any, error) { return "replaced", nil }))
	}
	if h := s.lookup("quit"); h != builtinHandler(cmdQuit) {
		t.Errorf("quit replaced")
	}
	if len(s.commandList()) != 5 {
		t.Errorf("commands: %v", s.commandList())
	}
	s.Close()
}

func TestListen(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "qmp.sock")

	// A stale socket (nobody listening) is replaced.
	ul, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ul.SetUnlinkOnClose(false)
	ul.Close()
	l, err := Listen(path)
	if err != nil {
		t.Fatalf("stale socket: %v", err)
	}
	fi, err := os.Lstat(path)
	if err != nil || fi.Mode().Perm() != 0o600 || fi.Mode()&os.ModeSocket == 0 {
		t.Fatalf("mode %v %v", fi.Mode(), err)
	}
	if l.Addr().String() != path {
		t.Errorf("Addr %s", l.Addr())
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("left in dir: %v", entries)
	}
	// A live one is not.
	if _, err := Listen(path); err == nil {
		t.Error("Listen on a live socket succeeded")
	}
	accepted := make(chan error, 1)
	go func() {
		c, err := l.Accept()
		if err == nil {
			c.Close()
		}
		accepted <- err
	}()
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	if err := <-accepted; err != nil {
		t.Fatal(err)
	}
	l.Close()
	if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("not removed on Close: %v", err)
	}
	// A regular file is never removed.
	os.WriteFile(path, []byte("data"), 0o644)
	if _, err := Listen(path); err == nil {
		t.Error("Listen over a regular file succeeded")
	}
}
