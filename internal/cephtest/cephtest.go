// Package cephtest starts a throw-away one-node Ceph cluster for tests
// and benchmarks: one monitor on a loopback port of its own, one OSD on
// memstore, no manager, no authentication, everything inside one
// directory. From nothing to a usable "rbd" pool takes about two seconds.
//
// It needs the Debian packages ceph-mon, ceph-osd and ceph-common; Start
// returns an error wrapping ErrMissing when a program is not installed,
// so that callers can skip with the reason.
package cephtest

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// ErrMissing: a Ceph program the cluster needs is not installed.
var ErrMissing = errors.New("ceph programs missing")

// Pool is the replicated pool Start creates and initialises for rbd.
const Pool = "rbd"

// Cluster is a running one-node cluster.
type Cluster struct {
	Dir  string // everything the cluster keeps is in here
	Conf string // its ceph.conf; pass it as conf= to clients
	Port int    // the monitor's loopback port

	storeBytes int64
	mon, osd   *exec.Cmd
}

// Available reports why a cluster cannot start here ("" if it can).
func Available() string {
	for _, p := range []string{"ceph-mon", "ceph-osd", "ceph", "rbd", "monmaptool"} {
		if _, err := exec.LookPath(p); err != nil {
			return p + " is not installed (Debian packages ceph-mon, ceph-osd, ceph-common; make deps installs them)"
		}
	}
	return ""
}

// Start makes a cluster in dir (which must exist and be empty) and waits
// until the pool is usable. On error nothing is left running. The OSD
// keeps up to 1 GiB, in memory.
func Start(dir string) (*Cluster, error) { return StartSized(dir, 1<<30) }

// StartSized is Start with an OSD that keeps up to storeBytes.
func StartSized(dir string, storeBytes int64) (*Cluster, error) {
	if why := Available(); why != "" {
		return nil, fmt.Errorf("%w: %s", ErrMissing, why)
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	c := &Cluster{Dir: dir, Conf: filepath.Join(dir, "ceph.conf"), Port: port, storeBytes: storeBytes}
	if err := c.start(); err != nil {
		c.Stop()
		return nil, err
	}
	return c, nil
}

func (c *Cluster) start() error {
	fsid := uuid()
	if err := os.WriteFile(c.Conf, []byte(c.conf(fsid)), 0o644); err != nil {
		return err
	}
	for _, d := range []string{"run", "log", "crash", "mon", "osd"} {
		if err := os.MkdirAll(filepath.Join(c.Dir, d), 0o755); err != nil {
			return err
		}
	}
	monmap := filepath.Join(c.Dir, "monmap")
	if _, err := c.Run(10*time.Second, "monmaptool", "--create", "--fsid", fsid,
		"--addv", "a", fmt.Sprintf("[v2:127.0.0.1:%d]", c.Port), monmap); err != nil {
		return err
	}
	if _, err := c.Run(20*time.Second, "ceph-mon", "--mkfs", "-i", "a", "--monmap", monmap); err != nil {
		return err
	}
	var err error
	if c.mon, err = c.daemon("mon", "ceph-mon", "-i", "a", "-f"); err != nil {
		return err
	}
	if err := poll(20*time.Second, func() (bool, error) {
		_, err := c.Run(5*time.Second, "ceph", "--connect-timeout", "2", "mon", "stat")
		return err == nil, nil
	}); err != nil {
		return fmt.Errorf("the monitor did not answer: %v (see %s)", err, filepath.Join(c.Dir, "log"))
	}
	osdUUID := uuid()
	id, err := c.Run(20*time.Second, "ceph", "--connect-timeout", "5", "osd", "new", osdUUID)
	if err != nil {
		return err
	}
	id = strings.TrimSpace(id)
	if err := os.MkdirAll(filepath.Join(c.Dir, "osd", id), 0o755); err != nil {
		return err
	}
	if _, err := c.Run(30*time.Second, "ceph-osd", "-i", id, "--mkfs", "--osd-uuid", osdUUID); err != nil {
		return err
	}
	if c.osd, err = c.daemon("osd", "ceph-osd", "-i", id, "-f"); err != nil {
		return err
	}
	if err := poll(30*time.Second, func() (bool, error) {
		out, err := c.Run(5*time.Second, "ceph", "--connect-timeout", "2", "osd", "stat")
		return err == nil && strings.Contains(out, " 1 up"), nil
	}); err != nil {
		return fmt.Errorf("the OSD did not come up: %v (see %s)", err, filepath.Join(c.Dir, "log"))
	}
	if _, err := c.Run(30*time.Second, "ceph", "--connect-timeout", "5", "osd", "pool", "create", Pool, "8", "8", "replicated", "--size", "1"); err != nil {
		return err
	}
	if _, err := c.Run(60*time.Second, "rbd", "pool", "init", Pool); err != nil {
		return err
	}
	return nil
}

// conf is the cluster's ceph.conf.
func (c *Cluster) conf(fsid string) string {
	d := c.Dir
	return fmt.Sprintf(`[global]
fsid = %s
mon host = v2:127.0.0.1:%d
public addr = 127.0.0.1
cluster addr = 127.0.0.1
ms bind msgr1 = false
auth cluster required = none
auth service required = none
auth client required = none
keyring = /dev/null
run dir = %s/run
admin socket = %s/run/$cluster-$name.asok
log file = %s/log/$cluster-$name.log
crash dir = %s/crash
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon warn on pool no redundancy = false
mon osd prime pg temp = false

[mon]
paxos propose interval = 0.1
mon data = %s/mon/$id

[osd]
osd data = %s/osd/$id
osd objectstore = memstore
memstore device bytes = %d
`, fsid, c.Port, d, d, d, d, d, d, c.storeBytes)
}

// Run runs a Ceph program against the cluster and returns its standard
// output; the error carries standard error.
func (c *Cluster) Run(timeout time.Duration, prog string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, prog, args...)
	cmd.Env = append(os.Environ(), "CEPH_CONF="+c.Conf)
	cmd.Dir = c.Dir
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("timed out after %v", timeout)
		}
		msg := strings.TrimSpace(errb.String())
		if len(msg) > 600 {
			msg = msg[:600] + "..."
		}
		return out.String(), fmt.Errorf("%s %s: %v: %s", prog, strings.Join(args, " "), err, msg)
	}
	return out.String(), nil
}

