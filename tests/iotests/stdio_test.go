package iotests

import (
	"bufio"
	"encoding/json"
	"io"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// stdioDaemon is a daemon whose only monitor is its stdin and stdout.
type stdioDaemon struct {
	cmd  *exec.Cmd
	in   io.WriteCloser
	out  *bufio.Scanner
	done chan error
}

func startStdio(t *testing.T, monitor string) *stdioDaemon {
	t.Helper()
	cmd := exec.Command(daemonBin(), "--chardev", "stdio,id=s0", "--monitor", monitor)
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	d := &stdioDaemon{cmd: cmd, in: in, out: bufio.NewScanner(out), done: make(chan error, 1)}
	go func() { d.done <- cmd.Wait() }()
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			<-d.done
		}
	})
	return d
}

// send writes one command and returns the next line that is not an
// event.
func (d *stdioDaemon) send(t *testing.T, cmd string) map[string]any {
	t.Helper()
	if _, err := io.WriteString(d.in, cmd+"\n"); err != nil {
		t.Fatal(err)
	}
	for d.out.Scan() {
		var m map[string]any
		if err := json.Unmarshal(d.out.Bytes(), &m); err != nil {
			t.Fatalf("reply %q: %v", d.out.Text(), err)
		}
		if _, ok := m["event"]; !ok {
			return m
		}
	}
	t.Fatalf("no reply to %s: %v", cmd, d.out.Err())
	return nil
}

func (d *stdioDaemon) wait(t *testing.T) error {
	t.Helper()
	select {
	case err := <-d.done:
		return err
	case <-time.After(30 * time.Second):
		t.Fatal("the daemon did not exit")
		return nil
	}
}

// TestStdioMonitor drives the daemon through a monitor on its stdin and
// stdout, as QEMU's own tests drive qsd: greeting, commands, errors and
// quit.
func TestStdioMonitor(t *testing.T) {
	d := startStdio(t, "chardev=s0")
	if !d.out.Scan() || !strings.HasPrefix(d.out.Text(), `{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}`) {
		t.Fatalf("greeting: %q", d.out.Text())
	}
	if r := d.send(t, `{"execute": "qmp_capabilities"}`); r["return"] == nil {
		t.Errorf("qmp_capabilities: %v", r)
	}
	if r := d.send(t, `{"execute": "blockdev-add", "arguments": {"driver": "null-co", "node-name": "n0"}, "id": 7}`); r["return"] == nil || r["id"] != float64(7) {
		t.Errorf("blockdev-add: %v", r)
	}
	r := d.send(t, `{"execute": "blockdev-add", "arguments": {"driver": "null-co", "node-name": "n0"}}`)
	if e, _ := r["error"].(map[string]any); e["class"] != "GenericError" || e["desc"] != "Duplicate nodes with node-name='n0'" {
		t.Errorf("duplicate blockdev-add: %v", r)
	}
	if r := d.send(t, `{"execute": "quit"}`); r["return"] == nil {
		t.Errorf("quit: %v", r)
	}
	if err := d.wait(t); err != nil {
		t.Errorf("exit after quit: %v", err)
	}
}

// TestStdioMonitorEOF: a daemon whose stdio monitor's client closes
// stdin shuts down, so a script that dies leaves no daemon behind.
func TestStdioMonitorEOF(t *testing.T) {
	skipOnQSD(t, "qsd 7.2 keeps running after its stdio monitor's stdin closes")
	d := startStdio(t, "chardev=s0,pretty=on")
	d.in.Close()
	if err := d.wait(t); err != nil {
		t.Errorf("exit after stdin closed: %v", err)
	}
}

// TestTCPMonitor: a monitor on a TCP chardev (host and port), as qsd
// takes it on its command line.
func TestTCPMonitor(t *testing.T) {
	port := freePort(t)
	d := start(t, "--chardev", "socket,id=t0,host=127.0.0.1,port="+port+",server=on,wait=off", "--monitor", "chardev=t0")
	c, err := dialRawTCP("127.0.0.1:" + port)
	if err != nil {
		t.Fatalf("connecting to the TCP monitor: %v\n%s", err, d.Log())
	}
	defer c.close()
	if _, qerr := c.call("qmp_capabilities", nil); qerr != nil {
		t.Fatal(qerr)
	}
	if _, qerr := c.call("blockdev-add", map[string]any{"driver": "null-co", "node-name": "n0"}); qerr != nil {
		t.Fatal(qerr)
	}
	if _, ok := namedNodes(d, true)["n0"]; !ok {
		t.Error("a node added over the TCP monitor is not in the graph")
	}
}
