package iotests

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// TestQcow2InteropMatrix: images qemu-img makes, in every shape a user may
// have, are exported by the daemon and must read exactly as qemu-img reads
// the file itself; then writes through a writable export must leave an
// image that qemu-img check passes and that equals a raw file given the
// same writes.
func TestQcow2InteropMatrix(t *testing.T) {
	kinds := []struct{ name, opts string }{
		{"cluster 512", "cluster_size=512"},
		{"cluster 4k", "cluster_size=4096"},
		{"cluster 64k", "cluster_size=65536"},
		{"cluster 2M", "cluster_size=2097152"},
		{"v2", "compat=0.10"},
		{"refcount 1", "refcount_bits=1"},
		{"refcount 64", "refcount_bits=64"},
		{"lazy refcounts", "lazy_refcounts=on"},
		{"extended l2", "extended_l2=on,cluster_size=131072"},
		{"zstd", "compression_type=zstd"},
	}
	d := start(t)
	sock := startNBD(d)
	for i, k := range kinds {
		t.Run(k.name, func(t *testing.T) {
			img := d.Path(fmt.Sprintf("m%d.qcow2", i))
			raw := d.Path(fmt.Sprintf("m%d.raw", i))
			mkRaw(t, raw, "16M")
			run(t, "qemu-io", "-f", "raw", "-c", "write -P 0x21 0 3M", "-c", "write -P 0x42 5M 1M", "-c", "write -P 0x63 9000 20000", raw)
			// Compressed clusters where the format allows, then plain data
			// and zero clusters on top.
			run(t, "qemu-img", "convert", "-c", "-f", "raw", "-O", "qcow2", "-o", k.opts, raw, img)
			run(t, "qemu-io", "-c", "write -P 0x7e 1M 64k", "-c", "write -z 2M 512k", "-c", "write -P 0x11 12M 100k", img)
			run(t, "qemu-io", "-f", "raw", "-c", "write -P 0x7e 1M 64k", "-c", "write -z 2M 512k", "-c", "write -P 0x11 12M 100k", raw)

			node := fmt.Sprintf("m%d", i)
			d.Cmd("blockdev-add", map[string]any{"driver": "qcow2", "node-name": node, "file": map[string]any{"driver": "file", "filename": img}})
			d.Cmd("block-export-add", map[string]any{"type": "nbd", "id": node, "node-name": node, "writable": true})
			uri := nbdURI(sock, node)
			run(t, "qemu-img", "compare", "-U", "-f", "raw", "-F", "raw", uri, raw)

			ops := []string{"write -P 0x5a 0 4k", "write -P 0x5b 1000 70000", "write -z 5M 64k", "write -P 0x5c 15M 1M", "write -P 0x5d 3M 2M"}
			var args []string
			for _, o := range ops {
				args = append(args, "-c", o)
			}
			run(t, "qemu-io", append(append([]string{"-f", "raw"}, args...), uri)...)
			run(t, "qemu-io", append(append([]string{"-f", "raw"}, args...), raw)...)
			d.DelExport(node)
			d.WaitEvent("BLOCK_EXPORT_DELETED", 10*time.Second)
			d.Cmd("blockdev-del", map[string]any{"node-name": node})
			out := run(t, "qemu-img", "check", img)
			if !strings.Contains(out, "No errors were found") {
				t.Errorf("qemu-img check:\n%s", out)
			}
			run(t, "qemu-img", "compare", "-F", "raw", img, raw)
		})
	}
}
