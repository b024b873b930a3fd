package main

import (
	"errors"
	"fmt"
	"net"

	"github.com/blockd/blockd/pkg/blockdev"
	"github.com/blockd/blockd/pkg/chardev"
	"github.com/blockd/blockd/pkg/qmp"
)

// chardev parses --chardev: socket (a UNIX path, or host and port for
// TCP, always a server) or stdio, and registers it, so that
// query-chardev lists it and a monitor can use it.
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
		return d.bd.Chardevs.AddStdio(id)
	case "socket":
	default:
		return fmt.Errorf("only 'socket' and 'stdio' character devices are supported")
	}
	if v, ok := kv["server"]; ok && v != "on" && v != "true" && v != "yes" {
		return fmt.Errorf("only server sockets are supported")
	}
	if d.bd.Chardevs.Get(id) != nil {
		return fmt.Errorf("Chardev with id '%s' already exists", id)
	}
	path, _ := kv["path"].(string)
	host, _ := kv["host"].(string)
	port, _ := kv["port"].(string)
	var l net.Listener
	switch {
	case path != "" && host == "" && port == "":
		l, err = qmp.Listen(path)
	case path == "" && port != "":
		l, err = net.Listen("tcp", net.JoinHostPort(host, port))
	default:
		return fmt.Errorf("a socket chardev needs path= (UNIX) or host= and port= (TCP)")
	}
	if err != nil {
		return err
	}
	if err := d.bd.Chardevs.AddListener(id, l); err != nil {
		l.Close()
		return err
	}
	return nil
}

// monitor parses --monitor and serves QMP on its chardev, which becomes
// the chardev's frontend (chardev-remove then refuses it as busy).
func (d *daemon) monitor(s string) error {
	kv, err := blockdev.ParseKeyval(s, "chardev")
	if err != nil {
		return err
	}
	id, _ := kv["chardev"].(string)
	cd := d.bd.Chardevs.Get(id)
	if cd == nil {
		return fmt.Errorf("chardev '%s' not found", id)
	}
	if m, ok := kv["mode"]; ok && m != "control" {
		return fmt.Errorf("only mode=control monitors are supported")
	}
	return d.serveChardev(cd, kv["pretty"] == "on")
}

// serveChardev serves QMP on a chardev.
func (d *daemon) serveChardev(cd *chardev.Device, pretty bool) error {
	l, err := cd.Attach()
	if err != nil {
		return err
	}
	if l == nil {
		d.serveStdio(pretty)
		return nil
	}
	d.serveMonitor(l, l.Addr().String(), pretty)
	return nil
}

// qmpMonitor serves QMP on a UNIX socket at path (--qmp), a shorthand
// for --chardev and --monitor whose chardev gets a generated id.
func (d *daemon) qmpMonitor(path string) error {
	id := fmt.Sprintf("#qmp%d", d.qmpCount)
	d.qmpCount++
	l, err := qmp.Listen(path)
	if err != nil {
		return err
	}
	if err := d.bd.Chardevs.AddListener(id, l); err != nil {
		l.Close()
		return err
	}
	return d.serveChardev(d.bd.Chardevs.Get(id), false)
}

func (d *daemon) serveMonitor(l net.Listener, where string, pretty bool) {
	d.monitors = append(d.monitors, l)
	d.afterSetup = append(d.afterSetup, func() {
		go func() {
			if err := d.q.ServeMonitor(l, qmp.MonitorOptions{Pretty: pretty}); err != nil && !errors.Is(err, qmp.ErrServerClosed) {
				d.log.WithError(err).Warn("qmp: serve")
			}
		}()
	})
	d.log.WithField("socket", where).Info("QMP monitor listening")
}

// serveStdio serves QMP on stdin and stdout; when stdin closes, the
// daemon shuts down as on quit.
func (d *daemon) serveStdio(pretty bool) {
	d.afterSetup = append(d.afterSetup, func() {
		done := d.q.ServeConn(newStdioConn(), qmp.MonitorOptions{Pretty: pretty})
		go func() {
			<-done
			close(d.stdioDone)
		}()
	})
}
