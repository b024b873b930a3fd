package iotests

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
)

// Dirty bitmaps exported over NBD (block-export-add "bitmaps"), read with
// QEMU's and libnbd's clients: nbdinfo --map=qemu:dirty-bitmap:NAME and
// qemu-img map with x-dirty-bitmap. The expected maps are the ranges
// written, rounded out to each bitmap's granularity, and are what qsd 7.2
// answers: both daemons must give them byte for byte.

// bitmapMap is nbdinfo --map=qemu:dirty-bitmap:NAME of an export, one
// "offset length flags description" line per extent, spaces squeezed.
func bitmapMap(t *testing.T, sock, export, bitmap string) string {
	t.Helper()
	out := run(t, "nbdinfo", "--map=qemu:dirty-bitmap:"+bitmap, nbdURI(sock, export))
	var lines []string
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		lines = append(lines, strings.Join(strings.Fields(l), " "))
	}
	return strings.Join(lines, "\n")
}

// contexts lists the metadata contexts nbdinfo finds on an export.
func contexts(t *testing.T, sock, export string) []string {
	t.Helper()
	var info struct {
		Exports []struct {
			Contexts []string `json:"contexts"`
		} `json:"exports"`
	}
	out := run(t, "nbdinfo", "--json", nbdURI(sock, export))
	if err := json.Unmarshal([]byte(out), &info); err != nil || len(info.Exports) != 1 {
		t.Fatalf("nbdinfo --json: %v\n%s", err, out)
	}
	return info.Exports[0].Contexts
}

// bitmapBusy returns each bitmap of node as "name:busy:recording".
func bitmapStates(d *Daemon, node string) string {
	var nodes []struct {
		NodeName string `json:"node-name"`
		Bitmaps  []struct {
			Name      string `json:"name"`
			Busy      bool   `json:"busy"`
			Recording bool   `json:"recording"`
		} `json:"dirty-bitmaps"`
	}
	d.CmdInto("query-named-block-nodes", map[string]any{"flat": true}, &nodes)
	var out []string
	for _, n := range nodes {
		if n.NodeName == node {
			for _, b := range n.Bitmaps {
				out = append(out, fmt.Sprintf("%s:%v:%v", b.Name, b.Busy, b.Recording))
			}
		}
	}
	return strings.Join(out, " ")
}

func nbdExport(id, node string, extra ...any) map[string]any {
	a := map[string]any{"type": "nbd", "id": id, "node-name": node, "name": id}
	for i := 0; i+1 < len(extra); i += 2 {
		a[extra[i].(string)] = extra[i+1]
	}
	return a
}

// The maps of the writes TestNBDBitmapExport makes: 4 KiB at 0, 100 KiB at
// 1 MiB and 8 KiB at 3 MiB + 60 KiB (across a 64 KiB boundary), in a
// 4 MiB image.
const (
	b0Map = "0 65536 1 dirty\n65536 983040 0 clean\n1048576 131072 1 dirty\n1179648 1966080 0 clean\n3145728 131072 1 dirty\n3276800 917504 0 clean"
	b1Map = "0 4096 1 dirty\n4096 1044480 0 clean\n1048576 102400 1 dirty\n1150976 2056192 0 clean\n3207168 8192 1 dirty\n3215360 978944 0 clean"
	// qemu-img map's reading of b0 through x-dirty-bitmap: dirty as
	// absent data.
	b0ImgMap = `[{ "start": 0, "length": 65536, "depth": 0, "present": false, "zero": false, "data": false},
{ "start": 65536, "length": 983040, "depth": 0, "present": true, "zero": false, "data": true, "offset": 65536},
{ "start": 1048576, "length": 131072, "depth": 0, "present": false, "zero": false, "data": false},
{ "start": 1179648, "length": 1966080, "depth": 0, "present": true, "zero": false, "data": true, "offset": 1179648},
{ "start": 3145728, "length": 131072, "depth": 0, "present": false, "zero": false, "data": false},
{ "start": 3276800, "length": 917504, "depth": 0, "present": true, "zero": false, "data": true, "offset": 3276800}]`
)

var nbdBitmapWrites = []string{"-c", "write -P 1 0 4k", "-c", "write -P 2 1M 100k", "-c", "write -P 3 3132k 8k"}

