package iotests

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

func unixAddr(path string) map[string]any {
	return map[string]any{"type": "unix", "data": map[string]any{"path": path}}
}

// startNBD starts the daemon's NBD server on a UNIX socket and returns it.
func startNBD(d *Daemon) string {
	sock := d.Path("nbd.sock")
	d.Cmd("nbd-server-start", map[string]any{"addr": unixAddr(sock)})
	return sock
}

// TestNBDServerAndExportCommands replays qsd's NBD transcript: the errors,
// defaults and events of the server and export commands.
func TestNBDServerAndExportCommands(t *testing.T) {
	d := start(t)
	mkRaw(t, d.Path("a.raw"), "64M")
	d.Cmd("blockdev-add", map[string]any{"driver": "raw", "node-name": "top", "file": map[string]any{"driver": "file", "filename": d.Path("a.raw")}})
	d.Cmd("blockdev-add", map[string]any{"driver": "null-co", "node-name": "nul", "size": 1 << 20, "read-zeroes": true})
	d.MustFail("block-export-add", map[string]any{"type": "nbd", "id": "e0", "node-name": "top"}, "GenericError", "NBD server not running")
	d.MustFail("nbd-server-stop", nil, "GenericError", "NBD server not running")
	if got := string(d.Cmd("query-block-exports", nil)); got != "[]" {
		t.Errorf("query-block-exports = %s", got)
	}
	sock := startNBD(d)
	d.MustFail("nbd-server-start", map[string]any{"addr": unixAddr(sock + "2")}, "GenericError", "NBD server already running")
	d.MustFail("nbd-server-start", map[string]any{"addr": map[string]any{"type": "unix", "path": sock + "3"}}, "GenericError", "Parameter 'addr.data' is missing")
	d.Cmd("block-export-add", map[string]any{"type": "nbd", "id": "e0", "node-name": "top"})
	d.Cmd("block-export-add", map[string]any{"type": "nbd", "id": "e1", "node-name": "nul", "name": "zeros", "description": "a null-co disk", "writable": true})
	d.MustFail("block-export-add", map[string]any{"type": "nbd", "id": "e2", "node-name": "top", "name": "top"}, "GenericError", "NBD server already has export named 'top'")
	d.MustFail("block-export-add", map[string]any{"type": "nbd", "id": "e3", "node-name": "nosuch"}, "GenericError", "Cannot find device='' nor node-name='nosuch'")
	d.MustFail("block-export-add", map[string]any{"type": "nbd", "id": "e0", "node-name": "nul", "name": "other"}, "GenericError", "Block export id 'e0' is already in use")
	d.MustFail("block-export-del", map[string]any{"id": "nosuch"}, "GenericError", "Export 'nosuch' is not found")
	var exps []map[string]any
	d.CmdInto("query-block-exports", nil, &exps)
	if len(exps) != 2 {
		t.Fatalf("query-block-exports = %v", exps)
	}
	for _, e := range exps {
		if e["type"] != "nbd" || e["shutting-down"] != false {
			t.Errorf("export entry %v", e)
		}
		if (e["id"] == "e0") != (e["node-name"] == "top") {
			t.Errorf("export entry %v names the wrong node", e)
		}
	}

	list := run(t, "nbdinfo", "--list", nbdURI(sock, ""))
	for _, want := range []string{`export="top"`, `export="zeros"`, "description: a null-co disk", "is_read_only: true", "is_read_only: false", "export-size: 67108864", "export-size: 1048576"} {
		if !strings.Contains(list, want) {
			t.Errorf("nbdinfo --list lacks %q:\n%s", want, list)
		}
	}
	// The default export is read-only.
	out, err := runErr("qemu-io", "-f", "raw", "-c", "write -P 0x77 0 64k", nbdURI(sock, "top"))
	if err == nil || !strings.Contains(out, "Permission denied") {
		t.Errorf("write to a read-only export: %v\n%s", err, out)
	}
	run(t, "qemu-io", "-f", "raw", "-c", "write -P 0x77 0 64k", nbdURI(sock, "zeros"))

	// nbd-server-stop deletes every export, with an event each before the reply.
	// On the same connection as the command, so that "before the reply"
	// is observable.
	d.Events()
	if _, err := d.Try("nbd-server-stop", nil); err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, e := range d.Events() {
		if e.Event == "BLOCK_EXPORT_DELETED" {
			ids = append(ids, e.Data["id"].(string))
		}
	}
	if strings.Join(ids, ",") != "e0,e1" {
		t.Errorf("BLOCK_EXPORT_DELETED before nbd-server-stop's reply: %v", ids)
	}
	if got := string(d.Cmd("query-block-exports", nil)); got != "[]" {
		t.Errorf("query-block-exports after stop = %s", got)
	}

	// TCP, with an explicit port, and block-export-del mode=hard.
	port := freePort(t)
	d.Cmd("nbd-server-start", map[string]any{"addr": map[string]any{"type": "inet", "data": map[string]any{"host": "127.0.0.1", "port": port}}, "max-connections": 2})
	d.Cmd("block-export-add", map[string]any{"type": "nbd", "id": "t1", "node-name": "top"})
	if got := strings.TrimSpace(run(t, "nbdinfo", "--size", "nbd://127.0.0.1:"+port+"/top")); got != "67108864" {
		t.Errorf("nbdinfo --size over TCP = %s", got)
	}
	d.Cmd("block-export-del", map[string]any{"id": "t1", "mode": "hard"})
	d.Cmd("nbd-server-stop", nil)
}

