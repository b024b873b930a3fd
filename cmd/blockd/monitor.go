package main

import (
	"errors"
	"fmt"
	"net"

	"github.com/blockd/blockd/pkg/blockdev"
	"github.com/blockd/blockd/pkg/qmp"
)

// A chardev is where a monitor talks, as --chardev gives it.
type chardev struct {
	kind string // "unix", "tcp" or "stdio"
	addr string // the socket path, or host:port
}

// chardev parses --chardev: socket (a UNIX path, or host and port for
// TCP, always a server) or stdio.
func (d *daemon) chardev(s string) error {
	kv, err := blockdev.ParseKeyval(s, "backend")
	if err != nil {
		return err
	}
	id, _ := kv["id"].(string)
	if id == "" {
		return fmt.Errorf("a chardev needs id=")
	}
	switch kv["backend"] {
	case "stdio":
		d.chardevs[id] = chardev{kind: "stdio"}
		return nil
	case "socket":
	default:
		return fmt.Errorf("only 'socket' and 'stdio' character devices are supported")
	}
	if v, ok := kv["server"]; ok && v != "on" && v != "true" && v != "yes" {
		return fmt.Errorf("only server sockets are supported")
	}
	path, _ := kv["path"].(string)
	host, _ := kv["host"].(string)
	port, _ := kv["port"].(string)
	switch {
	case path != "" && host == "" && port == "":
		d.chardevs[id] = chardev{kind: "unix", addr: path}
	case path == "" && port != "":
		d.chardevs[id] = chardev{kind: "tcp", addr: net.JoinHostPort(host, port)}
	default:
		return fmt.Errorf("a socket chardev needs path= (UNIX) or host= and port= (TCP)")
	}
	return nil
}

// monitor parses --monitor and serves QMP on its chardev.
func (d *daemon) monitor(s string) error {
	kv, err := blockdev.ParseKeyval(s, "chardev")
	if err != nil {
		return err
	}
	id, _ := kv["chardev"].(string)
	cd, ok := d.chardevs[id]
	if !ok {
		return fmt.Errorf("chardev '%s' not found", id)
	}
	if m, ok := kv["mode"]; ok && m != "control" {
		return fmt.Errorf("only mode=control monitors are supported")
	}
	pretty := kv["pretty"] == "on"
	delete(d.chardevs, id)
	switch cd.kind {
	case "stdio":
		d.serveStdio(pretty)
		return nil
	case "tcp":
		l, err := net.Listen("tcp", cd.addr)
		if err != nil {
			return err
		}
		d.serveMonitor(l, cd.addr, pretty)
		return nil
	}
	return d.listen(cd.addr, pretty)
}

// listen serves QMP on a UNIX socket at path (--qmp, or a socket
// chardev).
func (d *daemon) listen(path string, pretty bool) error {
	l, err := qmp.Listen(path)
	if err != nil {
		return err
	}
	d.serveMonitor(l, path, pretty)
	return nil
}

func (d *daemon) serveMonitor(l net.Listener, where string, pretty bool) {
	d.monitors = append(d.monitors, l)
	go func() {
		if err := d.q.ServeMonitor(l, qmp.MonitorOptions{Pretty: pretty}); err != nil && !errors.Is(err, qmp.ErrServerClosed) {
			d.log.WithError(err).Warn("qmp: serve")
		}
	}()
	d.log.WithField("socket", where).Info("QMP monitor listening")
}

// serveStdio serves QMP on stdin and stdout; when stdin closes, the
// daemon shuts down as on quit.
func (d *daemon) serveStdio(pretty bool) {
	done := d.q.ServeConn(newStdioConn(), qmp.MonitorOptions{Pretty: pretty})
	go func() {
		<-done
		close(d.stdioDone)
	}()
}