// TestNBDBitmapExport: bitmaps recorded through one export are served by
// another; while served they are busy, and every bitmap command and a
// second export refuse them; bad bitmaps get qsd's errors and leave no
// export behind.
func TestNBDBitmapExport(t *testing.T) {
	d := start(t)
	img := d.Path("a.qcow2")
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", img, "4M")
	d.Cmd("blockdev-add", map[string]any{"driver": "qcow2", "node-name": "n",
		"file": map[string]any{"driver": "file", "filename": img}})
	addBitmap(d, "n", "b0", "granularity", 65536)
	addBitmap(d, "n", "b1", "granularity", 4096)
	sock := startNBD(d)

	// A writable export may serve a recording bitmap; writes through it
	// are recorded.
	d.Cmd("block-export-add", nbdExport("w", "n", "writable", true, "bitmaps", []any{"b0"}))
	if got, want := bitmapStates(d, "n"), "b1:false:true b0:true:true"; got != want {
		t.Errorf("bitmaps while exported: %s, want %s", got, want)
	}
	run(t, "qemu-io", append([]string{"-f", "raw"}, append(nbdBitmapWrites, nbdURI(sock, "w"))...)...)
	busy := "Bitmap 'b0' is currently in use by another operation and cannot be used"
	for _, cmd := range []string{"block-dirty-bitmap-remove", "block-dirty-bitmap-clear", "block-dirty-bitmap-disable", "block-dirty-bitmap-enable"} {
		d.MustFail(cmd, map[string]any{"node": "n", "name": "b0"}, "GenericError", busy)
	}
	d.MustFail("block-dirty-bitmap-merge", map[string]any{"node": "n", "target": "b1", "bitmaps": []any{"b0"}}, "GenericError", busy)
	d.MustFail("block-export-add", nbdExport("w2", "n", "writable", true, "bitmaps", []any{"b0"}), "GenericError", busy)
	d.MustFail("block-export-add", nbdExport("w2", "n", "writable", true, "bitmaps", []any{map[string]any{"node": "n", "name": "b0"}}), "GenericError", busy)
	d.DelExport("w")
	if got, want := bitmapStates(d, "n"), "b1:false:true b0:false:true"; got != want {
		t.Errorf("bitmaps after the export went: %s, want %s", got, want)
	}

	for _, tc := range []struct {
		bitmaps []any
		want    string
	}{
		// A read-only export refuses a bitmap, found by name, that the
		// node's writes still change...
		{[]any{"b1", "b0"}, "Enabled bitmap 'b1' incompatible with readonly export"},
		{[]any{"nope"}, "Bitmap 'nope' is not found"},
		{[]any{map[string]any{"node": "n", "name": "nope"}}, "Dirty bitmap 'nope' not found"},
		{[]any{map[string]any{"node": "nonode", "name": "b0"}}, "Node 'nonode' not found"},
		{[]any{map[string]any{"node": "n"}}, "Parameter 'bitmaps[0].name' is missing"},
	} {
		d.MustFail("block-export-add", nbdExport("r", "n", "bitmaps", tc.bitmaps), "GenericError", tc.want)
	}
	if got := string(d.Cmd("query-block-exports", nil)); got != "[]" {
		t.Errorf("exports after failed adds: %s", got)
	}
	if got, want := bitmapStates(d, "n"), "b1:false:true b0:false:true"; got != want {
		t.Errorf("bitmaps after failed adds: %s, want %s", got, want)
	}

	// ... but not one named by node and name (qsd checks only names).
	d.Cmd("block-dirty-bitmap-disable", map[string]any{"node": "n", "name": "b0"})
	d.Cmd("block-export-add", nbdExport("r", "n", "allocation-depth", true,
		"bitmaps", []any{"b0", map[string]any{"node": "n", "name": "b1"}}))
	if got, want := fmt.Sprint(contexts(t, sock, "r")), "[base:allocation qemu:allocation-depth qemu:dirty-bitmap:b0 qemu:dirty-bitmap:b1]"; got != want {
		t.Errorf("contexts: %s, want %s", got, want)
	}
	if got := bitmapMap(t, sock, "r", "b0"); got != b0Map {
		t.Errorf("b0:\n%s\nwant\n%s", got, b0Map)
	}
	if got := bitmapMap(t, sock, "r", "b1"); got != b1Map {
		t.Errorf("b1:\n%s\nwant\n%s", got, b1Map)
	}
	// QEMU's client asks one extent at a time (REQ_ONE).
	out := run(t, "qemu-img", "map", "--output=json", "--image-opts",
		"driver=nbd,server.type=unix,server.path="+sock+",export=r,x-dirty-bitmap=qemu:dirty-bitmap:b0")
	if got := strings.TrimSpace(out); got != b0ImgMap {
		t.Errorf("qemu-img map of b0:\n%s\nwant\n%s", got, b0ImgMap)
	}
	// The data is there too.
	run(t, "qemu-io", "-r", "-f", "raw", "-c", "read -P 1 0 4k", "-c", "read -P 2 1M 100k", "-c", "read -P 3 3132k 8k", "-c", "read -P 0 8k 1016k", nbdURI(sock, "r"))
	if got, want := bitmapStates(d, "n"), "b1:true:true b0:true:false"; got != want {
		t.Errorf("bitmaps while exported read-only: %s, want %s", got, want)
	}
	d.DelExport("r")
	// A bitmap listed twice is checked twice before it turns busy, and
	// offered twice.
	d.Cmd("block-export-add", nbdExport("r2", "n", "bitmaps", []any{"b0", "b0"}))
	if got, want := fmt.Sprint(contexts(t, sock, "r2")), "[base:allocation qemu:dirty-bitmap:b0 qemu:dirty-bitmap:b0]"; got != want {
		t.Errorf("contexts: %s, want %s", got, want)
	}
	if got := bitmapMap(t, sock, "r2", "b0"); got != b0Map {
		t.Errorf("b0 listed twice:\n%s\nwant\n%s", got, b0Map)
	}
	d.DelExport("r2")
	d.Cmd("block-dirty-bitmap-remove", map[string]any{"node": "n", "name": "b0"})
	d.Cmd("block-dirty-bitmap-remove", map[string]any{"node": "n", "name": "b1"})
}