// RBD runs the rbd tool against the cluster.
func (c *Cluster) RBD(args ...string) (string, error) {
	return c.Run(60*time.Second, "rbd", args...)
}

// daemon starts a cluster daemon in the foreground of its own process,
// its output into a file (never the caller's pipes).
func (c *Cluster) daemon(name, prog string, args ...string) (*exec.Cmd, error) {
	f, err := os.Create(filepath.Join(c.Dir, "log", name+".out"))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	cmd := exec.Command(prog, args...)
	cmd.Env = append(os.Environ(), "CEPH_CONF="+c.Conf)
	cmd.Dir = c.Dir
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	return cmd, nil
}

// Stop ends the cluster's daemons (by their PIDs: SIGTERM, then SIGKILL
// after ten seconds) and waits for them. The directory stays.
func (c *Cluster) Stop() {
	for _, cmd := range []*exec.Cmd{c.osd, c.mon} {
		if cmd == nil || cmd.Process == nil {
			continue
		}
		_ = cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	}
	c.osd, c.mon = nil, nil
}

// StopOSD ends the OSD only: I/O to the cluster then hangs, as it does
// when a real cluster loses its storage.
func (c *Cluster) StopOSD() {
	if c.osd == nil || c.osd.Process == nil {
		return
	}
	_ = c.osd.Process.Kill()
	_ = c.osd.Wait()
	c.osd = nil
}

// Env is the environment entry that points Ceph tools at the cluster.
func (c *Cluster) Env() string { return "CEPH_CONF=" + c.Conf }

func poll(timeout time.Duration, ok func() (bool, error)) error {
	deadline := time.Now().Add(timeout)
	for {
		done, err := ok()
		if err != nil {
			return err
		}
		if done {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("timed out after %v", timeout)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	_, p, _ := net.SplitHostPort(l.Addr().String())
	return strconv.Atoi(p)
}

func uuid() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}
