package qcow2

import (
	"context"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// qemuOps are qemu-io commands for an image of cluster size cs: plain,
// unaligned, zero, compressed and discarded writes, and writes into
// compressed and zero clusters.
func qemuOps(cs int64, compress bool) []string {
	ops := []string{
		fmt.Sprintf("write -P 0x11 1000 %d", cs+5000),
		fmt.Sprintf("write -P 0x22 %d %d", 4*cs, 2*cs),
		fmt.Sprintf("write -z %d %d", 5*cs, cs/2),
		fmt.Sprintf("write -z -u %d %d", 12*cs, 2*cs),
		fmt.Sprintf("write -P 0x66 %d %d", 12*cs+cs/4, 512),
		fmt.Sprintf("discard %d %d", 4*cs, cs),
		fmt.Sprintf("write -P 0x55 %d %d", 15*cs+cs/2, cs),
	}
	if compress {
		ops = append(ops,
			fmt.Sprintf("write -c -P 0x33 %d %d", 8*cs, 2*cs),
			fmt.Sprintf("write -c -P 0x34 %d %d", 10*cs, cs),
			fmt.Sprintf("write -P 0x44 %d 200", 8*cs+100),
		)
	}
	return ops
}

type interopCase struct {
	name     string
	create   string // -o options
	cs       int64
	compress bool
	backing  string // "", "relative", "absolute", "probed", "raw", "chain"
	snapshot bool
	dirty    bool // leave the image dirty (lazy refcounts, qemu-io abort)
}

func interopCases() []interopCase {
	return []interopCase{
		{name: "c512", create: "cluster_size=512", cs: 512},
		{name: "c1k-v2", create: "cluster_size=1k,compat=0.10", cs: 1024, compress: true},
		{name: "c2k-rb4", create: "cluster_size=2k,refcount_bits=4", cs: 2048, compress: true},
		{name: "c4k-rb1", create: "cluster_size=4k,refcount_bits=1", cs: 4096},
		{name: "c8k-rb32", create: "cluster_size=8k,refcount_bits=32", cs: 8192, compress: true},
		{name: "c16k-extl2", create: "cluster_size=16k,extended_l2=on", cs: 16384, compress: true},
		{name: "c32k-rb64-lazy", create: "cluster_size=32k,refcount_bits=64,lazy_refcounts=on", cs: 32768, compress: true},
		{name: "c64k", create: "", cs: 65536, compress: true},
		{name: "c64k-zstd", create: "compression_type=zstd", cs: 65536, compress: true},
		{name: "c128k-v2", create: "cluster_size=128k,compat=0.10", cs: 128 << 10, compress: true},
		{name: "c256k-extl2-zstd", create: "cluster_size=256k,extended_l2=on,compression_type=zstd", cs: 256 << 10, compress: true},
		{name: "c512k-rb8", create: "cluster_size=512k,refcount_bits=8", cs: 512 << 10, compress: true},
		{name: "c1m-lazy", create: "cluster_size=1M,lazy_refcounts=on", cs: 1 << 20},
		{name: "c2m-extl2", create: "cluster_size=2M,extended_l2=on", cs: 2 << 20, compress: true},
		{name: "backing-relative", cs: 65536, backing: "relative"},
		{name: "backing-absolute-v2", create: "compat=0.10,cluster_size=4k", cs: 4096, backing: "absolute"},
		{name: "backing-probed", cs: 65536, backing: "probed"},
		{name: "backing-raw", create: "cluster_size=8k", cs: 8192, backing: "raw"},
		{name: "backing-chain-extl2", create: "extended_l2=on,cluster_size=32k", cs: 32768, backing: "chain"},
		{name: "snapshots", cs: 65536, compress: true, snapshot: true},
		{name: "snapshots-extl2", create: "extended_l2=on", cs: 65536, snapshot: true},
		{name: "dirty-lazy", create: "lazy_refcounts=on,cluster_size=4k", cs: 4096, dirty: true},
	}
}

// TestQemuImagesReadAndWrite reads images qemu made and wrote (every
// cluster size, v2/v3, refcount widths, lazy refcounts, extended L2,
// zlib/zstd, backing chains, snapshots) and compares every byte with
// qemu-img convert; then writes into them and has qemu-img check and
// compare the result.
func TestQemuImagesReadAndWrite(t *testing.T) {
	for _, tc := range interopCases() {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			testInterop(t, tc)
		})
	}
}

