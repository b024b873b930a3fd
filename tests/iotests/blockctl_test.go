package iotests

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/creack/pty"
)

// blockctl runs the command-line client against a daemon on a monitor of
// its own (qsd serves one client per monitor socket, and the harness's
// two are taken).
type blockctl struct {
	t    *testing.T
	bin  string
	sock string
}

// buildBlockctl builds cmd/blockctl into a directory of the test's.
func buildBlockctl(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "blockctl")
	if out, err := exec.Command("go", "build", "-o", bin, "../../cmd/blockctl").CombinedOutput(); err != nil {
		t.Fatalf("building blockctl: %v\n%s", err, out)
	}
	return bin
}

// startForBlockctl starts the daemon with a third monitor for blockctl.
func startForBlockctl(t *testing.T, bin string) (*Daemon, blockctl) {
	t.Helper()
	dir, err := os.MkdirTemp("", "bctl") // short: a socket path has 108 bytes
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "ctl.sock")
	d := start(t, "--chardev", "socket,id=m2,path="+sock+",server=on,wait=off", "--monitor", "chardev=m2")
	if err := waitSocket(sock, d.done); err != nil {
		t.Fatal(err)
	}
	return d, blockctl{t: t, bin: bin, sock: sock}
}

// run runs blockctl with its output to pipes and returns stdout, stderr
// and the exit status.
func (c blockctl) run(args ...string) (stdout, stderr string, code int) {
	c.t.Helper()
	cmd := exec.Command(c.bin, append([]string{"-s", c.sock}, args...)...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		code = ee.ExitCode()
	case err != nil:
		c.t.Fatalf("blockctl %v: %v", args, err)
	}
	return o.String(), e.String(), code
}

// ok runs blockctl, which must succeed, and returns its output.
func (c blockctl) ok(args ...string) string {
	c.t.Helper()
	out, errOut, code := c.run(args...)
	if code != 0 {
		c.t.Fatalf("blockctl %s: exit %d\n%s%s", strings.Join(args, " "), code, out, errOut)
	}
	return out
}

// fails runs blockctl, which must exit 1 with stderr exactly want.
func (c blockctl) fails(want string, args ...string) {
	c.t.Helper()
	out, errOut, code := c.run(args...)
	if code != 1 || errOut != want {
		c.t.Errorf("blockctl %s: exit %d, stderr %q (stdout %q)\nwant exit 1, stderr %q", strings.Join(args, " "), code, errOut, out, want)
	}
}

// addChainBlockctl adds the reference chain as addChain does, but with
// blockctl add and --blockdev's dotted syntax, one node in JSON.
func addChainBlockctl(c blockctl, d *Daemon) {
	c.ok("add", "driver=qcow2,node-name=base,file.driver=file,file.node-name=base-file,file.filename="+d.Path("base.qcow2"))
	c.ok("add", "driver=qcow2", "node-name=mid", "backing=base", "file.driver=file", "file.node-name=mid-file", "file.filename="+d.Path("mid.qcow2"))
	top, _ := json.Marshal(map[string]any{"driver": "qcow2", "node-name": "top", "backing": "mid",
		"file": map[string]any{"driver": "file", "node-name": "top-file", "filename": d.Path("top.qcow2")}})
	c.ok("add", string(top))
}

// TestBlockctl runs the client against the daemon under test: what it
// shows, what it sends and how it exits must be the same with blockd and
// with qsd.
func TestBlockctl(t *testing.T) {
	bin := buildBlockctl(t)
	t.Run("nodes add del", func(t *testing.T) { blockctlNodes(t, bin) })
	t.Run("stream wait lines", func(t *testing.T) { blockctlStreamLines(t, bin) })
	t.Run("stream wait pty", func(t *testing.T) { blockctlStreamPTY(t, bin) })
	t.Run("failing job", func(t *testing.T) { blockctlFailingJob(t, bin) })
	t.Run("errors", func(t *testing.T) { blockctlErrors(t, bin) })
}