func freePort(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return fmt.Sprint(l.Addr().(*net.TCPAddr).Port)
}

type mapEntry struct {
	Start  int64 `json:"start"`
	Length int64 `json:"length"`
	Depth  int   `json:"depth"`
	Data   bool  `json:"data"`
	Zero   bool  `json:"zero"`
}

// imgMap returns qemu-img map's JSON, with neighbours of the same kind merged.
func imgMap(t *testing.T, args ...string) []mapEntry {
	t.Helper()
	out := run(t, "qemu-img", append([]string{"map", "--output=json"}, args...)...)
	var m []mapEntry
	if err := json.Unmarshal([]byte(out), &m); err != nil {
		t.Fatalf("qemu-img map: %v\n%s", err, out)
	}
	var merged []mapEntry
	for _, e := range m {
		if k := len(merged); k > 0 && merged[k-1].Data == e.Data && merged[k-1].Zero == e.Zero {
			merged[k-1].Length += e.Length
			continue
		}
		merged = append(merged, mapEntry{Start: e.Start, Length: e.Length, Data: e.Data, Zero: e.Zero})
	}
	return merged
}

// TestNBDDataPath writes and reads a raw image through an export with the
// real clients and checks the results with qemu-img on the file itself.
func TestNBDDataPath(t *testing.T) {
	d := start(t)
	img := d.Path("a.raw")
	mkRaw(t, img, "16M")
	run(t, "qemu-io", "-f", "raw", "-c", "write -P 0x11 1M 1M", "-c", "write -P 0x22 5M 64k", img)
	d.Cmd("blockdev-add", map[string]any{"driver": "raw", "node-name": "disk", "discard": "unmap", "file": map[string]any{"driver": "file", "filename": img}})
	sock := startNBD(d)
	d.Cmd("block-export-add", map[string]any{"type": "nbd", "id": "e0", "node-name": "disk", "writable": true})
	uri := nbdURI(sock, "disk")

	// Reads through the export see what qemu-io wrote to the file.
	run(t, "qemu-io", "-f", "raw", "-c", "read -P 0x11 1M 1M", "-c", "read -P 0x22 5M 64k", "-c", "read -P 0 0 1M", uri)
	// Writes, write-zeroes and discards through the export.
	run(t, "qemu-io", "-f", "raw",
		"-c", "write -P 0x33 8M 512k",
		"-c", "write -P 0x44 100000 3000", // unaligned
		"-c", "write -z 1M 256k",
		"-c", "discard 5M 64k",
		"-c", "aio_write -P 0x55 10M 64k", "-c", "aio_write -P 0x66 11M 64k", "-c", "aio_flush",
		uri)
	run(t, "qemu-io", "-f", "raw", "-c", "read -P 0x33 8M 512k", "-c", "read -P 0x44 100000 3000", "-c", "read -P 0 1M 256k",
		"-c", "read -P 0x11 1280k 768k", "-c", "read -P 0 5M 64k", "-c", "read -P 0x55 10M 64k", "-c", "read -P 0x66 11M 64k", uri)

	// Block status through the export matches the file's own map.
	nbdMap := run(t, "nbdinfo", "--map", uri)
	got := imgMap(t, "-f", "raw", uri)
	want := imgMap(t, "-U", "-f", "raw", img)
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("qemu-img map over NBD:\n%v\nof the file:\n%v\nnbdinfo --map:\n%s", got, want, nbdMap)
	}
	// Whole-image tools: compare, convert, nbdcopy.
	run(t, "qemu-img", "compare", "-U", "-f", "raw", "-F", "raw", uri, img)
	run(t, "qemu-img", "convert", "-f", "raw", "-O", "raw", uri, d.Path("copy.raw"))
	run(t, "qemu-img", "compare", "-U", "-f", "raw", "-F", "raw", d.Path("copy.raw"), img)
	run(t, "nbdcopy", uri, d.Path("copy2.raw"))
	run(t, "qemu-img", "compare", "-U", "-f", "raw", "-F", "raw", d.Path("copy2.raw"), img)
	// nbdcopy into the export: the image becomes the other file's data.
	src := d.Path("src.raw")
	mkRaw(t, src, "16M")
	run(t, "qemu-io", "-f", "raw", "-c", "write -P 0x99 3M 2M", src)
	run(t, "nbdcopy", src, uri)
	run(t, "qemu-img", "compare", "-U", "-f", "raw", "-F", "raw", src, uri)
	d.DelExport("e0")
	d.WaitEvent("BLOCK_EXPORT_DELETED", 10*time.Second)
	d.Cmd("blockdev-del", map[string]any{"node-name": "disk"})
	run(t, "qemu-img", "compare", "-f", "raw", "-F", "raw", src, img)
}

