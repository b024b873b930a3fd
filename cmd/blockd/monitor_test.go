package main

import (
	"bufio"
	"errors"
	"io"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
)

// TestMonitorGreetsAfterSetup: a client that connects while the command
// line is still being set up gets its greeting only once every option is
// done, so its first query sees every --blockdev.
func TestMonitorGreetsAfterSetup(t *testing.T) {
	log := logrus.New()
	log.SetOutput(io.Discard)
	d := newDaemon(log, false)
	defer d.shutdown()
	sock := t.TempDir() + "/qmp.sock"
	if err := d.qmpMonitor(sock); err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r := bufio.NewReader(c)
	c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	if line, err := r.ReadString('\n'); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("greeting before set-up ended: %q, %v", line, err)
	}
	if err := d.setup(nil); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	line, err := r.ReadString('\n')
	if err != nil || !strings.Contains(line, `"QMP"`) {
		t.Fatalf("greeting after set-up: %q, %v", line, err)
	}
}
