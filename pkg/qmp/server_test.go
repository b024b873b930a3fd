package qmp

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// The transcripts below are copied from the shared reference's
// qmp-protocol.md (recorded from qemu-storage-daemon 7.2) and replayed
// against a Server with fake block commands. Replies are compared byte for
// byte. Lines starting with "!" are test directives (an event emitted as a
// job would), "->~" sends without a trailing newline.

var qsdVersion = VersionInfo{Major: 7, Minor: 2, Micro: 22, Package: "Debian 1:7.2+dfsg-7+deb12u18+b3"}

const greeting = `{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "Debian 1:7.2+dfsg-7+deb12u18+b3"}, "capabilities": ["oob"]}}`

const versionReply = `{"return": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "Debian 1:7.2+dfsg-7+deb12u18+b3"}`

const waitFor = 10 * time.Second

// fakeClock hands out the timestamps of the transcripts in order.
type fakeClock struct {
	mu    sync.Mutex
	times []time.Time
}

func (c *fakeClock) push(sec, usec int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.times = append(c.times, time.Unix(sec, usec*1000))
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.times) == 0 {
		return time.Unix(1795278000, 0)
	}
	t := c.times[0]
	c.times = c.times[1:]
	return t
}

type testEnv struct {
	t     *testing.T
	s     *Server
	paths []string
	serve chan error
	clock *fakeClock
}

// newEnv starts a server with the fake commands on n UNIX sockets.
func newEnv(t *testing.T, o ServerOptions, n int, mo ...MonitorOptions) *testEnv {
	t.Helper()
	e := &testEnv{t: t, clock: &fakeClock{}, serve: make(chan error, n)}
	if o.Version == (VersionInfo{}) {
		o.Version = qsdVersion
	}
	if o.Now == nil {
		o.Now = e.clock.Now
	}
	e.s = NewServer(o)
	registerFakes(e.s)
	dir, err := os.MkdirTemp("", "qmp")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	for i := 0; i < n; i++ {
		path := filepath.Join(dir, fmt.Sprintf("qsd-%d.sock", i))
		l, err := Listen(path)
		if err != nil {
			t.Fatal(err)
		}
		var opt MonitorOptions
		if i < len(mo) {
			opt = mo[i]
		}
		e.paths = append(e.paths, path)
		go func() { e.serve <- e.s.ServeMonitor(l, opt) }()
	}
	t.Cleanup(func() {
		e.s.Close()
		for i := 0; i < n; i++ {
			if err := <-e.serve; !errors.Is(err, ErrServerClosed) {
				t.Errorf("Serve returned %v", err)
			}
		}
	})
	return e
}

type jobInfo struct {
	ID              string `json:"id"`
	Type            string `json:"type"`
	Status          string `json:"status"`
	CurrentProgress int64  `json:"current-progress"`
	TotalProgress   int64  `json:"total-progress"`
	Error           string `json:"error,omitempty"`
}

type jobStatus struct {
	ID     string `json:"id"`
	Status string `json:"status"`
}