// TestNBDFio runs fio's nbd engine against an export, verifying data.
func TestNBDFio(t *testing.T) {
	if _, err := exec.LookPath("fio"); err != nil {
		t.Skip("fio is not installed")
	}
	d := start(t)
	img := d.Path("a.raw")
	mkRaw(t, img, "64M")
	d.Cmd("blockdev-add", map[string]any{"driver": "raw", "node-name": "disk", "file": map[string]any{"driver": "file", "filename": img}})
	sock := startNBD(d)
	d.Cmd("block-export-add", map[string]any{"type": "nbd", "id": "e0", "node-name": "disk", "writable": true})
	// 4 KiB requests take blockd's buffered reply path; 256 KiB reads of
	// a raw file are spliced from the page cache (issue 17).
	for _, bs := range []string{"4k", "256k"} {
		out, err := runErr("fio", "--name=verify", "--ioengine=nbd", "--uri="+nbdURI(sock, "disk"),
			"--rw=randwrite", "--bs="+bs, "--iodepth=16", "--size=16M", "--verify=crc32c", "--do_verify=1", "--verify_state_save=0", "--output-format=terse")
		if err != nil {
			if strings.Contains(out, "engine nbd not loadable") || strings.Contains(out, "failed to load engine") {
				t.Skip("this fio has no nbd engine")
			}
			t.Fatalf("fio bs=%s: %v\n%s", bs, err, out)
		}
	}
}

