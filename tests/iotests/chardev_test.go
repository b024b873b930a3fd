package iotests

import (
	"encoding/json"
	"net"
	"os"
	"slices"
	"testing"
	"time"
)

type chardevInfo struct {
	Label        string `json:"label"`
	Filename     string `json:"filename"`
	FrontendOpen bool   `json:"frontend-open"`
}

// chardevs returns query-chardev by label.
func chardevs(t *testing.T, d *Daemon) map[string]chardevInfo {
	t.Helper()
	var list []chardevInfo
	d.CmdInto("query-chardev", nil, &list)
	out := map[string]chardevInfo{}
	for _, c := range list {
		out[c.Label] = c
	}
	return out
}

// waitFilename polls query-chardev until label's filename is want: a
// client connecting or leaving sends no event.
func waitFilename(t *testing.T, d *Daemon, label, want string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		got := chardevs(t, d)[label].Filename
		if got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("chardev %s: filename %q, want %q", label, got, want)
		}
		<-time.After(20 * time.Millisecond)
	}
}

func unixSocketBackend(path string, extra map[string]any) map[string]any {
	data := map[string]any{"addr": map[string]any{"type": "unix", "data": map[string]any{"path": path}}}
	for k, v := range extra {
		data[k] = v
	}
	return map[string]any{"type": "socket", "data": data}
}

func chardevAdd(id string, backend map[string]any) map[string]any {
	return map[string]any{"id": id, "backend": backend}
}

// TestQueryChardev: the command line's chardevs in query-chardev and
// under /chardevs, with qsd's filenames; a monitor's chardev is busy.
func TestQueryChardev(t *testing.T) {
	spare := shortSock(t, "spare")
	d := start(t, "--chardev", "socket,id=spare,path="+spare+",server=on,wait=off", "--chardev", "stdio,id=st")
	want := map[string]chardevInfo{
		"m0":    {"m0", "unix:" + d.Path("qmp0.sock") + ",server=on", true},
		"m1":    {"m1", "unix:" + d.Path("qmp1.sock") + ",server=on", true},
		"spare": {"spare", "disconnected:unix:" + spare + ",server=on", false},
		"st":    {"st", "stdio", false},
	}
	if got := chardevs(t, d); !mapsEqual(got, want) {
		t.Errorf("query-chardev:\n got %v\nwant %v", got, want)
	}
	if got := qomList(t, d, "/chardevs"); !slices.Equal(got, []string{"m0:child<chardev-socket>", "m1:child<chardev-socket>",
		"spare:child<chardev-socket>", "st:child<chardev-stdio>", "type:string"}) {
		t.Errorf("qom-list /chardevs: %v", got)
	}
	if root := qomList(t, d, "/"); !slices.Contains(root, "chardevs:child<container>") {
		t.Errorf("qom-list /: %v", root)
	}
	if got := qomList(t, d, "/chardevs/spare"); !slices.Equal(got, []string{"addr:SocketAddress", "connected:bool", "type:string"}) {
		t.Errorf("qom-list /chardevs/spare: %v", got)
	}
	if got := qomList(t, d, "/chardevs/st"); !slices.Equal(got, []string{"type:string"}) {
		t.Errorf("qom-list /chardevs/st: %v", got)
	}
	qomGetIs(t, d, "/chardevs/spare", "connected", "false")
	qomGetIs(t, d, "/chardevs/m0", "connected", "true")
	qomGetIs(t, d, "st", "type", `"chardev-stdio"`)
	qomGetIs(t, d, "/chardevs/spare", "addr", `{"path":"`+spare+`","type":"unix"}`)
	d.MustFail("qom-get", map[string]any{"path": "/chardevs/st", "property": "x"}, "GenericError", "Property 'chardev-stdio.x' not found")
	d.MustFail("qom-set", map[string]any{"path": "/chardevs/spare", "property": "connected", "value": true},
		"GenericError", "Property 'chardev-socket.connected' is not writable")
	d.MustFail("qom-set", map[string]any{"path": "/chardevs/st", "property": "type", "value": "x"},
		"GenericError", "Property 'chardev-stdio.type' is not writable")

	// A chardev nothing uses takes one client at a time.
	c, err := net.Dial("unix", spare)
	if err != nil {
		t.Fatal(err)
	}
	waitFilename(t, d, "spare", "unix:"+spare+",server=on")
	qomGetIs(t, d, "/chardevs/spare", "connected", "true")
	c.Close()
	waitFilename(t, d, "spare", "disconnected:unix:"+spare+",server=on")

	d.MustFail("chardev-remove", map[string]any{"id": "m0"}, "GenericError", "Chardev 'm0' is busy")
	d.MustFail("chardev-change", chardevAdd("m0", map[string]any{"type": "null", "data": map[string]any{}}),
		"GenericError", "Chardev user does not support chardev hotswap")
	d.Cmd("chardev-remove", map[string]any{"id": "spare"})
	d.Cmd("chardev-remove", map[string]any{"id": "st"})
	if _, err := os.Stat(spare); !os.IsNotExist(err) {
		t.Errorf("the removed chardev's socket is still there: %v", err)
	}
	if got := chardevs(t, d); len(got) != 2 {
		t.Errorf("after chardev-remove: %v", got)
	}
	d.MustFail("chardev-remove", map[string]any{"id": "spare"}, "GenericError", "Chardev 'spare' not found")
}

