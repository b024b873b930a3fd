package iotests

import (
	"bufio"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestCommandLine sets up nodes, the NBD server and an export from the
// command line, in key=value and JSON forms, as qsd takes them.
func TestCommandLine(t *testing.T) {
	dir := t.TempDir()
	img := dir + "/a.raw"
	mkRaw(t, img, "4M")
	run(t, "qemu-io", "-f", "raw", "-c", "write -P 0x5a 0 1M", img)
	sock := shortSock(t, "nbd")
	d := start(t,
		"--blockdev", "driver=file,node-name=f,filename="+img,
		"--blockdev", `{"driver": "raw", "node-name": "r", "file": "f", "offset": 1048576}`,
		"--blockdev", "driver=null-co,node-name=n,size=1048576,read-zeroes=on",
		"--blockdev", "null-co,node-name=implied,size=65536", // the driver is the implied key
		"--nbd-server", "addr.type=unix,addr.path="+sock,
		"--export", "type=nbd,id=e0,node-name=r,name=win,writable=on,description=window",
		"--export", "nbd,id=e1,node-name=n",
	)
	nodes := namedNodes(d, true)
	if nodes["r"].Image["virtual-size"] != float64(3<<20) || nodes["n"].Image["virtual-size"] != float64(1<<20) ||
		nodes["implied"].Drv != "null-co" {
		t.Errorf("nodes from the command line: %+v", nodes)
	}
	run(t, "qemu-io", "-f", "raw", "-c", "read -P 0 0 1M", "-c", "write -P 0x77 0 4k", nbdURI(sock, "win"))
	list := run(t, "nbdinfo", "--list", nbdURI(sock, ""))
	if !strings.Contains(list, "description: window") || !strings.Contains(list, `export="n"`) {
		t.Errorf("exports from the command line:\n%s", list)
	}
	d.Quit()
	run(t, "qemu-io", "-f", "raw", "-c", "read -P 0x5a 0 1M", "-c", "read -P 0x77 1M 4k", img)
}

func shortSock(t *testing.T, name string) string {
	dir, err := os.MkdirTemp("", "iots")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir + "/" + name + ".sock"
}

func daemonBin() string {
	if isQSD() {
		return "qemu-storage-daemon"
	}
	return blockdBin
}

// TestDaemonizeAndPidfile: --daemonize returns once the daemon serves, the
// pid file names it, and quit ends it and removes the pid file.
func TestDaemonizeAndPidfile(t *testing.T) {
	sock := shortSock(t, "qmp")
	pidfile := sock + ".pid"
	cmd := exec.Command(daemonBin(), "--chardev", "socket,id=m0,path="+sock+",server=on,wait=off", "--monitor", "chardev=m0",
		"--daemonize", "--pidfile", pidfile)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("--daemonize: %v\n%s", err, out)
	}
	b, err := os.ReadFile(pidfile)
	if err != nil {
		t.Fatalf("pid file: %v", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || syscall.Kill(pid, 0) != nil {
		t.Fatalf("pid file %q does not name a live process", b)
	}
	c, err := net.Dial("unix", sock)
	if err != nil {
		syscall.Kill(pid, syscall.SIGKILL)
		t.Fatalf("daemon not serving after --daemonize returned: %v", err)
	}
	r := bufio.NewReader(c)
	r.ReadString('\n')
	c.Write([]byte(`{"execute": "qmp_capabilities"}{"execute": "quit"}`))
	r.ReadString('\n')
	r.ReadString('\n')
	c.Close()
	for i := 0; i < 3000 && syscall.Kill(pid, 0) == nil; i++ {
		time.Sleep(10 * time.Millisecond)
	}
	if syscall.Kill(pid, 0) == nil {
		syscall.Kill(pid, syscall.SIGKILL)
		t.Fatal("daemon still runs after quit")
	}
	if _, err := os.Stat(pidfile); err == nil && !isQSD() {
		t.Error("pid file left behind")
	}
}

// TestSignalShutdown: SIGTERM ends the daemon with status 0 after closing
// its images, which qemu-img can then open for writing.
func TestSignalShutdown(t *testing.T) {
	dir := t.TempDir()
	img := dir + "/a.raw"
	mkRaw(t, img, "1M")
	sock := shortSock(t, "qmp")
	cmd := exec.Command(daemonBin(), "--chardev", "socket,id=m0,path="+sock+",server=on,wait=off", "--monitor", "chardev=m0",
		"--blockdev", "driver=raw,node-name=r,file.driver=file,file.filename="+img)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	if err := waitSocket(sock, done); err != nil {
		t.Fatal(err)
	}
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("exit after SIGTERM: %v", err)
		}
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		t.Fatal("no exit after SIGTERM")
	}
	run(t, "qemu-io", "-f", "raw", "-c", "write 0 4k", img)
}

// TestBadStartup: a bad option makes the daemon exit non-zero with a
// message, and --help and --version answer.
func TestBadStartup(t *testing.T) {
	out, err := exec.Command(daemonBin(), "--blockdev", "driver=nosuch,node-name=x").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "'driver' does not accept value 'nosuch'") {
		t.Errorf("bad --blockdev: %v\n%s", err, out)
	}
	out, err = exec.Command(daemonBin(), "--help").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "--blockdev") {
		t.Errorf("--help: %v\n%s", err, out)
	}
	out, err = exec.Command(daemonBin(), "-V").CombinedOutput()
	if err != nil || len(out) == 0 {
		t.Errorf("-V: %v\n%s", err, out)
	}
}

// TestOversizedMessage: a 10 MB request closes that connection only; the
// daemon keeps serving the other one.
func TestOversizedMessage(t *testing.T) {
	skipOnQSD(t, "qsd accepts JSON tokens up to 64 MiB and answers such a request")
	d := start(t)
	c, err := net.Dial("unix", d.Path("qmp0.sock"))
	if err != nil {
		t.Fatal(err)
	}
	// qmp0 is held by go-qemu; blockd serves several clients per socket.
	defer c.Close()
	r := bufio.NewReader(c)
	r.ReadString('\n')
	c.Write([]byte(`{"execute": "qmp_capabilities"}`))
	r.ReadString('\n')
	big := `{"execute": "query-version", "arguments": {"x": "` + strings.Repeat("a", 10<<20) + `"}}`
	go c.Write([]byte(big))
	c.SetReadDeadline(time.Now().Add(20 * time.Second))
	for {
		if _, err := r.ReadString('\n'); err != nil {
			break // closed, as it should be
		}
	}
	if _, err := d.Try("query-version", nil); err != nil {
		t.Errorf("other client after an oversized message: %v", err)
	}
}