// TestNBDHostileClients: garbage, truncated handshakes and clients that
// vanish mid-request affect only themselves; the monitor and other
// clients keep working.
func TestNBDHostileClients(t *testing.T) {
	d := start(t)
	d.Cmd("blockdev-add", map[string]any{"driver": "null-co", "node-name": "n", "size": 1 << 20, "read-zeroes": true})
	sock := startNBD(d)
	d.Cmd("block-export-add", map[string]any{"type": "nbd", "id": "e0", "node-name": "n", "writable": true})
	for _, payload := range [][]byte{
		[]byte("GET / HTTP/1.0\r\n\r\n"),
		{0, 0, 0, 3},                           // short client flags
		append([]byte{0, 0, 0, 3}, 0xff, 0xff), // flags, then garbage option
		append([]byte{0, 0, 0, 3}, []byte("IHAVEOPT\x00\x00\x00\x07\xff\xff\xff\xff")...), // option length 4 GiB
	} {
		c, err := net.Dial("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(5 * time.Second))
		buf := make([]byte, 152)
		c.Read(buf) // greeting
		c.Write(payload)
		c.Read(buf)
		c.Close()
	}
	// A client that sends a read request and disappears before the reply.
	if c, err := net.Dial("unix", sock); err == nil {
		c.Write([]byte{0, 0, 0, 3})
		c.Close()
	}
	if got := strings.TrimSpace(run(t, "nbdinfo", "--size", nbdURI(sock, "n"))); got != "1048576" {
		t.Errorf("nbdinfo after hostile clients: %s", got)
	}
	if _, err := d.Try("query-block-exports", nil); err != nil {
		t.Errorf("monitor after hostile clients: %v", err)
	}
	_ = os.Remove
}

// TestNBDMaxConnectionsWaits: at max-connections the server stops
// accepting; the next client waits in the backlog with no greeting until
// a connection ends, then is served (qsd's behaviour).
func TestNBDMaxConnectionsWaits(t *testing.T) {
	d := start(t)
	sock := shortSock(t, "nbd")
	d.Cmd("blockdev-add", map[string]any{"driver": "null-co", "node-name": "n0", "size": 1 << 20})
	d.Cmd("nbd-server-start", map[string]any{"addr": map[string]any{"type": "unix", "data": map[string]any{"path": sock}}, "max-connections": 1})
	d.Cmd("block-export-add", map[string]any{"type": "nbd", "id": "e0", "node-name": "n0"})
	greeted := func(c net.Conn, wait time.Duration) bool {
		c.SetReadDeadline(time.Now().Add(wait))
		var b [8]byte
		_, err := io.ReadFull(c, b[:])
		return err == nil && string(b[:]) == "NBDMAGIC"
	}
	first, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	if !greeted(first, 5*time.Second) {
		t.Fatal("the first client got no greeting")
	}
	second, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatalf("the second client could not even connect: %v", err)
	}
	defer second.Close()
	if greeted(second, 300*time.Millisecond) {
		t.Fatal("a client beyond max-connections was served at once")
	}
	first.Close()
	if !greeted(second, 20*time.Second) {
		t.Fatal("the waiting client was not served once the first left")
	}
}

// TestNBDMinimumBlockSize: an export's minimum block size is its node's
// request alignment (blkdebug's align here), for clients that ask for
// block sizes; nbdinfo shows it.
func TestNBDMinimumBlockSize(t *testing.T) {
	d := start(t)
	sock := shortSock(t, "nbd")
	d.Cmd("blockdev-add", map[string]any{"driver": "blkdebug", "node-name": "dbg", "align": 4096,
		"image": map[string]any{"driver": "null-co", "size": 1 << 20, "read-zeroes": true}})
	d.Cmd("blockdev-add", map[string]any{"driver": "null-co", "node-name": "plain", "size": 1 << 20})
	d.Cmd("nbd-server-start", map[string]any{"addr": map[string]any{"type": "unix", "data": map[string]any{"path": sock}}})
	d.Cmd("block-export-add", map[string]any{"type": "nbd", "id": "e0", "node-name": "dbg"})
	d.Cmd("block-export-add", map[string]any{"type": "nbd", "id": "e1", "node-name": "plain"})
	for export, want := range map[string]float64{"dbg": 4096, "plain": 1} {
		var info struct {
			Exports []map[string]any `json:"exports"`
		}
		if err := json.Unmarshal([]byte(run(t, "nbdinfo", "--json", nbdURI(sock, export))), &info); err != nil {
			t.Fatal(err)
		}
		if len(info.Exports) != 1 || info.Exports[0]["block_size_minimum"] != want {
			t.Errorf("export %s: %v, want block_size_minimum %v", export, info.Exports, want)
		}
	}
}