func registerFakes(s *Server) {
	s.Handle("blockdev-add", HandlerFunc(func(_ context.Context, raw json.RawMessage) (any, error) {
		var c struct {
			Driver   string  `json:"driver"`
			NodeName *string `json:"node-name,omitempty"`
		}
		rest := map[string]any{}
		return nil, Decode(raw, "", &c, &rest)
	}))
	s.Handle("blockdev-del", Command(func(_ context.Context, a *struct {
		NodeName string `json:"node-name"`
	}) (struct{}, error) {
		return struct{}{}, Errorf("Failed to find node with node-name='%s'", a.NodeName)
	}))
	s.Handle("block-job-set-speed", Command(func(_ context.Context, a *struct {
		Device string `json:"device"`
		Speed  int64  `json:"speed"`
	}) (struct{}, error) {
		return struct{}{}, &Error{Class: DeviceNotActive, Desc: fmt.Sprintf("Block job '%s' not found", a.Device)}
	}))
	s.Handle("query-named-block-nodes", Command(func(_ context.Context, a *struct {
		Flat *bool `json:"flat,omitempty"`
	}) ([]jobInfo, error) {
		return nil, nil
	}))
	s.Handle("blockdev-create", Command(func(_ context.Context, a *struct {
		JobID   string         `json:"job-id"`
		Options map[string]any `json:"options"`
	}) (struct{}, error) {
		s.Emit("JOB_STATUS_CHANGE", jobStatus{ID: a.JobID, Status: "created"})
		s.Emit("JOB_STATUS_CHANGE", jobStatus{ID: a.JobID, Status: "running"})
		return struct{}{}, nil
	}))
	s.Handle("query-jobs", Command(func(context.Context, *struct{}) ([]jobInfo, error) {
		return []jobInfo{{ID: "c1", Type: "create", Status: "concluded", CurrentProgress: 1, TotalProgress: 1}}, nil
	}))
	s.Handle("job-dismiss", Command(func(_ context.Context, a *struct {
		ID string `json:"id"`
	}) (any, error) {
		s.Emit("JOB_STATUS_CHANGE", map[string]string{"status": "null", "id": a.ID})
		return nil, nil
	}))
}

type client struct {
	t  *testing.T
	nc net.Conn
	r  *bufio.Reader
}

func (e *testEnv) dial(i int) *client {
	e.t.Helper()
	nc, err := net.Dial("unix", e.paths[i])
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { nc.Close() })
	return &client{t: e.t, nc: nc, r: bufio.NewReader(nc)}
}

// connect dials and negotiates.
func (e *testEnv) connect(i int) *client {
	c := e.dial(i)
	c.expect(greeting)
	c.send(`{"execute": "qmp_capabilities"}` + "\n")
	c.expect(`{"return": {}}`)
	return c
}

func (c *client) send(s string) {
	c.t.Helper()
	if _, err := io.WriteString(c.nc, s); err != nil {
		c.t.Fatalf("send: %v", err)
	}
}

// line reads one message; it must end with CRLF.
func (c *client) line() (string, error) {
	c.nc.SetReadDeadline(time.Now().Add(waitFor))
	s, err := c.r.ReadString('\n')
	if err != nil {
		return s, err
	}
	if !strings.HasSuffix(s, "\r\n") {
		return s, fmt.Errorf("line not terminated by CRLF: %q", s)
	}
	return strings.TrimSuffix(s, "\r\n"), nil
}

func (c *client) expect(want ...string) {
	c.t.Helper()
	for _, w := range want {
		got, err := c.line()
		if err != nil {
			c.t.Fatalf("reading, want %.200q: %v", w, err)
		}
		if got != w {
			c.t.Fatalf("\n got %.300q\nwant %.300q", got, w)
		}
	}
}

func (c *client) expectEOF() {
	c.t.Helper()
	got, err := c.line()
	if err == nil {
		c.t.Fatalf("got %q, want EOF", got)
	}
	if errors.Is(err, os.ErrDeadlineExceeded) {
		c.t.Fatalf("no EOF: %v", err)
	}
}

// replay runs a transcript. Lines are "[X] -> …" (send a line), "[X] ->~ …"
// (send without newline), "[X] <- …" (expect a line), "[X] EOF", and
// "!emit EVENT DATA"; "[X] " may be left out for client A; "#" comments.
func replay(t *testing.T, e *testEnv, clients map[string]*client, script string) {
	t.Helper()
	for _, ln := range strings.Split(script, "\n") {
		ln = strings.TrimRight(ln, " ")
		if ln == "" || strings.HasPrefix(ln, "#") {
			continue
		}
		if rest, ok := strings.CutPrefix(ln, "!emit "); ok {
			name, data, _ := strings.Cut(rest, " ")
			e.s.Emit(name, json.RawMessage(data))
			continue
		}
		who := "A"
		if strings.HasPrefix(ln, "[") {
			who, ln = ln[1:2], ln[4:]
		}
		c := clients[who]
		if c == nil {
			t.Fatalf("no client %s", who)
		}
		switch {
		case strings.HasPrefix(ln, "->~ "):
			c.send(ln[4:])
		case strings.HasPrefix(ln, "->"):
			c.send(strings.TrimPrefix(strings.TrimPrefix(ln, "->"), " ") + "\n")
		case strings.HasPrefix(ln, "<- "):
			c.expect(ln[3:])
		case ln == "EOF":
			c.expectEOF()
		default:
			t.Fatalf("bad script line %q", ln)
		}
	}
}