// makeInteropImage makes the image of a case with qemu-img and qemu-io.
func makeInteropImage(t *testing.T, tc interopCase) string {
	dir := t.TempDir()
	size := max(20*tc.cs, 4<<20)
	p := filepath.Join(dir, "top.qcow2")
	create := []string{"create", "-q", "-f", "qcow2"}
	if tc.create != "" {
		create = append(create, "-o", tc.create)
	}
	switch tc.backing {
	case "":
	case "raw":
		base := filepath.Join(dir, "base.raw")
		if err := os.WriteFile(base, pattern(9, int(size/2)), 0o644); err != nil {
			t.Fatal(err)
		}
		create = append(create, "-b", "base.raw", "-F", "raw")
	case "chain":
		base := filepath.Join(dir, "base.qcow2")
		qemuImg(t, "create", "-q", "-f", "qcow2", "-o", "cluster_size=4k", base, fmt.Sprint(size))
		qemuIO(t, base, fmt.Sprintf("write -P 0x71 0 %d", size))
		mid := filepath.Join(dir, "mid.qcow2")
		qemuImg(t, "create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", mid, fmt.Sprint(size-1<<20))
		qemuIO(t, mid, fmt.Sprintf("write -P 0x72 %d %d", tc.cs/2, 3*tc.cs), "write -z 1M 64k")
		create = append(create, "-b", mid, "-F", "qcow2")
	default:
		base := filepath.Join(dir, "base.qcow2")
		qemuImg(t, "create", "-q", "-f", "qcow2", base, fmt.Sprint(size+1<<20))
		qemuIO(t, base, fmt.Sprintf("write -P 0x61 0 %d", size+1<<20), "write -z 64k 64k")
		name := "base.qcow2"
		if tc.backing == "absolute" {
			name = base
		}
		create = append(create, "-b", name, "-F", "qcow2")
	}
	create = append(create, p, fmt.Sprint(size))
	qemuImg(t, create...)
	if tc.backing == "probed" {
		dropBackingFormat(t, p)
	}
	qemuIO(t, p, qemuOps(tc.cs, tc.compress)...)
	if tc.snapshot {
		qemuImg(t, "snapshot", "-c", "s1", p)
		qemuIO(t, p, fmt.Sprintf("write -P 0x99 %d %d", tc.cs/2, 5*tc.cs), fmt.Sprintf("write -z %d %d", 15*tc.cs, tc.cs))
		qemuImg(t, "snapshot", "-c", "s2", p)
	}
	if tc.dirty {
		out, _ := execOut("qemu-io", "-f", "qcow2", "-c", "write -P 0x12 100k 300k", "-c", "abort", p)
		_ = out
		info := qemuImg(t, "info", "-U", p)
		if !strings.Contains(info, "dirty flag: true") && !strings.Contains(info, "corrupt: false") {
			t.Logf("image not dirty? %s", info)
		}
	}
	return p
}

func testInterop(t *testing.T, tc interopCase) {
	p := makeInteropImage(t, tc)
	want := rawContents(t, p)
	var snap []byte
	if tc.snapshot {
		snap = snapshotContents(t, p, "s1")
	}

	// Read-only first (a dirty image is not repaired read-only).
	g := newGraph()
	n, r := openImage(t, g, "q", p, map[string]any{"read-only": true})
	got := readAll(t, r)
	if d := firstDiff(got, want); d != "" {
		t.Fatalf("read: %s", d)
	}
	if !tc.dirty {
		checkMapAgrees(t, r, p)
	}
	_ = n
	closeImage(t, g, r, "q")

	// Then read-write: write more, and have qemu check the result.
	n, r = openImage(t, g, "q", p, nil)
	if d := firstDiff(readAll(t, r), want); d != "" {
		t.Fatalf("read after read-write open: %s", d)
	}
	m := &model{data: want, cluster: tc.cs, discardZeroes: !strings.Contains(tc.create, "compat=0.10") || tc.backing == ""}
	rng := rand.New(rand.NewPCG(uint64(tc.cs), uint64(len(tc.name))))
	randomOps(t, r, m, rng, 60, 3*tc.cs)
	if d := firstDiff(readAll(t, r), m.data); d != "" {
		t.Fatalf("read after writes: %s", d)
	}
	if err := r.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	checkMapAgrees(t, r, p)
	closeImage(t, g, r, "q")
	_ = n
	qemuCheck(t, p, false)
	if d := firstDiff(rawContents(t, p), m.data); d != "" {
		t.Fatalf("qemu reads after blockd wrote: %s", d)
	}
	if tc.snapshot {
		// The snapshots still hold what they held.
		if d := firstDiff(snapshotContents(t, p, "s1"), snap); d != "" {
			t.Fatalf("snapshot s1 changed: %s", d)
		}
		qemuImg(t, "snapshot", "-a", "s1", p)
		qemuCheck(t, p, false)
	}
}

// snapshotContents converts an internal snapshot to raw.
func snapshotContents(t testing.TB, path, name string) []byte {
	t.Helper()
	out := filepath.Join(t.TempDir(), "snap.raw")
	qemuImg(t, "convert", "-U", "-l", "snapshot.name="+name, "-O", "raw", path, out)
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func execOut(name string, args ...string) (string, error) {
	out, err := execCommand(name, args...).CombinedOutput()
	return string(out), err
}

// dropBackingFormat renames the backing format header extension to an
// unknown type, so that the backing file's format must be probed.
func dropBackingFormat(t testing.TB, path string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	head := make([]byte, 4096)
	if _, err := f.ReadAt(head, 0); err != nil {
		t.Fatal(err)
	}
	off := int(binary.BigEndian.Uint32(head[100:]))
	for off+8 <= len(head) {
		typ := binary.BigEndian.Uint32(head[off:])
		l := int(binary.BigEndian.Uint32(head[off+4:]))
		if typ == 0 {
			break
		}
		if typ == extBackingFormat {
			binary.BigEndian.PutUint32(head[off:], 0x0badf00d)
			if _, err := f.WriteAt(head[off:off+4], int64(off)); err != nil {
				t.Fatal(err)
			}
			return
		}
		off += 8 + (l+7)&^7
	}
	t.Fatal("no backing format extension")
}
