package iotests

import (
	"encoding/json"
	"fmt"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// imageBitmaps lists an image's persistent bitmaps as qemu-img info sees
// them (-U: the daemon may hold the image): "name:granularity:flags".
func imageBitmaps(t *testing.T, img string) []string {
	t.Helper()
	var info struct {
		FormatSpecific struct {
			Data struct {
				Bitmaps []struct {
					Name        string   `json:"name"`
					Granularity int64    `json:"granularity"`
					Flags       []string `json:"flags"`
				} `json:"bitmaps"`
			} `json:"data"`
		} `json:"format-specific"`
	}
	if err := json.Unmarshal([]byte(run(t, "qemu-img", "info", "-U", "--output=json", img)), &info); err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, b := range info.FormatSpecific.Data.Bitmaps {
		out = append(out, fmt.Sprintf("%s:%d:%s", b.Name, b.Granularity, strings.Join(b.Flags, ",")))
	}
	return out
}

// bitmapDirtyRanges reads a persistent bitmap's dirty ranges with qemu-nbd
// and nbdinfo, QEMU's own reader: "offset+length" strings.
func bitmapDirtyRanges(t *testing.T, dir, img, bitmap string) []string {
	t.Helper()
	sock := dir + "/qemu-nbd.sock"
	cmd := exec.Command("qemu-nbd", "-r", "-k", sock, "-B", bitmap, "-f", "qcow2", img)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	if err := waitSocket(sock, done); err != nil {
		t.Fatalf("qemu-nbd: %v", err)
	}
	out := run(t, "nbdinfo", "--map=qemu:dirty-bitmap:"+bitmap, nbdURI(sock, ""))
	select { // qemu-nbd exits when its one client goes
	case <-done:
	case <-time.After(10 * time.Second):
		_ = cmd.Process.Kill()
		t.Fatal("qemu-nbd did not exit")
	}
	var ranges []string
	for _, l := range strings.Split(out, "\n") {
		if f := strings.Fields(l); len(f) == 4 && f[3] == "dirty" {
			ranges = append(ranges, f[0]+"+"+f[1])
		}
	}
	return ranges
}

// TestQcow2PersistentBitmap: an image with bitmaps from qemu-img is opened
// read-write with blockdev-add, written through an NBD export and
// deleted; the enabled bitmap then holds what qemu-io wrote before and
// what the client wrote through the daemon, the disabled one nothing,
// neither is left in use, and the image checks clean with the expected
// data. While the node is open the bitmaps are marked in use in the
// image.
func TestQcow2PersistentBitmap(t *testing.T) {
	d := start(t)
	img, ref := d.Path("bm.qcow2"), d.Path("ref.raw")
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", img, "4M")
	run(t, "qemu-img", "bitmap", "--add", "-g", "64k", img, "b0")
	run(t, "qemu-img", "bitmap", "--add", "-g", "4k", "--disable", img, "off")
	run(t, "qemu-io", "-f", "qcow2", "-c", "write -P 1 0 64k", img)
	run(t, "qemu-img", "create", "-q", "-f", "raw", ref, "4M")
	run(t, "qemu-io", "-f", "raw", "-c", "write -P 1 0 64k", "-c", "write -P 2 1M 128k", "-c", "write -P 3 3M 4k", ref)

	d.Cmd("blockdev-add", map[string]any{"driver": "qcow2", "node-name": "n",
		"file": map[string]any{"driver": "file", "filename": img}})
	if got, want := imageBitmaps(t, img), []string{"b0:65536:in-use,auto", "off:4096:in-use"}; !slices.Equal(got, want) {
		t.Errorf("while open: %v, want %v", got, want)
	}
	var nodes []map[string]any
	d.CmdInto("query-named-block-nodes", map[string]any{"flat": true}, &nodes)
	for _, n := range nodes {
		if n["node-name"] != "n" {
			continue
		}
		data := n["image"].(map[string]any)["format-specific"].(map[string]any)["data"].(map[string]any)
		got, _ := json.Marshal(data["bitmaps"])
		want := `[{"flags":["in-use","auto"],"granularity":65536,"name":"b0"},{"flags":["in-use"],"granularity":4096,"name":"off"}]`
		if string(got) != want {
			t.Errorf("query-named-block-nodes image bitmaps: %s, want %s", got, want)
		}
	}
	sock := d.Path("nbd.sock")
	d.Cmd("nbd-server-start", map[string]any{"addr": unixAddr(sock)})
	d.Cmd("block-export-add", map[string]any{"type": "nbd", "id": "e0", "node-name": "n", "writable": true})
	run(t, "qemu-io", "-f", "raw", "-c", "write -P 2 1M 128k", "-c", "write -P 3 3M 4k", nbdURI(sock, "n"))
	d.DelExport("e0")
	d.Cmd("blockdev-del", map[string]any{"node-name": "n"})

	if got, want := imageBitmaps(t, img), []string{"b0:65536:auto", "off:4096:"}; !slices.Equal(got, want) {
		t.Errorf("after blockdev-del: %v, want %v", got, want)
	}
	run(t, "qemu-img", "check", img)
	run(t, "qemu-img", "compare", "-f", "qcow2", "-F", "raw", img, ref)
	want := []string{"0+65536", fmt.Sprint(1<<20) + "+131072", fmt.Sprint(3<<20) + "+65536"}
	if got := bitmapDirtyRanges(t, d.Dir, img, "b0"); !slices.Equal(got, want) {
		t.Errorf("b0's dirty ranges: %v, want %v", got, want)
	}
	if got := bitmapDirtyRanges(t, d.Dir, img, "off"); len(got) != 0 {
		t.Errorf("the disabled bitmap recorded %v", got)
	}
	// qemu-img can go on editing what the daemon stored.
	run(t, "qemu-img", "bitmap", "--merge", "b0", img, "off")
	run(t, "qemu-img", "bitmap", "--remove", img, "b0")
	run(t, "qemu-img", "check", img)
	if got, want := imageBitmaps(t, img), []string{"off:4096:"}; !slices.Equal(got, want) {
		t.Errorf("after qemu-img's edits: %v, want %v", got, want)
	}
}

// TestQcow2PersistentBitmapQMP: a persistent bitmap made with
// block-dirty-bitmap-add records writes through an NBD export and is in
// the image after blockdev-del, where QEMU's reader sees the same dirty
// ranges; opened again it counts what it counted before; and
// block-dirty-bitmap-remove takes it out of the image at once.
func TestQcow2PersistentBitmapQMP(t *testing.T) {
	d := start(t)
	img := d.Path("p.qcow2")
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", img, "4M")
	open := func() {
		d.Cmd("blockdev-add", map[string]any{"driver": "qcow2", "node-name": "n",
			"file": map[string]any{"driver": "file", "filename": img}})
	}
	open()
	addBitmap(d, "n", "p", "persistent", true, "granularity", 65536)
	addBitmap(d, "n", "t", "granularity", 65536) // not persistent: never stored
	if got, want := imageBitmaps(t, img), []string(nil); !slices.Equal(got, want) {
		t.Errorf("a new bitmap is stored at close, not before: %v", got)
	}
	sock := d.Path("nbd.sock")
	d.Cmd("nbd-server-start", map[string]any{"addr": unixAddr(sock)})
	d.Cmd("block-export-add", map[string]any{"type": "nbd", "id": "e0", "node-name": "n", "writable": true})
	run(t, "qemu-io", "-f", "raw", "-c", "write -P 7 64k 64k", "-c", "write -P 8 2M 4k", nbdURI(sock, "n"))
	d.DelExport("e0")
	wantBitmaps(t, d, "n", bm("t", 65536, 2*65536, true, false), bm("p", 65536, 2*65536, true, true))
	d.Cmd("blockdev-del", map[string]any{"node-name": "n"})

	if got, want := imageBitmaps(t, img), []string{"p:65536:auto"}; !slices.Equal(got, want) {
		t.Errorf("after blockdev-del: %v, want %v", got, want)
	}
	run(t, "qemu-img", "check", img)
	want := []string{"65536+65536", fmt.Sprint(2<<20) + "+65536"}
	if got := bitmapDirtyRanges(t, d.Dir, img, "p"); !slices.Equal(got, want) {
		t.Errorf("p's dirty ranges: %v, want %v", got, want)
	}

	open()
	wantBitmaps(t, d, "n", bm("p", 65536, 2*65536, true, true))
	d.Cmd("block-dirty-bitmap-remove", map[string]any{"node": "n", "name": "p"})
	if got := imageBitmaps(t, img); len(got) != 0 {
		t.Errorf("after block-dirty-bitmap-remove the image still has %v", got)
	}
	d.Cmd("blockdev-del", map[string]any{"node-name": "n"})
	run(t, "qemu-img", "check", img)
}

// TestQcow2PersistentBitmapKill9: a daemon killed while a persistent
// bitmap it loaded is dirty leaves it marked in use in the image (a
// bitmap added since is not in the image yet, in either daemon); the
// next daemon that opens the image reports it inconsistent and refuses
// to use it (never silently wrong) until it is removed; qemu-img check
// is clean.
func TestQcow2PersistentBitmapKill9(t *testing.T) {
	d := start(t)
	img := d.Path("disk.qcow2")
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", img, "64M")
	run(t, "qemu-img", "bitmap", "--add", img, "b0")
	sock := startNBD(d)
	addQcow2(d, "disk", "disk.qcow2", nil)
	d.Cmd("block-export-add", map[string]any{"type": "nbd", "id": "e0", "node-name": "disk", "writable": true})
	run(t, "qemu-io", "-f", "raw", "-c", "write -P 0x42 1M 1M", nbdURI(sock, "disk"))
	if err := d.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-d.done
	if got, want := imageBitmaps(t, img), []string{"b0:65536:in-use,auto"}; !slices.Equal(got, want) {
		t.Errorf("qemu-img info after the kill: %v, want %v", got, want)
	}
	run(t, "qemu-img", "check", img)
	d2 := start(t)
	d2.Cmd("blockdev-add", map[string]any{"driver": "qcow2", "node-name": "disk",
		"file": map[string]any{"driver": "file", "filename": img}})
	got := bitmapsOf(t, d2, "disk")
	if len(got) != 1 || got[0]["name"] != "b0" || got[0]["inconsistent"] != true {
		t.Errorf("the bitmap after the kill: %v, want b0 inconsistent", got)
	}
	d2.MustFail("block-dirty-bitmap-clear", map[string]any{"node": "disk", "name": "b0"}, "GenericError",
		"Bitmap 'b0' is inconsistent and cannot be used")
	d2.Cmd("block-dirty-bitmap-remove", map[string]any{"node": "disk", "name": "b0"})
	d2.Quit()
	if got := imageBitmaps(t, img); len(got) != 0 {
		t.Errorf("bitmaps left in the image: %v", got)
	}
	run(t, "qemu-img", "check", img)
}
