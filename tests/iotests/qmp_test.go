package iotests

import (
	"bufio"
	"encoding/json"
	"net"
	"strings"
	"testing"
	"time"
)

// TestProtocol checks negotiation, ids and errors of the QMP protocol on a
// fresh connection, line by line, against what qsd 7.2 sends.
func TestProtocol(t *testing.T) {
	d := start(t)
	c, err := net.Dial("unix", d.Path("qmp1.sock"))
	if err != nil {
		t.Fatal(err)
	}
	// qsd serves one client per monitor socket: free qmp1 for this test.
	d.raw.close()
	defer c.Close()
	br := bufio.NewReader(c)
	c.SetDeadline(time.Now().Add(30 * time.Second))
	greeting, err := br.ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(greeting, `{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": `) ||
		!strings.HasSuffix(greeting, `"capabilities": ["oob"]}}`+"\r\n") {
		t.Errorf("greeting = %q", greeting)
	}
	tests := []struct{ send, want string }{
		{`{"execute": "query-version", "id": "pre-1"}`, `{"id": "pre-1", "error": {"class": "CommandNotFound", "desc": "Expecting capabilities negotiation with 'qmp_capabilities'"}}`},
		{`{"execute": "quit", "id": 7}`, `{"id": 7, "error": {"class": "CommandNotFound", "desc": "Expecting capabilities negotiation with 'qmp_capabilities'"}}`},
		{`{"execute": "qmp_capabilities", "arguments": {"enable": "oob"}, "id": 2}`, `{"id": 2, "error": {"class": "GenericError", "desc": "Invalid parameter type for 'enable', expected: array"}}`},
		{`{"execute": "qmp_capabilities", "id": {"x": [1, 2]}}`, `{"return": {}, "id": {"x": [1, 2]}}`},
		{`{"execute": "qmp_capabilities", "id": "again"}`, `{"id": "again", "error": {"class": "CommandNotFound", "desc": "Capabilities negotiation is already complete, command ignored"}}`},
		{`{"execute": "query-status"}`, `{"error": {"class": "CommandNotFound", "desc": "The command query-status has not been found"}}`},
		{`{"execute": "query-version", "id": "x", "bogus": 1}`, `{"id": "x", "error": {"class": "GenericError", "desc": "QMP input member 'bogus' is unexpected"}}`},
		{`{"execute": "query-version", "arguments": {"a":1}, "id": "extra"}`, `{"id": "extra", "error": {"class": "GenericError", "desc": "Parameter 'a' is unexpected"}}`},
		{`{"execute": "query-version", "arguments": [], "id": "argsarray"}`, `{"id": "argsarray", "error": {"class": "GenericError", "desc": "QMP input member 'arguments' must be an object"}}`},
		{`{"execute": 5, "id": "numexec"}`, `{"id": "numexec", "error": {"class": "GenericError", "desc": "QMP input member 'execute' must be a string"}}`},
		{`{"id": "noexec"}`, `{"id": "noexec", "error": {"class": "GenericError", "desc": "QMP input lacks member 'execute'"}}`},
		{`[1,2]`, `{"error": {"class": "GenericError", "desc": "QMP input must be a JSON object"}}`},
		{`{'execute': 'blockdev-del', 'arguments': {'node-name': 'nope'}, 'id': 'sq'}`, `{"id": "sq", "error": {"class": "GenericError", "desc": "Failed to find node with node-name='nope'"}}`},
		{`{"execute": "blockdev-add", "id": "miss"}`, `{"id": "miss", "error": {"class": "GenericError", "desc": "Parameter 'driver' is missing"}}`},
		{`{"execute": "blockdev-del", "arguments": {"node-name": 5}, "id": "wt"}`, `{"id": "wt", "error": {"class": "GenericError", "desc": "Invalid parameter type for 'node-name', expected: string"}}`},
		{`{"execute": "blockdev-del", "arguments": {"node-name": "x", "extra": 1}, "id": "ex"}`, `{"id": "ex", "error": {"class": "GenericError", "desc": "Parameter 'extra' is unexpected"}}`},
		{`{"execute": "block-job-set-speed", "arguments": {"device": "nojob", "speed": 100}, "id": "nojob"}`, `{"id": "nojob", "error": {"class": "DeviceNotActive", "desc": "Block job 'nojob' not found"}}`},
		{`{"execute": "block-job-set-speed", "arguments": {"device": "nojob", "speed": 1.5}, "id": "float"}`, `{"id": "float", "error": {"class": "GenericError", "desc": "Invalid parameter type for 'speed', expected: integer"}}`},
		{`{"execute": "query-named-block-nodes", "arguments": {"flat": null}, "id": "nullarg"}`, `{"id": "nullarg", "error": {"class": "GenericError", "desc": "Invalid parameter type for 'flat', expected: boolean"}}`},
		{`{"execute": "query-named-block-nodes", "id": 1e3}`, `{"return": [], "id": 1000}`},
	}
	for _, tt := range tests {
		if _, err := c.Write([]byte(tt.send + "\n")); err != nil {
			t.Fatal(err)
		}
		got, err := br.ReadString('\n')
		if err != nil {
			t.Fatalf("after %s: %v", tt.send, err)
		}
		if got != tt.want+"\r\n" {
			t.Errorf("sent %s\n got %s\nwant %s", tt.send, strings.TrimSpace(got), tt.want)
		}
	}
	// A request split over writes and two in one write.
	c.Write([]byte(`{"execute": "query-named-block-nodes",`))
	c.Write([]byte("\n" + `"id": 1} {"execute": "query-named-block-nodes", "id": 2}` + "\n"))
	for _, want := range []string{`{"return": [], "id": 1}`, `{"return": [], "id": 2}`} {
		got, _ := br.ReadString('\n')
		if strings.TrimSpace(got) != want {
			t.Errorf("pipelined: got %s, want %s", strings.TrimSpace(got), want)
		}
	}
}

