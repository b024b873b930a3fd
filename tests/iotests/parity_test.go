package iotests

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestQueriesMatchQSD builds the same graphs in blockd and in
// qemu-storage-daemon and compares what query-named-block-nodes returns,
// byte for byte once paths and generated node names are masked: the
// reply a client parses must not tell the daemons apart.
//
// The images are made once per scenario and hard-linked into each
// daemon's directory: actual-size is the file's allocation, and two copies
// made one after the other need not be laid out alike (ext4 adds an extent
// block when a busy disk fragments one of them).
func TestQueriesMatchQSD(t *testing.T) {
	skipOnQSD(t, "it compares blockd with qsd, so it runs in blockd mode")
	if _, err := exec.LookPath("qemu-storage-daemon"); err != nil {
		t.Skip("qemu-storage-daemon is not installed")
	}
	scenarios := []struct {
		name    string
		prepare func(dir string) // makes the scenario's images, once
		build   func(d *Daemon)
	}{
		{"chain from headers", nil, func(d *Daemon) {
			d.Cmd("blockdev-add", map[string]any{"driver": "qcow2", "node-name": "top", "file": map[string]any{"driver": "file", "filename": d.Path("top.qcow2"), "node-name": "top-file"}})
		}},
		{"explicit chain with filters", nil, func(d *Daemon) {
			d.Cmd("object-add", map[string]any{"qom-type": "throttle-group", "id": "tg", "limits": map[string]any{"iops-total": 1000}})
			d.Cmd("blockdev-add", map[string]any{"driver": "qcow2", "node-name": "base", "file": map[string]any{"driver": "file", "node-name": "base-file", "filename": d.Path("base.qcow2")}})
			d.Cmd("blockdev-add", map[string]any{"driver": "qcow2", "node-name": "mid", "file": map[string]any{"driver": "file", "node-name": "mid-file", "filename": d.Path("mid.qcow2")}, "backing": "base"})
			d.Cmd("blockdev-add", map[string]any{"driver": "throttle", "node-name": "flt", "throttle-group": "tg", "file": "mid"})
			d.Cmd("blockdev-add", map[string]any{"driver": "qcow2", "node-name": "top", "file": map[string]any{"driver": "file", "node-name": "top-file", "filename": d.Path("top.qcow2")}, "backing": "flt"})
			d.Cmd("blockdev-add", map[string]any{"driver": "copy-on-read", "node-name": "cor", "file": "top"})
		}},
		{"protocols and windows", func(dir string) {
			mkRaw(t, filepath.Join(dir, "r.raw"), "1M")
		}, func(d *Daemon) {
			d.Cmd("blockdev-add", map[string]any{"driver": "null-co", "node-name": "n0"})
			d.Cmd("blockdev-add", map[string]any{"driver": "null-co", "node-name": "n2", "size": 4096, "read-zeroes": true})
			d.Cmd("blockdev-add", map[string]any{"driver": "blkdebug", "node-name": "dbg", "image": "n2"})
			d.Cmd("blockdev-add", map[string]any{"driver": "raw", "node-name": "win", "file": map[string]any{"driver": "file", "filename": d.Path("r.raw")}, "offset": 4096, "size": 8192})
			d.Cmd("blockdev-add", map[string]any{"driver": "raw", "node-name": "plain", "read-only": true, "file": map[string]any{"driver": "file", "filename": d.Path("r.raw")}})
		}},
		{"dirty bitmaps", func(dir string) {
			// Its file padded to whole sectors: qsd reports a file's size
			// rounded up to them.
			bm := filepath.Join(dir, "bm.qcow2")
			run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=512", bm, "1M")
			if err := os.Truncate(bm, 64<<10); err != nil {
				t.Fatal(err)
			}
		}, func(d *Daemon) {
			d.Cmd("blockdev-add", map[string]any{"driver": "qcow2", "node-name": "top", "file": map[string]any{"driver": "file", "filename": d.Path("bm.qcow2"), "node-name": "top-file"}})
			d.Cmd("blockdev-add", map[string]any{"driver": "null-co", "node-name": "n0", "size": 4096})
			for _, b := range []map[string]any{
				{"node": "top", "name": "b0"}, {"node": "top", "name": "b1", "granularity": 512, "disabled": true},
				{"node": "top-file", "name": "f"}, {"node": "n0", "name": "n", "granularity": 1 << 31},
			} {
				d.Cmd("block-dirty-bitmap-add", b)
			}
			d.Cmd("block-dirty-bitmap-merge", map[string]any{"node": "top", "target": "b1", "bitmaps": []any{"b0"}})
		}},
	}
	gen := regexp.MustCompile(`#block\d+`)
	for _, sc := range scenarios {
		t.Run(sc.name, func(t *testing.T) {
			images := t.TempDir()
			mkChain(t, images)
			if sc.prepare != nil {
				sc.prepare(images)
			}
			var got [2]string
			for i, bin := range []string{blockdBin, "qemu-storage-daemon"} {
				d := startBinary(t, bin)
				linkFiles(t, images, d.Dir)
				sc.build(d)
				var out []string
				for _, flat := range []bool{true, false} {
					r, err := d.Try("query-named-block-nodes", map[string]any{"flat": flat})
					if err != nil {
						t.Fatal(err)
					}
					out = append(out, strings.ReplaceAll(gen.ReplaceAllString(string(r), "#blockN"), d.Dir, "$DIR"))
				}
				got[i] = strings.Join(out, "\n")
				d.Quit()
			}
			if got[0] != got[1] {
				t.Errorf("query-named-block-nodes differs:\nblockd: %s\nqsd:    %s\nfirst difference at byte %d", got[0], got[1], firstDiff(got[0], got[1]))
			}
		})
	}
}

// linkFiles hard-links every file in from into to, under the same names.
func linkFiles(t *testing.T, from, to string) {
	t.Helper()
	entries, err := os.ReadDir(from)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if err := os.Link(filepath.Join(from, e.Name()), filepath.Join(to, e.Name())); err != nil {
			t.Fatal(err)
		}
	}
}

func firstDiff(a, b string) int {
	for i := 0; i < len(a) && i < len(b); i++ {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}