// TestNBDNegotiationLimits: the CVE-2024-7409 fixes qsd 7.2.22 carries. A
// client that does not finish negotiating within 10 seconds is dropped,
// and without max-connections at most 100 clients are served at once
// (max-connections 0 lifts the limit), so idle clients cannot exhaust
// the server.
func TestNBDNegotiationLimits(t *testing.T) {
	d := start(t)
	d.Cmd("blockdev-add", map[string]any{"driver": "null-co", "node-name": "n0", "size": 1 << 20})
	sock := shortSock(t, "nbd")
	d.Cmd("nbd-server-start", map[string]any{"addr": unixAddr(sock)})
	d.Cmd("block-export-add", map[string]any{"type": "nbd", "id": "e0", "node-name": "n0"})
	greeted := func(c net.Conn, wait time.Duration) bool {
		c.SetReadDeadline(time.Now().Add(wait))
		var b [18]byte
		_, err := io.ReadFull(c, b[:])
		return err == nil && string(b[:8]) == "NBDMAGIC"
	}
	dial := func() net.Conn {
		c, err := net.Dial("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}

	// 100 silent clients are served; the 101st waits.
	t0 := time.Now()
	for i := 0; i < 100; i++ {
		if !greeted(dial(), 5*time.Second) {
			t.Fatalf("client %d got no greeting", i)
		}
	}
	extra := dial()
	if greeted(extra, 300*time.Millisecond) {
		t.Fatal("a 101st client was served while 100 were connected")
	}
	// The silent ones are dropped about 10 s after they connected, and
	// the waiting one is served then.
	if !greeted(extra, 25*time.Second) {
		t.Fatal("the waiting client was not served once the silent ones were dropped")
	}
	if el := time.Since(t0); el < 8*time.Second || el > 20*time.Second {
		t.Errorf("silent clients dropped after %v, want about 10 s", el)
	}

	// max-connections 0: no limit. A second daemon: qsd 7.2.22's
	// nbd-server-stop hangs when a client was just in negotiation.
	d = start(t)
	d.Cmd("blockdev-add", map[string]any{"driver": "null-co", "node-name": "n0", "size": 1 << 20})
	sock = shortSock(t, "nbd0")
	d.Cmd("nbd-server-start", map[string]any{"addr": unixAddr(sock), "max-connections": 0})
	d.Cmd("block-export-add", map[string]any{"type": "nbd", "id": "e1", "node-name": "n0"})
	for i := 0; i < 105; i++ {
		if !greeted(dial(), 5*time.Second) {
			t.Fatalf("max-connections 0: client %d got no greeting", i)
		}
	}
}

// TestNBDExportAddChecks: block-export-add checks the node, then
// read-only against writable, and only then whether the NBD server runs,
// as qsd 7.2 does.
func TestNBDExportAddChecks(t *testing.T) {
	d := start(t)
	mkRaw(t, d.Path("a.raw"), "1M")
	d.Cmd("blockdev-add", map[string]any{"driver": "file", "node-name": "ro", "filename": d.Path("a.raw"), "read-only": true})
	d.MustFail("block-export-add", map[string]any{"type": "nbd", "id": "e0", "node-name": "nosuch"}, "GenericError",
		"Cannot find device='' nor node-name='nosuch'")
	d.MustFail("block-export-add", map[string]any{"type": "nbd", "id": "e0", "node-name": "ro", "writable": true}, "GenericError",
		"Cannot export read-only node as writable")
	d.MustFail("block-export-add", map[string]any{"type": "nbd", "id": "e0", "node-name": "ro"}, "GenericError",
		"NBD server not running")
	startNBD(d)
	d.MustFail("block-export-add", map[string]any{"type": "nbd", "id": "e0", "node-name": "ro", "writable": true}, "GenericError",
		"Cannot export read-only node as writable")
	d.Cmd("block-export-add", map[string]any{"type": "nbd", "id": "e0", "node-name": "ro"})
}