// P-1, complete.
const transcriptP1 = `
<- {"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "Debian 1:7.2+dfsg-7+deb12u18+b3"}, "capabilities": ["oob"]}}
-> {"execute": "query-version"}
<- {"error": {"class": "CommandNotFound", "desc": "Expecting capabilities negotiation with 'qmp_capabilities'"}}
-> {"execute": "query-version", "id": "pre-1"}
<- {"id": "pre-1", "error": {"class": "CommandNotFound", "desc": "Expecting capabilities negotiation with 'qmp_capabilities'"}}
-> {"execute": "quit", "id": 7}
<- {"id": 7, "error": {"class": "CommandNotFound", "desc": "Expecting capabilities negotiation with 'qmp_capabilities'"}}
-> {"execute": "qmp_capabilities", "id": {"x": [1, 2]}}
<- {"return": {}, "id": {"x": [1, 2]}}
-> {"execute": "qmp_capabilities", "id": "again"}
<- {"id": "again", "error": {"class": "CommandNotFound", "desc": "Capabilities negotiation is already complete, command ignored"}}
-> {"execute": "query-version"}
<- {"return": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "Debian 1:7.2+dfsg-7+deb12u18+b3"}}
-> {"execute": "query-version", "id": 1.5}
<- {"return": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "Debian 1:7.2+dfsg-7+deb12u18+b3"}, "id": 1.5}
-> {"execute": "query-version"}
<- {"return": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "Debian 1:7.2+dfsg-7+deb12u18+b3"}}
-> {"execute": "query-version", "id": null}
<- {"return": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "Debian 1:7.2+dfsg-7+deb12u18+b3"}, "id": null}
-> {"execute": "query-status"}
<- {"error": {"class": "CommandNotFound", "desc": "The command query-status has not been found"}}
-> {"execute": "nonexistent-cmd", "id": "u1"}
<- {"id": "u1", "error": {"class": "CommandNotFound", "desc": "The command nonexistent-cmd has not been found"}}
-> {"execute": "query-version", "id": "x", "bogus": 1}
<- {"id": "x", "error": {"class": "GenericError", "desc": "QMP input member 'bogus' is unexpected"}}
-> {"execute": "query-version", "arguments": {"a":1}, "id": "extra"}
<- {"id": "extra", "error": {"class": "GenericError", "desc": "Parameter 'a' is unexpected"}}
-> {"execute": "query-version", "arguments": [], "id": "argsarray"}
<- {"id": "argsarray", "error": {"class": "GenericError", "desc": "QMP input member 'arguments' must be an object"}}
-> {"execute": 5, "id": "numexec"}
<- {"id": "numexec", "error": {"class": "GenericError", "desc": "QMP input member 'execute' must be a string"}}
-> {"id": "noexec"}
<- {"id": "noexec", "error": {"class": "GenericError", "desc": "QMP input lacks member 'execute'"}}
-> [1,2]
<- {"error": {"class": "GenericError", "desc": "QMP input must be a JSON object"}}
-> "str"
<- {"error": {"class": "GenericError", "desc": "QMP input must be a JSON object"}}
-> {"execute": "query-version"
-> }
<- {"return": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "Debian 1:7.2+dfsg-7+deb12u18+b3"}}
-> {"execute": "query-version", }
<- {"error": {"class": "GenericError", "desc": "JSON parse error, expecting value"}}
-> {execute: query-version}
<- {"error": {"class": "GenericError", "desc": "JSON parse error, stray '-v'"}}
<- {"error": {"class": "GenericError", "desc": "JSON parse error, expecting value"}}
-> {'execute': 'query-version', 'id': 'sq'}
<- {"return": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "Debian 1:7.2+dfsg-7+deb12u18+b3"}, "id": "sq"}
-> }}}
<- {"error": {"class": "GenericError", "desc": "JSON parse error, expecting value"}}
<- {"error": {"class": "GenericError", "desc": "JSON parse error, expecting value"}}
<- {"error": {"class": "GenericError", "desc": "JSON parse error, expecting value"}}
-> {"execute": "query-version"} {"execute": "query-version", "id": 2}
<- {"return": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "Debian 1:7.2+dfsg-7+deb12u18+b3"}}
<- {"return": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "Debian 1:7.2+dfsg-7+deb12u18+b3"}, "id": 2}
->~ {"execute": "query-version", "id": "nonl"}
<- {"return": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "Debian 1:7.2+dfsg-7+deb12u18+b3"}, "id": "nonl"}
->
->
->   
->
-> {"execute": "blockdev-add", "id": "miss"}
<- {"id": "miss", "error": {"class": "GenericError", "desc": "Parameter 'driver' is missing"}}
-> {"execute": "blockdev-del", "arguments": {}, "id": "miss2"}
<- {"id": "miss2", "error": {"class": "GenericError", "desc": "Parameter 'node-name' is missing"}}
-> {"execute": "blockdev-del", "arguments": {"node-name": 5}, "id": "wt"}
<- {"id": "wt", "error": {"class": "GenericError", "desc": "Invalid parameter type for 'node-name', expected: string"}}
-> {"execute": "blockdev-del", "arguments": {"node-name": "x", "extra": 1}, "id": "ex"}
<- {"id": "ex", "error": {"class": "GenericError", "desc": "Parameter 'extra' is unexpected"}}
-> {"execute": "blockdev-del", "arguments": {"node-name": "nope"}, "id": "nf"}
<- {"id": "nf", "error": {"class": "GenericError", "desc": "Failed to find node with node-name='nope'"}}
-> {"execute": "block-job-set-speed", "arguments": {"device": "nojob", "speed": "fast"}, "id": "wt2"}
<- {"id": "wt2", "error": {"class": "GenericError", "desc": "Invalid parameter type for 'speed', expected: integer"}}
-> {"execute": "block-job-set-speed", "arguments": {"device": "nojob", "speed": 100}, "id": "nojob"}
<- {"id": "nojob", "error": {"class": "DeviceNotActive", "desc": "Block job 'nojob' not found"}}
-> {"execute": "block-job-set-speed", "arguments": {"device": "nojob", "speed": -1}, "id": "neg"}
<- {"id": "neg", "error": {"class": "DeviceNotActive", "desc": "Block job 'nojob' not found"}}
-> {"execute": "block-job-set-speed", "arguments": {"device": "nojob", "speed": 1.5}, "id": "float"}
<- {"id": "float", "error": {"class": "GenericError", "desc": "Invalid parameter type for 'speed', expected: integer"}}
-> {"execute": "block-job-set-speed", "arguments": {"device": "nojob", "speed": 18446744073709551615}, "id": "big"}
<- {"id": "big", "error": {"class": "GenericError", "desc": "Invalid parameter type for 'speed', expected: integer"}}
-> {"execute": "query-named-block-nodes", "arguments": {"flat": "yes"}, "id": "bool"}
<- {"id": "bool", "error": {"class": "GenericError", "desc": "Invalid parameter type for 'flat', expected: boolean"}}
-> {"execute": "query-named-block-nodes", "arguments": {"flat": null}, "id": "nullarg"}
<- {"id": "nullarg", "error": {"class": "GenericError", "desc": "Invalid parameter type for 'flat', expected: boolean"}}
-> {"execute": "query-version", "control": {"run-oob": true}, "id": "oob"}
<- {"id": "oob", "error": {"class": "GenericError", "desc": "QMP input member 'control' is unexpected"}}
-> {"exec-oob": "query-version", "id": "oob2"}
<- {"id": "oob2", "error": {"class": "GenericError", "desc": "QMP input member 'exec-oob' is unexpected"}}
-> {"execute": "quit", "id": "bye"}
<- {"return": {}, "id": "bye"}
EOF
`