func blockctlNodes(t *testing.T, bin string) {
	d, c := startForBlockctl(t, bin)
	mkChain(t, d.Dir)
	addChainBlockctl(c, d)
	c.ok("add", "driver=null-co,node-name=nul,size=1048576,read-zeroes=on,read-only=on")
	startNBD(d)
	c.ok("export", "add", "nbd,id=e0,node-name=top")
	got := c.ok("nodes")
	size := func(n string) string {
		fi, err := os.Stat(d.Path(n + ".qcow2"))
		if err != nil {
			t.Fatal(err)
		}
		return humanSizeForTest(fi.Size())
	}
	want := "nul  null-co  1 MiB  ro\n" +
		"top  qcow2  64 MiB  rw  [export e0]\n" +
		"├── file [image]: top-file  file  " + size("top") + "  rw  " + d.Path("top.qcow2") + "\n" +
		"└── backing [cow]: mid  qcow2  64 MiB  rw\n" +
		"    ├── file [image]: mid-file  file  " + size("mid") + "  rw  " + d.Path("mid.qcow2") + "\n" +
		"    └── backing [cow]: base  qcow2  64 MiB  rw\n" +
		"        └── file [image]: base-file  file  " + size("base") + "  rw  " + d.Path("base.qcow2") + "\n"
	if got != want {
		t.Errorf("blockctl nodes:\n%s\nwant:\n%s", got, want)
	}
	var tree struct {
		Roots []struct {
			Name     string   `json:"node-name"`
			Size     int64    `json:"size"`
			ReadOnly bool     `json:"read-only"`
			Users    []string `json:"users"`
			Children []struct {
				Child, Role string
			}
		}
	}
	if err := json.Unmarshal([]byte(c.ok("nodes", "-o", "json")), &tree); err != nil {
		t.Fatal(err)
	}
	if r := tree.Roots; len(r) != 2 || r[1].Name != "top" || r[1].Size != 64<<20 || len(r[1].Users) != 1 || len(r[1].Children) != 2 || r[1].Children[1].Role != "cow" {
		t.Errorf("nodes -o json: %+v", tree)
	}
	if got := c.ok("export", "list"); !strings.Contains(got, "e0  nbd   top   active") {
		t.Errorf("export list:\n%s", got)
	}
	c.fails("blockctl: GenericError: Node 'mid' is busy: node is used as backing hd of 'top'\n", "del", "mid")
	d.DelExport("e0")
	c.ok("del", "top")
	c.ok("del", "nul")
	if got := c.ok("nodes"); !strings.HasPrefix(got, "mid  qcow2") || strings.Contains(got, "top") {
		t.Errorf("nodes after del top:\n%s", got)
	}
}

// humanSizeForTest is blockctl's size format, for the file nodes whose
// sizes depend on qemu-img.
func humanSizeForTest(n int64) string {
	units := []string{"B", "KiB", "MiB", "GiB"}
	f, u := float64(n), 0
	for f >= 1024 && u < len(units)-1 {
		f /= 1024
		u++
	}
	if u == 0 || f == float64(int64(f)) {
		return fmt.Sprintf("%d %s", int64(f), units[u])
	}
	return strings.TrimSuffix(fmt.Sprintf("%.1f", f), ".0") + " " + units[u]
}

// blockctlStreamLines: stream --wait with its output to a pipe prints
// plain progress lines and ends with the completed one; the stream did
// its work.
func blockctlStreamLines(t *testing.T, bin string) {
	d, c := startForBlockctl(t, bin)
	mkChain(t, d.Dir)
	addChainBlockctl(c, d)
	out := c.ok("stream", "--job-id", "s0", "--device", "top", "--base-node", "base", "--speed", "4M", "--wait") // 4 s: several polls
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if lines[0] != "s0 stream: created" || lines[len(lines)-1] != "s0 stream: completed 100.0% (64 MiB of 64 MiB)" {
		t.Errorf("first and last lines:\n%s", out)
	}
	progress := 0
	for _, l := range lines {
		if strings.HasPrefix(l, "s0 stream: running ") && strings.Contains(l, " MiB/s ETA ") {
			progress++
		}
	}
	if progress < 1 {
		t.Errorf("no progress line:\n%s", out)
	}
	if got := backingOf(d, "top"); got != "base" {
		t.Errorf("top's backing after the stream: %q", got)
	}
	if got := c.ok("jobs"); got != "ID  TYPE  STATUS  PROGRESS  SPEED  IO  ERROR\n" {
		t.Errorf("jobs after the stream:\n%s", got)
	}
}