// TestNBDBitmapChain: a bitmap named alone is looked for on the exported
// node and then down its backing chain; the first of that name wins, and
// only a recording bitmap of a writable node is refused to a read-only
// export.
func TestNBDBitmapChain(t *testing.T) {
	d := start(t)
	base, top := d.Path("base.qcow2"), d.Path("top.qcow2")
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", base, "4M")
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", top)
	d.Cmd("blockdev-add", map[string]any{"driver": "qcow2", "node-name": "base", "read-only": true,
		"file": map[string]any{"driver": "file", "filename": base}})
	d.Cmd("blockdev-add", map[string]any{"driver": "qcow2", "node-name": "top", "backing": "base",
		"file": map[string]any{"driver": "file", "filename": top}})
	addBitmap(d, "base", "bb", "granularity", 65536)
	addBitmap(d, "base", "deep", "granularity", 65536)
	sock := startNBD(d)

	// "deep" is only on the read-only base: recording does not matter.
	d.Cmd("block-export-add", nbdExport("e", "top", "bitmaps", []any{"deep"}))
	if got, want := fmt.Sprint(contexts(t, sock, "e")), "[base:allocation qemu:dirty-bitmap:deep]"; got != want {
		t.Errorf("contexts: %s, want %s", got, want)
	}
	if got, want := bitmapMap(t, sock, "e", "deep"), "0 4194304 0 clean"; got != want {
		t.Errorf("deep: %s, want %s", got, want)
	}
	d.DelExport("e")

	// A "bb" on top hides the base's: its recording makes the export fail.
	addBitmap(d, "top", "bb", "granularity", 4096)
	d.MustFail("block-export-add", nbdExport("e", "top", "bitmaps", []any{"bb"}), "GenericError", "Enabled bitmap 'bb' incompatible with readonly export")
	d.Cmd("block-export-add", nbdExport("e", "top", "writable", true, "bitmaps", []any{"bb"}))
	run(t, "qemu-io", "-f", "raw", "-c", "write -P 9 2M 4k", nbdURI(sock, "e"))
	if got, want := bitmapMap(t, sock, "e", "bb"), "0 2097152 0 clean\n2097152 4096 1 dirty\n2101248 2093056 0 clean"; got != want {
		t.Errorf("top's bb:\n%s\nwant\n%s", got, want)
	}
	if got, want := bitmapStates(d, "top")+" / "+bitmapStates(d, "base"), "bb:true:true / deep:false:true bb:false:true"; got != want {
		t.Errorf("bitmaps: %s, want %s", got, want)
	}
	d.DelExport("e")
}

// TestNBDBitmapCommandLine: --export takes bitmaps in key=value and JSON
// forms; the bitmap is a persistent one qemu-img made and qemu-io filled.
func TestNBDBitmapCommandLine(t *testing.T) {
	dir := t.TempDir()
	img := dir + "/a.qcow2"
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", img, "4M")
	run(t, "qemu-img", "bitmap", "--add", "-g", "64k", img, "b0")
	run(t, "qemu-img", "bitmap", "--add", "-g", "4k", img, "b1")
	run(t, "qemu-io", append(append([]string{"-f", "qcow2"}, nbdBitmapWrites...), img)...)
	run(t, "qemu-img", "bitmap", "--disable", img, "b0")
	run(t, "qemu-img", "bitmap", "--disable", img, "b1")
	sock := shortSock(t, "nbd")
	d := start(t,
		"--blockdev", "driver=file,node-name=f,filename="+img,
		"--blockdev", "driver=qcow2,node-name=n,file=f",
		"--nbd-server", "addr.type=unix,addr.path="+sock,
		"--export", "type=nbd,id=e0,node-name=n,name=kv,bitmaps.0=b0",
		"--export", `{"type": "nbd", "id": "e1", "node-name": "n", "name": "js", "bitmaps": [{"node": "n", "name": "b1"}]}`,
	)
	if got := bitmapMap(t, sock, "kv", "b0"); got != b0Map {
		t.Errorf("kv: b0:\n%s\nwant\n%s", got, b0Map)
	}
	if got := bitmapMap(t, sock, "js", "b1"); got != b1Map {
		t.Errorf("js: b1:\n%s\nwant\n%s", got, b1Map)
	}
	if got, want := bitmapStates(d, "n"), "b1:true:false b0:true:false"; got != want {
		t.Errorf("bitmaps: %s, want %s", got, want)
	}
}

