package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"time"

	"github.com/blockd/blockd/bench/internal/benchutil"
)

type daemon struct {
	name string
	cmd  *exec.Cmd
	conn net.Conn
	dec  *json.Decoder
	ev   []map[string]any // events not yet waited for
}

func startDaemon(name, dir string) *daemon {
	sock := filepath.Join(dir, name+"-qmp.sock")
	os.Remove(sock)
	bin := *blockdBin
	var args []string
	if name == "qsd" {
		bin = "qemu-storage-daemon"
	} else {
		args = append(args, "--log-level", "warn")
	}
	args = append(args,
		"--chardev", "socket,id=m0,path="+sock+",server=on,wait=off",
		"--monitor", "chardev=m0")
	cmd := exec.Command(bin, args...)
	cmd.Stderr = os.Stderr
	if name == "qsd" && *qsdHeap {
		// qsd copies through 512 KiB bounce buffers; when glibc hands
		// them out as fresh mmaps every copy faults in its pages (one
		// fault per 4 KiB), which made qsd 6-9x slower in some runs and
		// not in others. A fixed mmap threshold above that size keeps
		// them on the heap: qsd's best case, every run.
		cmd.Env = append(os.Environ(), "GLIBC_TUNABLES=glibc.malloc.mmap_threshold=4194304:glibc.malloc.trim_threshold=1073741824")
	}
	benchutil.Check(cmd.Start())
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
	d := &daemon{name: name, cmd: cmd, conn: conn, dec: json.NewDecoder(bufio.NewReader(conn))}
	var greeting map[string]any
	benchutil.Check(d.dec.Decode(&greeting))
	d.cmd1("qmp_capabilities", nil)
	return d
}

// cmd1 runs one QMP command and panics if it fails; events that arrive
// meanwhile are kept for waitEvent.
func (d *daemon) cmd1(name string, args any) {
	req := map[string]any{"execute": name}
	if args != nil {
		req["arguments"] = args
	}
	b, err := json.Marshal(req)
	benchutil.Check(err)
	_, err = d.conn.Write(append(b, '\n'))
	benchutil.Check(err)
	for {
		var m map[string]any
		benchutil.Check(d.dec.Decode(&m))
		switch {
		case m["event"] != nil:
			d.ev = append(d.ev, m)
		case m["error"] != nil:
			panic(fmt.Sprintf("%s: %s %s: %v", d.name, name, b, m["error"]))
		default:
			return
		}
	}
}

// waitEvent returns the name and data of the next event called one of
// names.
func (d *daemon) waitEvent(names ...string) (string, map[string]any) {
	for {
		var m map[string]any
		if len(d.ev) > 0 {
			m, d.ev = d.ev[0], d.ev[1:]
		} else {
			benchutil.Check(d.dec.Decode(&m))
		}
		name, _ := m["event"].(string)
		if slices.Contains(names, name) {
			data, _ := m["data"].(map[string]any)
			return name, data
		}
	}
}

// quit asks the daemon to exit and waits until it has (both close, and
// so flush, their images on the way out).
func (d *daemon) quit() {
	req := []byte(`{"execute": "quit"}` + "\n")
	_, err := d.conn.Write(req)
	benchutil.Check(err)
	io.Copy(io.Discard, d.conn) // the reply, then EOF when it exits
	d.conn.Close()
	if err := d.cmd.Wait(); err != nil {
		panic(fmt.Sprintf("%s: %v", d.name, err))
	}
}

// kill stops a daemon that has not exited yet.
func (d *daemon) kill() {
	if d.cmd.ProcessState == nil {
		d.cmd.Process.Kill()
		d.cmd.Wait()
	}
}
