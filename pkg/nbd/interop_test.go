package nbd_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/blockd/blockd/pkg/nbd"
	"github.com/blockd/blockd/pkg/nbd/nbdtest"
)

// Interop tests run the real NBD tools against the server. Each skips when
// its tool is not installed.

func tool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Skipf("%s not installed", name)
	}
	return p
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := runErr(t, name, args...)
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return out
}

func runErr(t *testing.T, name string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(tool(t, name), args...)
	cmd.Env = append(os.Environ(), "LIBNBD_DEBUG=0")
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// interopServer has a read-only export "ro" with a description and a
// writable export "rw" with allocation depth, both with some data.
func interopServer(t *testing.T) (s *testServer, ro, rw *nbdtest.Mem) {
	s = startServer(t, nbd.ServerOptions{})
	ctx := context.Background()
	ro = nbdtest.NewMem(4*MiB, 64<<10)
	ro.WriteAt(ctx, bytes.Repeat([]byte{0x11}, MiB), 0, false)
	ro.WriteAt(ctx, bytes.Repeat([]byte{0x22}, 512<<10), 2*MiB, false)
	addExport(t, s, ro, nbd.ExportOptions{Name: "ro", Description: "a read-only disk", MultiConn: true})

	base := nbdtest.NewMem(8*MiB, 64<<10)
	base.WriteAt(ctx, bytes.Repeat([]byte{0x33}, MiB), 4*MiB, false)
	rw = nbdtest.NewMem(8*MiB, 64<<10).WithBacking(base)
	rw.WriteAt(ctx, bytes.Repeat([]byte{0x44}, MiB), 0, false)
	addExport(t, s, rw, nbd.ExportOptions{Name: "rw", Writable: true, AllocationDepth: true, MultiConn: true})
	return s, ro, rw
}

func TestInteropNbdinfo(t *testing.T) {
	tool(t, "nbdinfo")
	s, _, _ := interopServer(t)

	var info struct {
		Protocol string `json:"protocol"`
		Exports  []map[string]any
	}
	out := run(t, "nbdinfo", "--json", s.uri("rw"))
	if err := json.Unmarshal([]byte(out), &info); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if len(info.Exports) != 1 {
		t.Fatalf("exports: %s", out)
	}
	x := info.Exports[0]
	want := map[string]any{
		"export-name": "rw", "export-size": float64(8 * MiB),
		"is_read_only": false, "is_rotational": false,
		"can_cache": true, "can_df": true, "can_fast_zero": true, "can_flush": true,
		"can_fua": true, "can_multi_conn": true, "can_trim": true, "can_zero": true,
		"block_size_minimum": float64(1), "block_size_preferred": float64(4096),
		"block_size_maximum": float64(32 * MiB),
	}
	for k, v := range want {
		if x[k] != v {
			t.Errorf("nbdinfo --json %s = %v, want %v", k, x[k], v)
		}
	}
	if got := x["contexts"]; len(got.([]any)) != 2 {
		t.Errorf("contexts %v", got)
	}
	if !strings.Contains(info.Protocol, "newstyle-fixed") {
		t.Errorf("protocol %q", info.Protocol)
	}

	out = run(t, "nbdinfo", "--json", s.uri("ro"))
	info.Exports = nil
	if err := json.Unmarshal([]byte(out), &info); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	x = info.Exports[0]
	for k, v := range map[string]any{"is_read_only": true, "can_trim": false, "can_zero": false, "can_fast_zero": false,
		"can_flush": true, "can_fua": true, "can_cache": true, "description": "a read-only disk"} {
		if x[k] != v {
			t.Errorf("nbdinfo --json ro %s = %v, want %v", k, x[k], v)
		}
	}

	out = run(t, "nbdinfo", "--list", s.uri(""))
	for _, w := range []string{`export="ro":`, "description: a read-only disk", `export="rw":`, "qemu:allocation-depth", "base:allocation"} {
		if !strings.Contains(out, w) {
			t.Errorf("nbdinfo --list lacks %q:\n%s", w, out)
		}
	}

	out = run(t, "nbdinfo", "--map", s.uri("ro"))
	wantMap := `         0     1048576    0  data
   1048576     1048576    3  hole,zero
   2097152      524288    0  data
   2621440     1572864    3  hole,zero
`
	if out != wantMap {
		t.Errorf("nbdinfo --map:\n%s\nwant\n%s", out, wantMap)
	}
	out = run(t, "nbdinfo", "--map=qemu:allocation-depth", s.uri("rw"))
	wantDepth := `         0     1048576    1  local
   1048576     3145728    0  absent
   4194304     1048576    2  backing depth 2
   5242880     3145728    0  absent
`
	if out != wantDepth {
		t.Errorf("nbdinfo --map=qemu:allocation-depth:\n%s\nwant\n%s", out, wantDepth)
	}
	out = run(t, "nbdinfo", "--map", s.uri("rw"))
	wantRW := `         0     1048576    0  data
   1048576     3145728    3  hole,zero
   4194304     1048576    0  data
   5242880     3145728    3  hole,zero
`
	if out != wantRW {
		t.Errorf("nbdinfo --map rw:\n%s\nwant\n%s", out, wantRW)
	}
}

func TestInteropQemuImg(t *testing.T) {
	tool(t, "qemu-img")
	s, ro, _ := interopServer(t)

	var info map[string]any
	out := run(t, "qemu-img", "info", "--output=json", s.uri("ro"))
	if err := json.Unmarshal([]byte(out), &info); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if info["virtual-size"] != float64(4*MiB) || info["format"] != "raw" {
		t.Errorf("qemu-img info: %s", out)
	}

	var m []map[string]any
	out = run(t, "qemu-img", "map", "--output=json", s.uri("ro"))
	if err := json.Unmarshal([]byte(out), &m); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	type ext struct {
		start, length float64
		data, zero    bool
	}
	var got []ext
	for _, e := range m {
		got = append(got, ext{e["start"].(float64), e["length"].(float64), e["data"].(bool), e["zero"].(bool)})
	}
	want := []ext{{0, MiB, true, false}, {MiB, MiB, false, true}, {2 * MiB, 512 << 10, true, false}, {2*MiB + 512<<10, 1.5 * MiB, false, true}}
	if len(got) != len(want) {
		t.Fatalf("qemu-img map: %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("qemu-img map extent %d: %v, want %v", i, got[i], want[i])
		}
	}

	// Compare with a file holding the same bytes, and a different one.
	dir := t.TempDir()
	f := filepath.Join(dir, "ro.raw")
	if err := os.WriteFile(f, ro.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	out = run(t, "qemu-img", "compare", "-f", "raw", "-F", "raw", f, s.uri("ro"))
	if !strings.Contains(out, "Images are identical") {
		t.Errorf("qemu-img compare: %s", out)
	}
	b := ro.Bytes()
	b[3*MiB+7] = 1
	os.WriteFile(f, b, 0o644)
	out, err := runErr(t, "qemu-img", "compare", "-f", "raw", "-F", "raw", f, s.uri("ro"))
	if err == nil || !strings.Contains(out, "Content mismatch at offset 3145728") {
		t.Errorf("qemu-img compare of different images: %v %s", err, out)
	}
}

func TestInteropQemuIO(t *testing.T) {
	tool(t, "qemu-io")
	s, _, rw := interopServer(t)
	io := func(uri string, cmds ...string) (string, error) {
		args := []string{"-f", "raw"}
		if strings.Contains(uri, "/ro?") {
			args = append(args, "-r") // qemu-io opens read-write by default
		}
		for _, c := range cmds {
			args = append(args, "-c", c)
		}
		return runErr(t, "qemu-io", append(args, uri)...)
	}
	ok := func(uri string, cmds ...string) string {
		t.Helper()
		out, err := io(uri, cmds...)
		if err != nil || strings.Contains(out, "failed") || strings.Contains(out, "error") {
			t.Fatalf("qemu-io %v: %v\n%s", cmds, err, out)
		}
		return out
	}
	rwURI := s.uri("rw")
	ok(rwURI, "write -P 0xab 65536 128k", "read -P 0xab 65536 128k", "read -P 0x44 0 64k")
	ok(rwURI, "write -P 0xcd 4194304 4096", "read -P 0x33 4198400 4096") // over backing data
	ok(rwURI, "write -z 65536 64k", "read -P 0 65536 64k", "read -P 0xab 131072 64k")
	ok(rwURI, "write -z -u 0 1M", "read -P 0 0 1M")
	ok(rwURI, "write -P 0x5a 2097152 1M", "discard 2097152 1M")
	ok(rwURI, "write -P 0x77 -f 6291456 512", "flush", "read -P 0x77 6291456 512")
	ok(rwURI, "aio_write -P 0x01 0 4k", "aio_write -P 0x02 1M 4k", "aio_flush", "read -P 0x01 0 4k", "read -P 0x02 1M 4k")
	// Read with qemu-io what qemu-io wrote, over a fresh connection.
	ok(rwURI, "read -P 0xcd 4194304 4096", "read -P 0x77 6291456 512")
	// Check with the backend as well.
	b := rw.Bytes()
	if b[4194304] != 0xcd || b[4198400] != 0x33 || b[6291456] != 0x77 || b[65536] != 0 || b[131072] != 0 || b[2097152] != 0 {
		t.Error("backend contents differ from what qemu-io wrote")
	}
	// Out of range access fails, the connection survives.
	out, _ := io(rwURI, "read 8388096 1024", "read -P 0x77 6291456 512")
	if !strings.Contains(out, "read failed") || !strings.Contains(out, "read 512/512") {
		t.Errorf("out of range read: %s", out)
	}

	// The read-only export refuses to open for writing, as with qsd.
	out, err := runErr(t, "qemu-io", "-f", "raw", "-c", "write -P 0x77 0 64k", s.uri("ro"))
	if err == nil || !strings.Contains(out, "Permission denied") {
		t.Errorf("write to read-only export: %v %s", err, out)
	}
	ok(s.uri("ro"), "read -P 0x11 0 1M", "read -P 0 1M 1M", "read -P 0x22 2M 512k")
}

func TestInteropNbdcopy(t *testing.T) {
	tool(t, "nbdcopy")
	tool(t, "qemu-img")
	s, _, rw := interopServer(t)
	dir := t.TempDir()
	src := filepath.Join(dir, "src.raw")
	// 8 MiB with random data in a few places and holes elsewhere.
	f, err := os.Create(src)
	if err != nil {
		t.Fatal(err)
	}
	f.Truncate(8 * MiB)
	for _, off := range []int64{0, 3*MiB + 4096, 7 * MiB} {
		p := make([]byte, 300<<10)
		rand.Read(p)
		f.WriteAt(p, off)
	}
	f.Close()

	run(t, "nbdcopy", src, s.uri("rw"))
	out := run(t, "qemu-img", "compare", "-f", "raw", "-F", "raw", src, s.uri("rw"))
	if !strings.Contains(out, "Images are identical") {
		t.Errorf("after nbdcopy to the export: %s", out)
	}
	want, _ := os.ReadFile(src)
	if !bytes.Equal(rw.Bytes(), want) {
		t.Error("backend differs from the source")
	}

	dst := filepath.Join(dir, "dst.raw")
	os.WriteFile(dst, nil, 0o644)
	run(t, "nbdcopy", s.uri("rw"), dst)
	got, _ := os.ReadFile(dst)
	if !bytes.Equal(got, want) {
		t.Error("nbdcopy from the export: contents differ")
	}
	// Several connections at once (nbdcopy uses multi-conn).
	rw2 := nbdtest.NewMem(4*MiB, 0)
	rw2.WriteAt(context.Background(), bytes.Repeat([]byte{9}, 4*MiB), 0, false)
	addExport(t, s, rw2, nbd.ExportOptions{Name: "rw2", Writable: true, MultiConn: true})
	run(t, "nbdcopy", "--connections=4", "--requests=32", s.uri("ro"), s.uri("rw2"))
	out = run(t, "qemu-img", "compare", "-f", "raw", "-F", "raw", s.uri("ro"), s.uri("rw2"))
	if !strings.Contains(out, "Images are identical") {
		t.Errorf("qemu-img compare ro rw2: %s", out)
	}
}

func TestInteropFioVerify(t *testing.T) {
	tool(t, "fio")
	s := startServer(t, nbd.ServerOptions{})
	m := nbdtest.NewMem(16*MiB, 0)
	addExport(t, s, m, nbd.ExportOptions{Name: "e", Writable: true, MultiConn: true})
	out := run(t, "fio", "--name=v", "--ioengine=nbd", "--uri="+s.uri("e"), "--rw=randwrite", "--bsrange=512-128k",
		"--iodepth=16", "--size=16M", "--verify=crc32c", "--do_verify=1", "--verify_fatal=1", "--verify_state_save=0", "--output-format=terse", "--terse-version=3")
	if f := strings.Split(out, ";"); len(f) < 10 || f[4] != "0" {
		t.Errorf("fio: %s", out)
	}
}
