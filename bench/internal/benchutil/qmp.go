package benchutil

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os/exec"
	"slices"
	"time"
)

// Daemon is a started blockd or qemu-storage-daemon and a QMP connection
// to it, for the benchmarks: every failure panics (a benchmark has
// nothing to recover), and a daemon that stops answering for two minutes
// fails the run rather than hang it.
type Daemon struct {
	Name string
	Cmd  *exec.Cmd
	conn net.Conn
	dec  *json.Decoder
	ev   []map[string]any // events not yet waited for
}

// Connect dials the QMP socket of cmd, which was just started, within
// ten seconds, and negotiates capabilities.
func Connect(name string, cmd *exec.Cmd, sock string) *Daemon {
	var conn net.Conn
	deadline := time.Now().Add(10 * time.Second)
	for {
		var err error
		if conn, err = net.Dial("unix", sock); err == nil {
			break
		}
		if time.Now().After(deadline) {
			panic(name + " did not start")
		}
		time.Sleep(10 * time.Millisecond)
	}
	d := &Daemon{Name: name, Cmd: cmd, conn: conn, dec: json.NewDecoder(bufio.NewReader(conn))}
	var greeting map[string]any
	d.read(&greeting)
	d.Cmd1("qmp_capabilities", nil)
	return d
}

func (d *Daemon) read(m *map[string]any) {
	Check(d.conn.SetReadDeadline(time.Now().Add(2 * time.Minute)))
	Check(d.dec.Decode(m))
}

// Cmd1 runs one QMP command and panics if it fails; events that arrive
// meanwhile are kept for WaitEvent.
func (d *Daemon) Cmd1(name string, args any) {
	req := map[string]any{"execute": name}
	if args != nil {
		req["arguments"] = args
	}
	b, err := json.Marshal(req)
	Check(err)
	_, err = d.conn.Write(append(b, '\n'))
	Check(err)
	for {
		var m map[string]any
		d.read(&m)
		switch {
		case m["event"] != nil:
			d.ev = append(d.ev, m)
		case m["error"] != nil:
			panic(fmt.Sprintf("%s: %s %s: %v", d.Name, name, b, m["error"]))
		default:
			return
		}
	}
}

// WaitEvent returns the name and data of the next event called one of
// names.
func (d *Daemon) WaitEvent(names ...string) (string, map[string]any) {
	for {
		var m map[string]any
		if len(d.ev) > 0 {
			m, d.ev = d.ev[0], d.ev[1:]
		} else {
			d.read(&m)
		}
		name, _ := m["event"].(string)
		if slices.Contains(names, name) {
			data, _ := m["data"].(map[string]any)
			return name, data
		}
	}
}

// Quit asks the daemon to exit and waits until it has (both daemons
// close, and so flush, their images on the way out).
func (d *Daemon) Quit() {
	_, err := d.conn.Write([]byte(`{"execute": "quit"}` + "\n"))
	Check(err)
	io.Copy(io.Discard, d.conn) // the reply, then EOF when it exits
	d.conn.Close()
	if err := d.Cmd.Wait(); err != nil {
		panic(fmt.Sprintf("%s: %v", d.Name, err))
	}
}

// Kill stops a daemon that has not exited yet.
func (d *Daemon) Kill() {
	if d.Cmd.ProcessState == nil {
		d.Cmd.Process.Kill()
		d.Cmd.Wait()
	}
}