func mapsEqual[K comparable, V comparable](a, b map[K]V) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// qomGetIs checks a qom-get's JSON reply, compared as compact JSON with
// sorted keys.
func qomGetIs(t *testing.T, d *Daemon, path, prop, want string) {
	t.Helper()
	var v any
	if err := json.Unmarshal(d.Cmd("qom-get", map[string]any{"path": path, "property": prop}), &v); err != nil {
		t.Fatal(err)
	}
	got, _ := json.Marshal(v)
	if string(got) != want {
		t.Errorf("qom-get %s %s = %s, want %s", path, prop, got, want)
	}
}

// TestChardevAdd: chardev-add's backends, filenames and errors as qsd's.
func TestChardevAdd(t *testing.T) {
	d := start(t)
	empty := map[string]any{}
	ringbuf := map[string]any{"type": "ringbuf", "data": empty}
	srv := shortSock(t, "srv")
	out := d.Path("f.out")
	for _, c := range []struct {
		id      string
		backend map[string]any
		file    string
	}{
		{"r", ringbuf, "ringbuf"},
		{"mem", map[string]any{"type": "memory", "data": map[string]any{"size": 4}}, "memory"},
		{"n", map[string]any{"type": "null", "data": map[string]any{"logfile": d.Path("n.log")}}, "null"},
		{"f", map[string]any{"type": "file", "data": map[string]any{"out": out}}, "file"},
		{"srv", unixSocketBackend(srv, nil), "disconnected:unix:" + srv + ",server=on"},
		{"", ringbuf, "ringbuf"}, // qsd checks no id
	} {
		d.Cmd("chardev-add", chardevAdd(c.id, c.backend))
		if got := chardevs(t, d)[c.id]; got.Filename != c.file || got.FrontendOpen {
			t.Errorf("chardev %q: %+v, want filename %q", c.id, got, c.file)
		}
	}
	for _, f := range []string{out, d.Path("n.log"), srv} {
		if _, err := os.Stat(f); err != nil {
			t.Errorf("chardev-add made no %s: %v", f, err)
		}
	}

	// A client socket on the server socket: both ends connected.
	d.Cmd("chardev-add", chardevAdd("cli", unixSocketBackend(srv, map[string]any{"server": false})))
	waitFilename(t, d, "srv", "unix:"+srv+",server=on")
	waitFilename(t, d, "cli", "unix:")
	d.Cmd("chardev-remove", map[string]any{"id": "cli"})
	waitFilename(t, d, "srv", "disconnected:unix:"+srv+",server=on")

	// TCP: the port bound is the one reported.
	d.Cmd("chardev-add", chardevAdd("tcp", map[string]any{"type": "socket", "data": map[string]any{
		"addr": map[string]any{"type": "inet", "data": map[string]any{"host": "127.0.0.1", "port": "0"}}}}))
	var addr struct{ Host, Port, Type string }
	if err := json.Unmarshal(d.Cmd("qom-get", map[string]any{"path": "/chardevs/tcp", "property": "addr"}), &addr); err != nil {
		t.Fatal(err)
	}
	if addr.Host != "127.0.0.1" || addr.Port == "0" || addr.Type != "inet" {
		t.Errorf("addr of a TCP chardev: %+v", addr)
	}
	waitFilename(t, d, "tcp", "disconnected:tcp:127.0.0.1:"+addr.Port+",server=on")
	tc, err := net.Dial("tcp", "127.0.0.1:"+addr.Port)
	if err != nil {
		t.Fatal(err)
	}
	waitFilename(t, d, "tcp", "tcp:127.0.0.1:"+addr.Port+",server=on <-> "+tc.LocalAddr().String())
	tc.Close()

	fail := func(id string, backend map[string]any, desc string) {
		t.Helper()
		d.MustFail("chardev-add", chardevAdd(id, backend), "GenericError", desc)
	}
	sock := func(extra map[string]any) map[string]any { return unixSocketBackend(d.Path("x.sock"), extra) }
	fail("r", ringbuf, "Chardev with id 'r' already exists")
	fail("m0", ringbuf, "Chardev with id 'm0' already exists")
	fail("x", map[string]any{"type": "ringbuf", "data": map[string]any{"size": 3}},
		"Failed to add chardev 'x': size of ringbuf chardev must be power of two")
	fail("x", map[string]any{"type": "ringbuf", "data": map[string]any{"size": -1}},
		"Failed to add chardev 'x': size of ringbuf chardev must be power of two")
	fail("x", map[string]any{"type": "vc", "data": empty}, "Failed to add chardev 'x': 'vc' is not a valid char driver name")
	fail("x", map[string]any{"type": "bogus", "data": empty}, "Parameter 'type' does not accept value 'bogus'")
	fail("x", map[string]any{"type": "ringbuf"}, "Parameter 'backend.data' is missing")
	fail("x", map[string]any{"data": empty}, "Parameter 'backend.type' is missing")
	fail("x", map[string]any{"type": "ringbuf", "data": map[string]any{"x": 1}}, "Parameter 'backend.data.x' is unexpected")
	fail("x", map[string]any{"type": "ringbuf", "data": empty, "y": 2}, "Parameter 'backend.y' is unexpected")
	fail("x", map[string]any{"type": "serial", "data": empty}, "Parameter 'backend.data.device' is missing")
	fail("x", map[string]any{"type": "null", "data": map[string]any{"logfile": "/nonexist/log"}},
		"Failed to add chardev 'x': Could not create '/nonexist/log': No such file or directory")
	fail("x", map[string]any{"type": "file", "data": map[string]any{"out": "/nonexist/out"}},
		"Failed to add chardev 'x': Could not open '/nonexist/out': No such file or directory")
	fail("x", map[string]any{"type": "file", "data": map[string]any{"out": d.Path("o2"), "in": "/nonexist/in"}},
		"Failed to add chardev 'x': Could not open '/nonexist/in': No such file or directory")
	fail("x", unixSocketBackend("/nonexist/x.sock", nil),
		"Failed to add chardev 'x': Failed to bind socket to /nonexist/x.sock: No such file or directory")
	fail("x", sock(map[string]any{"server": false}),
		"Failed to add chardev 'x': Failed to connect to '"+d.Path("x.sock")+"': No such file or directory")
	fail("x", sock(map[string]any{"server": false, "wait": false}),
		"Failed to add chardev 'x': 'wait' option is incompatible with socket in client connect mode")
	fail("x", sock(map[string]any{"reconnect": 5}),
		"Failed to add chardev 'x': 'reconnect' option is incompatible with socket in server listen mode")
	fail("x", sock(map[string]any{"tls-authz": "a"}), "Failed to add chardev 'x': 'tls_authz' option requires 'tls_creds' option")
	fail("x", sock(map[string]any{"tls-creds": "nope"}), "Failed to add chardev 'x': No TLS credentials with id 'nope'")
	fail("x", map[string]any{"type": "socket", "data": map[string]any{"addr": map[string]any{"type": "fd", "data": map[string]any{"str": "nofd"}}}},
		"Failed to add chardev 'x': only QEMU supports file descriptor passing")
	inet := func(host, port string, server bool) map[string]any {
		return map[string]any{"type": "socket", "data": map[string]any{"server": server,
			"addr": map[string]any{"type": "inet", "data": map[string]any{"host": host, "port": port}}}}
	}
	fail("x", inet("127.0.0.1", addr.Port, true), "Failed to add chardev 'x': Failed to find an available port: Address already in use")
	fail("x", inet("127.0.0.1", "notaport", true),
		"Failed to add chardev 'x': address resolution failed for 127.0.0.1:notaport: Servname not supported for ai_socktype")
	fail("x", inet("no.such.host.invalid", "1", true),
		"Failed to add chardev 'x': address resolution failed for no.such.host.invalid:1: Name or service not known")
	fail("x", inet("127.0.0.1", "1", false), "Failed to add chardev 'x': Failed to connect to '127.0.0.1:1': Connection refused")
	if _, ok := chardevs(t, d)["x"]; ok {
		t.Error("a failed chardev-add left a chardev")
	}

	d.Cmd("chardev-send-break", map[string]any{"id": "r"})
	d.Cmd("chardev-send-break", map[string]any{"id": "m0"})
	d.MustFail("chardev-send-break", map[string]any{"id": "nope"}, "GenericError", "Chardev 'nope' not found")
	for _, id := range []string{"r", "mem", "n", "f", "srv", "", "tcp"} {
		d.Cmd("chardev-remove", map[string]any{"id": id})
	}
	if _, err := os.Stat(srv); !os.IsNotExist(err) {
		t.Errorf("chardev-remove left the socket file: %v", err)
	}
}

