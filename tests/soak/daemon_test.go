package soak

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Sizes of the images: the exported disk the NBD writer writes, and each
// layer of the job driver's chain.
const (
	diskSize  = 64 << 20
	chainSize = 8 << 20
)

// daemon is blockd or qsd running with the disk exported over NBD.
type daemon struct {
	kind    string
	dir     string
	cmd     *exec.Cmd
	done    chan error
	qmp     []string // monitor sockets: one for blockd, one per client for qsd
	nbd     string   // NBD server socket
	metrics string   // blockd's metrics socket
}

// startDaemon starts a daemon with the disk exported. blockd gets one
// monitor that every client shares; qsd, which serves one client per
// monitor, gets clients+1 (the last is the job driver's).
func startDaemon(t *testing.T, kind, bin string, clients int) *daemon {
	dir, err := os.MkdirTemp("", "soak")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	d := &daemon{kind: kind, dir: dir, done: make(chan error, 1), nbd: filepath.Join(dir, "nbd.sock")}
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", d.path("disk.qcow2"), strconv.Itoa(diskSize))
	monitors := clients + 1
	if kind == "blockd" {
		monitors = 1
	}
	var args []string
	for i := range monitors {
		sock := filepath.Join(dir, fmt.Sprintf("qmp%d.sock", i))
		d.qmp = append(d.qmp, sock)
		args = append(args, "--chardev", fmt.Sprintf("socket,id=m%d,path=%s,server=on,wait=off", i, sock),
			"--monitor", fmt.Sprintf("chardev=m%d", i))
	}
	args = append(args,
		"--blockdev", "driver=qcow2,node-name=disk,file.driver=file,file.filename="+d.path("disk.qcow2"),
		"--nbd-server", "addr.type=unix,addr.path="+d.nbd,
		"--export", "type=nbd,id=e0,node-name=disk,writable=on")
	if kind == "blockd" {
		d.metrics = filepath.Join(dir, "metrics.sock")
		args = append(args, "--metrics", "unix:"+d.metrics, "--log-level", "warn")
	}
	d.cmd = exec.Command(bin, args...)
	log, err := os.Create(d.path("daemon.log"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		log.Close()
		if t.Failed() {
			t.Logf("%s (%v) log:\n%s", kind, d.cmd.ProcessState, d.log())
		}
	})
	d.cmd.Stdout, d.cmd.Stderr = log, log
	if err := d.cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", bin, err)
	}
	go func() { d.done <- d.cmd.Wait() }()
	t.Cleanup(d.kill)
	for _, s := range append(d.qmp, d.nbd) {
		if err := waitSocket(s, d.done); err != nil {
			t.Fatalf("%s did not come up: %v\n%s", kind, err, d.log())
		}
	}
	return d
}

func (d *daemon) path(name string) string { return filepath.Join(d.dir, name) }

func (d *daemon) pid() int { return d.cmd.Process.Pid }

// monitorFor is the socket client i uses; i == clients is the job
// driver.
func (d *daemon) monitorFor(i int) string {
	if len(d.qmp) == 1 {
		return d.qmp[0]
	}
	return d.qmp[i]
}

func (d *daemon) log() string {
	b, _ := os.ReadFile(d.path("daemon.log"))
	return string(b)
}

// quit asks the daemon to exit and waits until it has: both close, and
// so flush, every image on the way out; the checks read them afterwards.
func (d *daemon) quit(t *testing.T) {
	m, err := dial(d.qmp[len(d.qmp)-1], "quit", &counts{}, false)
	if err != nil {
		t.Fatalf("connecting to quit %s: %v", d.kind, err)
	}
	defer m.close()
	// quit's reply may be lost when the daemon exits first: the exit is
	// what counts.
	go m.cmd("quit", nil)
	select {
	case err := <-d.done:
		if err != nil {
			t.Errorf("%s exited: %v\n%s", d.kind, err, d.log())
		}
	case <-time.After(60 * time.Second):
		t.Fatalf("%s did not exit within 60s of quit", d.kind)
	}
}

func (d *daemon) kill() {
	if d.cmd.ProcessState == nil {
		d.cmd.Process.Kill()
		<-d.done
	}
}

// waitSocket polls for a socket: nothing announces it before a
// connection works.
func waitSocket(path string, done <-chan error) error {
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if c, err := net.Dial("unix", path); err == nil {
			c.Close()
			return nil
		}
		select {
		case err := <-done:
			return fmt.Errorf("daemon exited: %v", err)
		case <-time.After(20 * time.Millisecond):
		}
	}
	return fmt.Errorf("timed out waiting for %s", path)
}

// run runs a tool; failure fails the test.
func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}