func TestTranscript_P1(t *testing.T) {
	e := newEnv(t, ServerOptions{}, 1)
	replay(t, e, map[string]*client{"A": e.dial(0)}, transcriptP1)
	select {
	case <-e.s.Done():
	case <-time.After(waitFor):
		t.Fatal("Done not closed after quit")
	}
}

// P-2 without client B, which qsd kept queued on A's socket (blockd serves
// it at once; see TestManyClientsPerSocket). A and C sit on two sockets.
const transcriptP2 = `
[A] <- {"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "Debian 1:7.2+dfsg-7+deb12u18+b3"}, "capabilities": ["oob"]}}
[C] <- {"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "Debian 1:7.2+dfsg-7+deb12u18+b3"}, "capabilities": ["oob"]}}
[A] -> {"execute": "qmp_capabilities", "arguments": {"enable": ["oob"]}, "id": 1}
[A] <- {"return": {}, "id": 1}
[C] -> {"execute": "qmp_capabilities", "arguments": {"enable": ["bogus"]}, "id": 1}
[C] <- {"id": 1, "error": {"class": "GenericError", "desc": "Parameter 'null' does not accept value 'bogus'"}}
[C] -> {"execute": "qmp_capabilities", "arguments": {"enable": "oob"}, "id": 2}
[C] <- {"id": 2, "error": {"class": "GenericError", "desc": "Invalid parameter type for 'enable', expected: array"}}
[C] -> {"execute": "qmp_capabilities", "id": 3}
[C] <- {"return": {}, "id": 3}
[A] -> {"exec-oob": "query-version", "id": "oob1"}
[A] <- {"id": "oob1", "error": {"class": "GenericError", "desc": "The command query-version does not support OOB"}}
[A] -> {"exec-oob": "blockdev-add", "id": "oob2", "arguments": {"driver":"null-co","node-name":"n"}}
[A] <- {"id": "oob2", "error": {"class": "GenericError", "desc": "The command blockdev-add does not support OOB"}}
[A] -> {"execute": "query-version", "id": "x", "control": {"run-oob": true}}
[A] <- {"id": "x", "error": {"class": "GenericError", "desc": "QMP input member 'control' is unexpected"}}
[A] -> {"exec-oob": "query-version"}
[A] <- {"error": {"class": "GenericError", "desc": "The command query-version does not support OOB"}}
[A] -> {"execute": "blockdev-create", "arguments": {"job-id": "c1", "options": {"driver": "file", "filename": "$TEST_DIR/p2.img", "size": 1048576}}, "id": "cr"}
[A] <- {"timestamp": {"seconds": 1795278376, "microseconds": 716195}, "event": "JOB_STATUS_CHANGE", "data": {"status": "created", "id": "c1"}}
[A] <- {"timestamp": {"seconds": 1795278376, "microseconds": 716266}, "event": "JOB_STATUS_CHANGE", "data": {"status": "running", "id": "c1"}}
[A] <- {"return": {}, "id": "cr"}
!emit JOB_STATUS_CHANGE {"id": "c1", "status": "waiting"}
!emit JOB_STATUS_CHANGE {"id": "c1", "status": "pending"}
!emit JOB_STATUS_CHANGE {"id": "c1", "status": "concluded"}
[A] <- {"timestamp": {"seconds": 1795278376, "microseconds": 717046}, "event": "JOB_STATUS_CHANGE", "data": {"status": "waiting", "id": "c1"}}
[A] <- {"timestamp": {"seconds": 1795278376, "microseconds": 717068}, "event": "JOB_STATUS_CHANGE", "data": {"status": "pending", "id": "c1"}}
[A] <- {"timestamp": {"seconds": 1795278376, "microseconds": 717081}, "event": "JOB_STATUS_CHANGE", "data": {"status": "concluded", "id": "c1"}}
[C] <- {"timestamp": {"seconds": 1795278376, "microseconds": 716195}, "event": "JOB_STATUS_CHANGE", "data": {"status": "created", "id": "c1"}}
[C] <- {"timestamp": {"seconds": 1795278376, "microseconds": 716266}, "event": "JOB_STATUS_CHANGE", "data": {"status": "running", "id": "c1"}}
[C] <- {"timestamp": {"seconds": 1795278376, "microseconds": 717046}, "event": "JOB_STATUS_CHANGE", "data": {"status": "waiting", "id": "c1"}}
[C] <- {"timestamp": {"seconds": 1795278376, "microseconds": 717068}, "event": "JOB_STATUS_CHANGE", "data": {"status": "pending", "id": "c1"}}
[C] <- {"timestamp": {"seconds": 1795278376, "microseconds": 717081}, "event": "JOB_STATUS_CHANGE", "data": {"status": "concluded", "id": "c1"}}
[A] -> {"execute": "query-jobs", "id": "qj"}
[A] <- {"return": [{"current-progress": 1, "status": "concluded", "total-progress": 1, "type": "create", "id": "c1"}], "id": "qj"}
[A] -> {"execute": "job-dismiss", "arguments": {"id": "c1"}, "id": "jd"}
[A] <- {"timestamp": {"seconds": 1795278379, "microseconds": 519458}, "event": "JOB_STATUS_CHANGE", "data": {"status": "null", "id": "c1"}}
[A] <- {"return": {}, "id": "jd"}
[C] <- {"timestamp": {"seconds": 1795278379, "microseconds": 519458}, "event": "JOB_STATUS_CHANGE", "data": {"status": "null", "id": "c1"}}
[C] -> {"execute": "quit", "id": "q"}
[C] <- {"return": {}, "id": "q"}
[C] EOF
[A] EOF
`

