package nbd_test

import (
	"net"

	"github.com/blockd/blockd/pkg/nbd"
	"github.com/blockd/blockd/pkg/nbd/nbdtest"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// TestCompareQSD runs the option cases against qemu-storage-daemon 7.2, to
// check that this server answers the way qsd does. It is opt-in
// (NBD_COMPARE_QSD=1) because it starts qsd.
func TestCompareQSD(t *testing.T) {
	if os.Getenv("NBD_COMPARE_QSD") == "" {
		t.Skip("set NBD_COMPARE_QSD=1 to compare with qemu-storage-daemon")
	}
	qsd := tool(t, "qemu-storage-daemon")
	dir, err := os.MkdirTemp("", "qsd")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	sock := filepath.Join(dir, "s.sock")
	cmd := exec.Command(qsd,
		"--blockdev", "null-co,node-name=ro,size=1048576,read-zeroes=on",
		"--blockdev", "null-co,node-name=rw,size=2097152,read-zeroes=on",
		"--nbd-server", "addr.type=unix,addr.path="+sock,
		"--export", "nbd,id=e0,node-name=ro,name=ro,description=read-only disk",
		"--blockdev", "null-co,node-name=big,size=67108864,read-zeroes=on",
		"--export", "nbd,id=e1,node-name=rw,name=rw,writable=on,allocation-depth=on",
		"--export", "nbd,id=e2,node-name=big,name=big,writable=on")
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		cmd.Process.Kill()
		cmd.Wait()
	}()
	for i := 0; ; i++ {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		if i > 200 {
			t.Fatal("qsd did not start")
		}
		time.Sleep(10 * time.Millisecond)
	}
	dial := func(t testing.TB) *client {
		nc, err := net.Dial("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { nc.Close() })
		return &client{t: t, nc: nc, br: newReader(nc), reads: map[uint64]uint32{}}
	}
	t.Run("options", func(t *testing.T) { runOptionCases(t, dial, true) })
	t.Run("commands", func(t *testing.T) {
		runCommandCases(t, func(t testing.TB, name string, structured bool, contexts ...string) *client {
			s := &testServer{path: sock}
			c, _ := s.connect(t, name, structured, contexts...)
			return c
		}, true)
	})
}

// TestCompareQSDBitmaps runs the dirty bitmap cases against
// qemu-storage-daemon 7.2 (NBD_COMPARE_QSD=1): the exports of
// bitmapServer, "e" a qcow2 image whose persistent bitmaps qemu-io filled.
func TestCompareQSDBitmaps(t *testing.T) {
	if os.Getenv("NBD_COMPARE_QSD") == "" {
		t.Skip("set NBD_COMPARE_QSD=1 to compare with qemu-storage-daemon")
	}
	qsd := tool(t, "qemu-storage-daemon")
	dir := t.TempDir()
	img := filepath.Join(dir, "e.qcow2")
	for _, args := range [][]string{
		{"qemu-img", "create", "-q", "-f", "qcow2", img, "1M"},
		{"qemu-img", "bitmap", "--add", "-g", "64k", img, "b0"},
		{"qemu-io", "-f", "qcow2", "-c", "write 64k 128k", "-c", "write 524289 100", img},
		{"qemu-img", "bitmap", "--disable", img, "b0"},
		{"qemu-img", "bitmap", "--add", "-g", "4k", img, "b1"},
		{"qemu-io", "-f", "qcow2", "-c", "write 4k 4k", img},
		{"qemu-img", "bitmap", "--disable", img, "b1"},
	} {
		run(t, args[0], args[1:]...)
	}
	sock := filepath.Join(dir, "s.sock")
	cmd := exec.Command(qsd,
		"--blockdev", "driver=qcow2,node-name=e,file.driver=file,file.filename="+img,
		"--blockdev", "null-co,node-name=plain,size=1048576,read-zeroes=on",
		"--nbd-server", "addr.type=unix,addr.path="+sock,
		"--export", "nbd,id=e0,node-name=e,allocation-depth=on,bitmaps.0=b0,bitmaps.1=b1",
		"--export", "nbd,id=e1,node-name=plain")
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		cmd.Process.Kill()
		cmd.Wait()
	}()
	for i := 0; ; i++ {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		if i > 200 {
			t.Fatal("qsd did not start")
		}
		time.Sleep(10 * time.Millisecond)
	}
	s := &testServer{path: sock}
	t.Run("contexts", func(t *testing.T) { runBitmapContextCases(t, s.dial) })
	t.Run("status", func(t *testing.T) { runBitmapStatusCases(t, s) })
}

type cmdCase struct {
	name       string
	export     string
	structured bool
	contexts   []string
	typ, flags uint16
	off        uint64
	length     uint32
	errno      uint32
}