// TestChardevWait: a server socket with wait=on answers chardev-add once
// a client connects.
func TestChardevWait(t *testing.T) {
	d := start(t)
	sock := shortSock(t, "w")
	connected := make(chan net.Conn, 1)
	go func() {
		deadline := time.Now().Add(10 * time.Second)
		for time.Now().Before(deadline) {
			if c, err := net.Dial("unix", sock); err == nil {
				connected <- c
				return
			}
			<-time.After(20 * time.Millisecond)
		}
		close(connected)
	}()
	d.Cmd("chardev-add", chardevAdd("w", unixSocketBackend(sock, map[string]any{"wait": true})))
	c := <-connected
	if c == nil {
		t.Fatal("no connection")
	}
	defer c.Close()
	if got := chardevs(t, d)["w"].Filename; got != "unix:"+sock+",server=on" {
		t.Errorf("filename once chardev-add returned: %q", got)
	}
}

// TestChardevChange: a chardev nothing uses is replaced; errors as qsd's.
func TestChardevChange(t *testing.T) {
	d := start(t)
	d.Cmd("chardev-add", chardevAdd("r", map[string]any{"type": "ringbuf", "data": map[string]any{}}))
	d.Cmd("ringbuf-write", map[string]any{"device": "r", "data": "x"})
	d.Cmd("chardev-change", chardevAdd("r", map[string]any{"type": "null", "data": map[string]any{}}))
	if got := chardevs(t, d)["r"].Filename; got != "null" {
		t.Errorf("after chardev-change to null: %q", got)
	}
	d.MustFail("ringbuf-read", map[string]any{"device": "r", "size": 1}, "GenericError", "r is not a ringbuf device")
	d.Cmd("chardev-change", chardevAdd("r", map[string]any{"type": "memory", "data": map[string]any{}}))
	if got := chardevs(t, d)["r"].Filename; got != "memory" {
		t.Errorf("after chardev-change to memory: %q", got)
	}
	d.MustFail("chardev-change", chardevAdd("nope", map[string]any{"type": "null", "data": map[string]any{}}),
		"GenericError", "Chardev 'nope' does not exist")
	d.MustFail("chardev-change", chardevAdd("r", map[string]any{"type": "ringbuf", "data": map[string]any{"size": 3}}),
		"GenericError", "Failed to add chardev 'r': size of ringbuf chardev must be power of two")
	_, kept := chardevs(t, d)["r"]
	if isQSD() {
		// qsd removes the old chardev before it checks the new options.
		kept = !kept
	}
	if !kept {
		t.Error("chardev-change with bad options: blockd must keep the chardev")
	}
}