func TestTranscript_P2(t *testing.T) {
	e := newEnv(t, ServerOptions{}, 2)
	for _, ts := range [][2]int64{
		{1795278376, 716195}, {1795278376, 716266}, {1795278376, 717046},
		{1795278376, 717068}, {1795278376, 717081}, {1795278379, 519458},
	} {
		e.clock.push(ts[0], ts[1])
	}
	replay(t, e, map[string]*client{"A": e.dial(0), "C": e.dial(1)}, transcriptP2)
	<-e.s.Done()
	for _, p := range e.paths {
		if _, err := os.Lstat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("socket %s not removed after quit: %v", p, err)
		}
	}
}

// P-3, client B's part (the ids and the limits), and C's: a connection
// still negotiating receives no events.
const transcriptP3 = `
[A] -> {"execute": "blockdev-create", "arguments": {"job-id": "c1", "options": {"driver": "file", "filename": "$TEST_DIR/p3.img", "size": 1048576}}, "id": "cr"}
[A] <- {"timestamp": {"seconds": 1795278339, "microseconds": 421626}, "event": "JOB_STATUS_CHANGE", "data": {"status": "created", "id": "c1"}}
[A] <- {"timestamp": {"seconds": 1795278339, "microseconds": 421702}, "event": "JOB_STATUS_CHANGE", "data": {"status": "running", "id": "c1"}}
[A] <- {"return": {}, "id": "cr"}
[C] -> {"execute": "qmp_capabilities"}
[C] <- {"return": {}}
`