// commandCases expect a writable export "big" of 64 MiB and the read-only
// "ro" of 1 MiB, with the default block sizes.
func commandCases() []cmdCase {
	const big = 64 * MiB
	return []cmdCase{
		{"read past end", "big", false, nil, cmdRead, 0, big - 1, 2, 22},
		{"read past end structured", "big", true, nil, cmdRead, 0, big - 1, 2, 22},
		{"read offset past end", "big", false, nil, cmdRead, 0, big + 4096, 1, 22},
		{"write past end", "big", false, nil, cmdWrite, 0, big - 1, 2, 22},
		{"zero past end", "big", false, nil, cmdWriteZeroes, 0, big - 1, 2, 22},
		{"trim past end", "big", false, nil, cmdTrim, 0, big - 1, 2, 22},
		{"cache past end", "big", false, nil, cmdCache, 0, big - 1, 2, 22},
		{"status past end", "big", true, []string{"base:allocation"}, cmdBlockStatus, 0, big - 1, 2, 22},
		{"read empty", "big", false, nil, cmdRead, 0, 0, 0, 0},
		{"read empty structured", "big", true, nil, cmdRead, 0, 0, 0, 0},
		{"write empty", "big", false, nil, cmdWrite, 0, 0, 0, 0},
		{"trim empty", "big", false, nil, cmdTrim, 0, 0, 0, 0},
		{"zero empty", "big", false, nil, cmdWriteZeroes, 0, 0, 0, 0},
		{"cache empty", "big", false, nil, cmdCache, 0, 0, 0, 0},
		{"status empty", "big", true, []string{"base:allocation"}, cmdBlockStatus, 0, 0, 0, 22},
		{"status without context", "big", true, nil, cmdBlockStatus, 0, 0, 4096, 22},
		{"unknown command", "big", false, nil, 99, 0, 0, 0, 22},
		{"unknown command structured", "big", true, nil, 99, 0, 0, 4096, 22},
		{"read bad flag", "big", false, nil, cmdRead, 0x100, 0, 4096, 22},
		{"read FUA", "big", false, nil, cmdRead, flagFUA, 0, 4096, 0},
		{"read DF unnegotiated", "big", false, nil, cmdRead, flagDF, 0, 4096, 22},
		{"read DF", "big", true, nil, cmdRead, flagDF, 0, 4096, 0},
		{"read REQ_ONE", "big", true, nil, cmdRead, flagReqOne, 0, 4096, 22},
		{"trim NO_HOLE", "big", false, nil, cmdTrim, flagNoHole, 0, 4096, 22},
		{"flush FUA", "big", false, nil, cmdFlush, flagFUA, 0, 0, 0},
		{"zero fast", "big", false, nil, cmdWriteZeroes, flagFastZero | flagNoHole, 0, 4096, 0},
		{"read over max", "big", true, nil, cmdRead, 0, 0, 32*MiB + 4096, 22},
		{"read at max", "big", true, nil, cmdRead, 0, 0, 32 * MiB, 0},
		{"trim over max", "big", false, nil, cmdTrim, 0, 0, 48 * MiB, 0},
		{"zero over max", "big", false, nil, cmdWriteZeroes, 0, 0, 48 * MiB, 0},
		{"cache over max", "big", false, nil, cmdCache, 0, 0, 48 * MiB, 22},
		{"status over max", "big", true, []string{"base:allocation"}, cmdBlockStatus, 0, 0, 48 * MiB, 0},
		{"ro write", "ro", false, nil, cmdWrite, 0, 0, 4, 1},
		{"ro trim", "ro", true, nil, cmdTrim, 0, 0, 4096, 1},
		{"ro zero", "ro", false, nil, cmdWriteZeroes, 0, 0, 4096, 1},
		{"ro cache", "ro", false, nil, cmdCache, 0, 0, 4096, 0},
		{"ro flush", "ro", false, nil, cmdFlush, 0, 0, 0, 0},
	}
}

// qsdCommandDiffers names the command cases where qsd 7.2 differs.
var qsdCommandDiffers = map[string]string{
	// qsd answers EINVAL (with the message "Export is read-only"); the
	// protocol asks for EPERM.
	"ro write": "EINVAL", "ro trim": "EINVAL", "ro zero": "EINVAL",
	// null-co cannot zero fast; a property of the backend.
	"zero fast": "backend",
}

func runCommandCases(t *testing.T, connect func(t testing.TB, name string, structured bool, contexts ...string) *client, qsd bool) {
	for _, tt := range commandCases() {
		t.Run(tt.name, func(t *testing.T) {
			if why := qsdCommandDiffers[tt.name]; qsd && why != "" {
				t.Skip("qsd differs: " + why)
			}
			c := connect(t, tt.export, tt.structured, tt.contexts...)
			var data []byte
			if tt.typ == cmdWrite {
				data = make([]byte, tt.length)
			}
			res := c.roundTrip(tt.typ, tt.flags, tt.off, tt.length, data)
			if res.errno != tt.errno {
				t.Errorf("errno %d, want %d (%s)", res.errno, tt.errno, res.msg)
			}
			// The connection still works.
			if res := c.roundTrip(cmdRead, 0, 0, 512, nil); res.errno != 0 {
				t.Errorf("read after: errno %d", res.errno)
			}
		})
	}
}

func TestCommandCases(t *testing.T) {
	s := startServer(t, nbd.ServerOptions{})
	addExport(t, s, nbdtest.NewMem(MiB, 0), nbd.ExportOptions{Name: "ro", Description: "read-only disk"})
	addExport(t, s, nbdtest.NewMem(64*MiB, 0), nbd.ExportOptions{Name: "big", Writable: true})
	runCommandCases(t, func(t testing.TB, name string, structured bool, contexts ...string) *client {
		c, _ := s.connect(t, name, structured, contexts...)
		return c
	}, false)
}