// blockctlStreamPTY: under a terminal, stream --wait draws a bar that
// redraws itself in place and reaches 100%.
func blockctlStreamPTY(t *testing.T, bin string) {
	d, c := startForBlockctl(t, bin)
	mkChain(t, d.Dir)
	addChainBlockctl(c, d)
	cmd := exec.Command(c.bin, "-s", c.sock, "stream", "--job-id", "s0", "--device", "top", "--speed", "16M", "--wait")
	tty, err := pty.StartWithSize(cmd, &pty.Winsize{Rows: 24, Cols: 100})
	if err != nil {
		t.Fatal(err)
	}
	defer tty.Close()
	var out bytes.Buffer
	io.Copy(&out, tty) // ends with EIO once blockctl has exited
	if err := cmd.Wait(); err != nil {
		t.Fatalf("blockctl under a pty: %v\n%q", err, out.String())
	}
	s := out.String()
	for _, want := range []string{"s0 stream: running", "] ", "\x1b[", "MiB/s", "ETA", "s0 stream: completed", "100.0%"} {
		if !strings.Contains(s, want) {
			t.Errorf("bar output lacks %q:\n%q", want, s)
		}
	}
	if strings.Contains(s, "s0 stream: created\r\n") {
		t.Errorf("plain lines under a terminal:\n%q", s)
	}
	if got := backingOf(d, "top"); got != "" {
		t.Errorf("top's backing after streaming the whole chain: %q", got)
	}
}

// blockctlFailingJob: a stream that reads an I/O error (qsd transcript
// (h)) makes stream --wait exit 1 with the job's error.
func blockctlFailingJob(t *testing.T, bin string) {
	d, c := startForBlockctl(t, bin)
	mkChain(t, d.Dir)
	blkdebugChain(t, d, false)
	c.fails("blockctl: job s1 failed: Input/output error\n", "stream", "--job-id", "s1", "--device", "top", "--base-node", "base", "--wait")
	c.fails("blockctl: job s2 failed: Input/output error\n", "stream", "--job-id", "s2", "--device", "top", "--base-node", "base",
		"--auto-dismiss=false", "--dismiss")
	if got := c.ok("jobs", "-o", "json"); got != `{"block-jobs":[],"jobs":[]}`+"\n" {
		t.Errorf("jobs left: %s", got)
	}
	if got := backingOf(d, "top"); got != "mid" {
		t.Errorf("top's backing after a failed stream: %q", got)
	}
}

// blockctlErrors: the daemon's errors as one line with their class;
// backup, which blockd may lack, either works or says so.
func blockctlErrors(t *testing.T, bin string) {
	d, c := startForBlockctl(t, bin)
	c.fails("blockctl: CommandNotFound: The command nosuch has not been found\n", "raw", "nosuch")
	c.fails("blockctl: GenericError: Cannot find device='nosuch' nor node-name='nosuch'\n", "stream", "--device", "nosuch", "--wait")
	c.fails("blockctl: --device is required\n", "stream")
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", d.Path("a.qcow2"), "1M")
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", d.Path("b.qcow2"), "1M")
	c.ok("add", "driver=qcow2,node-name=a,file.driver=file,file.filename="+d.Path("a.qcow2"))
	c.ok("add", "driver=qcow2,node-name=b,file.driver=file,file.filename="+d.Path("b.qcow2"))
	out, errOut, code := c.run("backup", "--job-id", "b0", "--device", "a", "--target", "b", "--sync", "full", "--wait")
	switch {
	case code == 0 && strings.HasSuffix(out, "b0 backup: completed 100.0% (1 MiB of 1 MiB)\n"):
	case !isQSD() && code == 1 && errOut == "blockctl: CommandNotFound: The command blockdev-backup has not been found\n":
	default:
		t.Errorf("backup: exit %d\n%s%s", code, out, errOut)
	}
}