// Client B connects once A's job events are over, as in qsd where B waited
// for A to go away.
const transcriptP3B = `
[B] -> {"execute": "query-jobs"}
[B] <- {"return": [{"current-progress": 1, "status": "concluded", "total-progress": 1, "type": "create", "id": "c1"}]}
[B] -> {"execute":"query-version","id":0}{"execute":"query-version","id":1}{"execute":"query-version","id":2}{"execute":"query-version","id":3}{"execute":"query-version","id":4}{"execute":"query-version","id":5}{"execute":"query-version","id":6}{"execute":"query-version","id":7}{"execute":"query-version","id":8}{"execute":"query-version","id":9}{"execute":"query-version","id":10}{"execute":"query-version","id":11}
[B] <- {"return": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "Debian 1:7.2+dfsg-7+deb12u18+b3"}, "id": 0}
[B] <- {"return": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "Debian 1:7.2+dfsg-7+deb12u18+b3"}, "id": 1}
[B] <- {"return": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "Debian 1:7.2+dfsg-7+deb12u18+b3"}, "id": 2}
[B] <- {"return": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "Debian 1:7.2+dfsg-7+deb12u18+b3"}, "id": 3}
[B] <- {"return": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "Debian 1:7.2+dfsg-7+deb12u18+b3"}, "id": 4}
[B] <- {"return": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "Debian 1:7.2+dfsg-7+deb12u18+b3"}, "id": 5}
[B] <- {"return": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "Debian 1:7.2+dfsg-7+deb12u18+b3"}, "id": 6}
[B] <- {"return": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "Debian 1:7.2+dfsg-7+deb12u18+b3"}, "id": 7}
[B] <- {"return": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "Debian 1:7.2+dfsg-7+deb12u18+b3"}, "id": 8}
[B] <- {"return": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "Debian 1:7.2+dfsg-7+deb12u18+b3"}, "id": 9}
[B] <- {"return": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "Debian 1:7.2+dfsg-7+deb12u18+b3"}, "id": 10}
[B] <- {"return": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "Debian 1:7.2+dfsg-7+deb12u18+b3"}, "id": 11}
[B] -> {"execute":"query-version","id":"g"} garbage
[B] <- {"return": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "Debian 1:7.2+dfsg-7+deb12u18+b3"}, "id": "g"}
[B] <- {"error": {"class": "GenericError", "desc": "JSON parse error, invalid keyword 'garbage'"}}
[B] -> {"execute":"query-version","id":"g2"}
[B] <- {"return": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "Debian 1:7.2+dfsg-7+deb12u18+b3"}, "id": "g2"}
[B] -> {"execute":"query-version","arguments":null,"id":"nullargs"}
[B] <- {"id": "nullargs", "error": {"class": "GenericError", "desc": "QMP input member 'arguments' must be an object"}}
[B] -> {"execute":"query-version","id":"u\u00e9"}
[B] <- {"return": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "Debian 1:7.2+dfsg-7+deb12u18+b3"}, "id": "u\u00E9"}
[B] -> {"execute":"query-version","id":1e3}
[B] <- {"return": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "Debian 1:7.2+dfsg-7+deb12u18+b3"}, "id": 1000}
[B] -> {"execute":"query-version","id":true}
[B] <- {"return": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "Debian 1:7.2+dfsg-7+deb12u18+b3"}, "id": true}
[B] -> {"execute":"query-version","id":-9223372036854775809}
[B] <- {"return": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "Debian 1:7.2+dfsg-7+deb12u18+b3"}, "id": -9.2233720368547758e+18}
[B] -> {"execute":"query-version","id":18446744073709551616}
[B] <- {"return": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "Debian 1:7.2+dfsg-7+deb12u18+b3"}, "id": 1.8446744073709552e+19}
[B] -> {"execute":"query-version", "execute":"quit", "id":"dup"}
[B] <- {"error": {"class": "GenericError", "desc": "JSON parse error, duplicate key"}}
`