// TestNBDBitmapCommandLineBusy: a second --export of a bitmap already
// exported fails the start with qsd's message.
func TestNBDBitmapCommandLineBusy(t *testing.T) {
	dir := t.TempDir()
	img := dir + "/a.qcow2"
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", img, "1M")
	run(t, "qemu-img", "bitmap", "--add", "--disable", img, "b0")
	sock := shortSock(t, "nbd")
	out, err := runErr(daemonBin(),
		"--blockdev", "driver=file,node-name=f,filename="+img,
		"--blockdev", "driver=qcow2,node-name=n,file=f",
		"--nbd-server", "addr.type=unix,addr.path="+sock,
		"--export", "type=nbd,id=e0,node-name=n,bitmaps.0=b0",
		"--export", "type=nbd,id=e1,node-name=n,name=other,bitmaps.0=b0")
	want := "--export type=nbd,id=e1,node-name=n,name=other,bitmaps.0=b0: Bitmap 'b0' is currently in use by another operation and cannot be used"
	if err == nil || !strings.Contains(out, want) {
		t.Errorf("daemon start: %v\n%s\nwant %q", err, out, want)
	}
}

// TestNBDBitmapClient: the nbd driver of the daemon under test reads
// another daemon's exported bitmap with x-dirty-bitmap and serves what it
// sees; base:allocation of that export shows the dirty ranges as holes.
func TestNBDBitmapClient(t *testing.T) {
	srv := start(t)
	img := srv.Path("a.qcow2")
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", img, "4M")
	srv.Cmd("blockdev-add", map[string]any{"driver": "qcow2", "node-name": "n",
		"file": map[string]any{"driver": "file", "filename": img}})
	addBitmap(srv, "n", "b0", "granularity", 65536, "disabled", true)
	sock := startNBD(srv)
	srv.Cmd("block-export-add", nbdExport("w", "n", "writable", true))
	run(t, "qemu-io", append([]string{"-f", "raw"}, append(nbdBitmapWrites, nbdURI(sock, "w"))...)...)
	srv.DelExport("w")
	srv.Cmd("block-dirty-bitmap-enable", map[string]any{"node": "n", "name": "b0"})
	srv.Cmd("block-export-add", nbdExport("wb", "n", "writable", true, "bitmaps", []any{"b0"}))
	run(t, "qemu-io", append([]string{"-f", "raw"}, append(nbdBitmapWrites, nbdURI(sock, "wb"))...)...)

	cli := start(t)
	cli.MustFail("blockdev-add", map[string]any{"driver": "nbd", "node-name": "c", "read-only": true,
		"server": map[string]any{"type": "unix", "path": sock}, "export": "wb", "x-dirty-bitmap": "b0"},
		"GenericError", "Could not open image: Invalid argument")
	cli.Cmd("blockdev-add", map[string]any{"driver": "nbd", "node-name": "c", "read-only": true,
		"server": map[string]any{"type": "unix", "path": sock}, "export": "wb", "x-dirty-bitmap": "qemu:dirty-bitmap:b0"})
	csock := cli.Path("nbd.sock")
	cli.Cmd("nbd-server-start", map[string]any{"addr": unixAddr(csock)})
	cli.Cmd("block-export-add", nbdExport("view", "c"))
	got := run(t, "nbdinfo", "--map", nbdURI(csock, "view"))
	var lines []string
	for _, l := range strings.Split(strings.TrimSpace(got), "\n") {
		lines = append(lines, strings.Join(strings.Fields(l), " "))
	}
	want := "0 65536 1 hole\n65536 983040 0 data\n1048576 131072 1 hole\n1179648 1966080 0 data\n3145728 131072 1 hole\n3276800 917504 0 data"
	if strings.Join(lines, "\n") != want {
		t.Errorf("base:allocation of the client's export:\n%s\nwant\n%s", strings.Join(lines, "\n"), want)
	}
	cli.DelExport("view")
	cli.Cmd("blockdev-del", map[string]any{"node-name": "c"})
	srv.DelExport("wb")
}