// TestRingbuf: ringbuf-write and ringbuf-read, every case checked against
// qsd: the oldest data first, the count limit, base64 as GLib decodes
// it, and utf8 replies as QEMU's JSON writer makes them of any bytes.
func TestRingbuf(t *testing.T) {
	d := start(t)
	d.Cmd("chardev-add", chardevAdd("small", map[string]any{"type": "memory", "data": map[string]any{"size": 4}}))
	d.Cmd("chardev-add", chardevAdd("r", map[string]any{"type": "ringbuf", "data": map[string]any{}}))
	d.Cmd("chardev-add", chardevAdd("n", map[string]any{"type": "null", "data": map[string]any{}}))
	write := func(dev, data, format string) {
		t.Helper()
		args := map[string]any{"device": dev, "data": data}
		if format != "" {
			args["format"] = format
		}
		d.Cmd("ringbuf-write", args)
	}
	// read compares the raw reply text: how a string is escaped is part
	// of what qsd sends.
	read := func(dev string, size int, format, want string) {
		t.Helper()
		args := map[string]any{"device": dev, "size": size}
		if format != "" {
			args["format"] = format
		}
		got, qerr := d.Try("ringbuf-read", args)
		if qerr != nil {
			t.Fatalf("ringbuf-read %v: %v", args, qerr)
		}
		if string(got) != want {
			t.Errorf("ringbuf-read %v = %s, want %s", args, got, want)
		}
	}
	write("small", "abcdef", "")
	read("small", 100, "", `"cdef"`)
	read("small", 100, "", `""`)
	write("small", "ab", "")
	read("small", 1, "", `"a"`)
	read("small", 1, "base64", `"Yg=="`)
	read("small", 1, "base64", `""`)

	write("r", "a\u0000b", "") // U+0000 is kept as C0 80
	read("r", 100, "base64", `"YcCAYg=="`)
	write("r", "a\u0000b", "")
	read("r", 100, "", `"a\u0000b"`)
	write("r", "YQBi", "base64") // a real NUL ends the string, and is consumed
	read("r", 100, "", `"a"`)
	read("r", 100, "", `""`)
	write("r", "/+3vv7/AgA==", "base64") // stray byte, cut sequence, noncharacter, C0 80
	read("r", 100, "", `"\uFFFD\uFFFD\uFFFD\u0000"`)
	write("r", "€😀é", "")
	read("r", 2, "", `"\uFFFD"`) // half a character
	read("r", 100, "", `"\uFFFD\uD83D\uDE00\u00E9"`)
	write("r", "QQ==QUJD", "base64")
	read("r", 100, "", `"AABC"`)
	write("r", "Q=Q=\nQUJ", "base64")
	read("r", 100, "base64", `"QAQ="`)
	write("r", "", "base64")
	read("r", 100, "", `""`)

	for _, c := range []struct {
		cmd  string
		args map[string]any
		desc string
	}{
		{"ringbuf-write", map[string]any{"device": "r", "data": "QU JD", "format": "base64"}, "Base64 data contains invalid characters"},
		{"ringbuf-write", map[string]any{"device": "r", "data": "x", "format": "hex"}, "Parameter 'format' does not accept value 'hex'"},
		{"ringbuf-write", map[string]any{"device": "nope", "data": "x"}, "Device 'nope' not found"},
		{"ringbuf-write", map[string]any{"device": "n", "data": "x"}, "n is not a ringbuf device"},
		{"ringbuf-write", map[string]any{"device": "m0", "data": "x"}, "m0 is not a ringbuf device"},
		{"ringbuf-read", map[string]any{"device": "n", "size": 1}, "n is not a ringbuf device"},
		{"ringbuf-read", map[string]any{"device": "nope", "size": 0}, "Device 'nope' not found"},
		{"ringbuf-read", map[string]any{"device": "r", "size": 0}, "size must be greater than zero"},
		{"ringbuf-read", map[string]any{"device": "r", "size": -5}, "size must be greater than zero"},
		{"ringbuf-read", map[string]any{"device": "r"}, "Parameter 'size' is missing"},
	} {
		d.MustFail(c.cmd, c.args, "GenericError", c.desc)
	}
}

// TestChardevBackends: query-chardev-backends lists what blockd opens,
// each of which qsd has too.
func TestChardevBackends(t *testing.T) {
	d := start(t)
	var list []struct{ Name string }
	d.CmdInto("query-chardev-backends", nil, &list)
	var got []string
	for _, b := range list {
		got = append(got, b.Name)
	}
	blockd := []string{"null", "ringbuf", "stdio", "socket", "file", "memory"}
	for _, b := range blockd {
		if !slices.Contains(got, b) {
			t.Errorf("query-chardev-backends lacks %s: %v", b, got)
		}
	}
	if !isQSD() && !slices.Equal(got, blockd) {
		t.Errorf("query-chardev-backends = %v, want %v", got, blockd)
	}
}