func TestTranscript_P3(t *testing.T) {
	e := newEnv(t, ServerOptions{}, 2)
	e.clock.push(1795278339, 421626)
	e.clock.push(1795278339, 421702)
	a := e.connect(0)
	c := e.dial(1)
	c.expect(greeting)
	clients := map[string]*client{"A": a, "C": c}
	replay(t, e, clients, transcriptP3)
	b := e.connect(0) // on A's socket, served at once
	clients["B"] = b
	replay(t, e, clients, transcriptP3B)

	// The nesting limit: 1100 levels give the limit error, the rest of the
	// line as a value of 76 levels, then one error per leftover closer.
	deep := func(n int) string {
		return `{"execute":"query-version","id":` + strings.Repeat("[", n) + strings.Repeat("]", n) + "}\n"
	}
	b.send(deep(1100))
	b.expect(`{"error": {"class": "GenericError", "desc": "JSON nesting depth limit exceeded"}}`)
	b.expect(`{"error": {"class": "GenericError", "desc": "QMP input must be a JSON object"}}`)
	for i := 0; i < 1025; i++ {
		b.expect(`{"error": {"class": "GenericError", "desc": "JSON parse error, expecting value"}}`)
	}
	b.send(deep(1000))
	b.expect(versionReply + `, "id": ` + strings.Repeat("[", 1000) + strings.Repeat("]", 1000) + "}")
}