// TestQueryVersionAndCommands checks the two introspection commands every
// client starts with.
func TestQueryVersionAndCommands(t *testing.T) {
	d := start(t)
	var v struct {
		QEMU struct{ Major, Minor, Micro int } `json:"qemu"`
	}
	d.CmdInto("query-version", nil, &v)
	if v.QEMU.Major != 7 || v.QEMU.Minor != 2 {
		t.Errorf("query-version = %+v, want 7.2", v)
	}
	var cmds []struct{ Name string }
	d.CmdInto("query-commands", nil, &cmds)
	have := map[string]bool{}
	for _, c := range cmds {
		have[c.Name] = true
	}
	for _, want := range []string{"qmp_capabilities", "query-version", "query-commands", "quit",
		"blockdev-add", "blockdev-del", "query-named-block-nodes", "query-block", "query-blockstats",
		"x-debug-query-block-graph", "block_resize", "blockdev-create", "query-jobs", "job-dismiss",
		"nbd-server-start", "nbd-server-stop", "block-export-add", "block-export-del", "query-block-exports"} {
		if !have[want] {
			t.Errorf("query-commands lacks %s", want)
		}
	}
}

// TestQuit checks that quit answers, then the daemon exits with status 0,
// taking its exports down with BLOCK_EXPORT_DELETED before the reply.
func TestQuit(t *testing.T) {
	d := start(t)
	d.Cmd("blockdev-add", map[string]any{"driver": "null-co", "node-name": "n"})
	d.Cmd("nbd-server-start", map[string]any{"addr": map[string]any{"type": "unix", "data": map[string]any{"path": d.Path("nbd.sock")}}})
	d.Cmd("block-export-add", map[string]any{"type": "nbd", "id": "e0", "node-name": "n"})
	d.Quit()
	ev := d.Events()
	if len(ev) != 1 || ev[0].Event != "BLOCK_EXPORT_DELETED" || ev[0].Data["id"] != "e0" {
		b, _ := json.Marshal(ev)
		t.Errorf("events before quit's reply: %s, want one BLOCK_EXPORT_DELETED for e0", b)
	}
}