// P-4: names are exact; empty arguments are accepted.
func TestTranscript_P4(t *testing.T) {
	e := newEnv(t, ServerOptions{}, 1)
	a := e.dial(0)
	replay(t, e, map[string]*client{"A": a}, `
<- {"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "Debian 1:7.2+dfsg-7+deb12u18+b3"}, "capabilities": ["oob"]}}
-> {"execute": "qmp_capabilities", "arguments": {}}
<- {"return": {}}
-> {"execute": "query-version", "arguments": {}}
<- {"return": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "Debian 1:7.2+dfsg-7+deb12u18+b3"}}
-> {"execute": "query_version"}
<- {"error": {"class": "CommandNotFound", "desc": "The command query_version has not been found"}}
-> {"execute": "Query-Version"}
<- {"error": {"class": "CommandNotFound", "desc": "The command Query-Version has not been found"}}
-> {"execute": "qmp-capabilities"}
<- {"error": {"class": "CommandNotFound", "desc": "The command qmp-capabilities has not been found"}}
-> {"execute": "block-resize", "arguments": {"node-name": "x", "size": 1}}
<- {"error": {"class": "CommandNotFound", "desc": "The command block-resize has not been found"}}
-> {"execute": "query-commands", "id": "qc"}
<- {"return": [{"name": "job-dismiss"}, {"name": "query-jobs"}, {"name": "blockdev-create"}, {"name": "query-named-block-nodes"}, {"name": "block-job-set-speed"}, {"name": "blockdev-del"}, {"name": "blockdev-add"}, {"name": "query-qmp-schema"}, {"name": "quit"}, {"name": "query-commands"}, {"name": "query-version"}, {"name": "qmp_capabilities"}], "id": "qc"}
-> {"execute": "quit", "arguments": {}}
<- {"return": {}}
EOF
`)
}

// P-5: a pretty=on monitor.
func TestTranscript_P5Pretty(t *testing.T) {
	e := newEnv(t, ServerOptions{}, 1, MonitorOptions{Pretty: true})
	c := e.dial(0)
	read := func(want string) {
		t.Helper()
		buf := make([]byte, len(want))
		c.nc.SetReadDeadline(time.Now().Add(waitFor))
		if _, err := io.ReadFull(c.r, buf); err != nil || string(buf) != want {
			t.Fatalf("got %q (%v)\nwant %q", buf, err, want)
		}
	}
	read("{\r\n    \"QMP\": {\r\n        \"version\": {\r\n            \"qemu\": {\r\n                \"micro\": 22,\r\n                \"minor\": 2,\r\n                \"major\": 7\r\n            },\r\n            \"package\": \"Debian 1:7.2+dfsg-7+deb12u18+b3\"\r\n        },\r\n        \"capabilities\": [\r\n            \"oob\"\r\n        ]\r\n    }\r\n}\r\n")
	c.send(`{"execute": "qmp_capabilities"}`)
	read("{\r\n    \"return\": {\r\n    }\r\n}\r\n")
	c.send(`{"execute": "query-version", "id": 1}`)
	read("{\r\n    \"return\": {\r\n        \"qemu\": {\r\n            \"micro\": 22,\r\n            \"minor\": 2,\r\n            \"major\": 7\r\n        },\r\n        \"package\": \"Debian 1:7.2+dfsg-7+deb12u18+b3\"\r\n    },\r\n    \"id\": 1\r\n}\r\n")
	c.send(`{"execute": "nosuch", "id": 2}`)
	read("{\r\n    \"id\": 2,\r\n    \"error\": {\r\n        \"class\": \"CommandNotFound\",\r\n        \"desc\": \"The command nosuch has not been found\"\r\n    }\r\n}\r\n")
	c.send(`{"execute": "quit"}`)
	read("{\r\n    \"return\": {\r\n    }\r\n}\r\n")
}
