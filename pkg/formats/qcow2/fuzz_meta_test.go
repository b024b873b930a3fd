package qcow2

import (
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/blockd/blockd/internal/fuzzcheck"
)

// FuzzRefcounts, FuzzSnapshots and FuzzBitmaps aim the mutations at one
// structure of valid images: the bytes of the refcount table and blocks,
// of the snapshot table and the snapshots' L1 tables, of the bitmaps
// extension, directory and tables. A random patch of the whole file
// (FuzzTables) rarely keeps the rest of the image valid enough to reach
// them. Each input patches the structure, may set the dirty bit (so that
// a read-write open rebuilds the refcounts, walking every table: the only
// code that reads the bitmap directory) and opens the image read-only or
// read-write through exerciseImage.

// region is a byte range of an image file.
type region struct{ off, n int }

// patchRegions applies patch records to img: two bytes of position in
// the concatenation of regions, one byte of length (1 to 8), the bytes.
func patchRegions(img []byte, regions []region, patches []byte) {
	total := 0
	for _, r := range regions {
		total += r.n
	}
	for total > 0 && len(patches) >= 4 {
		pos := int(binary.BigEndian.Uint16(patches)) % total
		n := min(int(patches[2]%8)+1, len(patches)-3)
		val := patches[3 : 3+n]
		patches = patches[3+n:]
		for _, r := range regions {
			if pos >= r.n {
				pos -= r.n
				continue
			}
			for i := range val {
				if p := r.off + pos + i; p < len(img) && pos+i < r.n {
					img[p] = val[i]
				}
			}
			break
		}
	}
}

// fuzzMeta is the body of the three targets: locate finds the regions of
// a seed image.
func fuzzMeta(f *testing.F, seeds [][]byte, locate func(t testing.TB, img []byte) []region) {
	regions := make([][]region, len(seeds))
	for i, s := range seeds {
		regions[i] = locate(f, s)
		for mode := uint8(0); mode < 4; mode++ {
			f.Add(uint8(i), mode, []byte{})
		}
		f.Add(uint8(i), uint8(1), []byte{0, 0, 7, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xf0})
		f.Add(uint8(i), uint8(1), []byte{0, 9, 3, 0x7f, 0xff, 0xff, 0xff})
	}
	f.Fuzz(func(t *testing.T, which, mode uint8, patches []byte) {
		i := int(which) % len(seeds)
		img := append([]byte(nil), seeds[i]...)
		patchRegions(img, regions[i], patches)
		if mode&1 != 0 && binary.BigEndian.Uint32(img[4:]) == 3 {
			img[offIncompatible+7] |= incompatDirty
		}
		if bigTables(img) {
			return
		}
		fuzzcheck.Bounded(t, func() { exerciseImage(t, img, mode&2 == 0) })
	})
}

// metaSeeds makes an image for each list of commands (argv lists, "IMG"
// standing for the image's path), with qemu-img and qemu-io.
func metaSeeds(t testing.TB, images ...[][]string) [][]byte {
	dir := t.TempDir()
	var out [][]byte
	for i, cmds := range images {
		p := filepath.Join(dir, fmt.Sprintf("m%d.qcow2", i))
		for _, argv := range cmds {
			args := slices.Clone(argv[1:])
			for j := range args {
				if args[j] == "IMG" {
					args[j] = p
				}
			}
			run(t, argv[0], args...)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, b)
	}
	return out
}

func mkCmd(opts string) []string {
	return []string{"qemu-img", "create", "-q", "-f", "qcow2", "-o", opts, "IMG", "64k"}
}
func ioCmd(cmd string) []string { return []string{"qemu-io", "-f", "qcow2", "-c", cmd, "IMG"} }
func imgCmd(args ...string) []string {
	if !slices.Contains(args, "IMG") {
		args = append(args, "IMG")
	}
	return append([]string{"qemu-img"}, args...)
}

// seedHeader parses a seed's header; seeds are valid images.
func seedHeader(t testing.TB, img []byte) *header {
	h, err := parseHeader(img[:min(len(img), 4096)])
	if err != nil {
		t.Fatalf("seed image: %v", err)
	}
	return h
}

// FuzzRefcounts patches the refcount table and the refcount blocks.
func FuzzRefcounts(f *testing.F) {
	fuzzMeta(f, fuzzSeeds(f), func(t testing.TB, img []byte) []region {
		h := seedHeader(t, img)
		cs := 1 << h.clusterBits
		rs := []region{{int(h.rtOffset), int(h.rtClusters) * cs}, {48, 12}} // and the header's fields
		for i := 0; i < int(h.rtClusters)*cs; i += 8 {
			if e := int(be64(img[int(h.rtOffset)+i:])); e != 0 && e+cs <= len(img) {
				rs = append(rs, region{e, cs})
			}
		}
		return rs
	})
}

// FuzzSnapshots patches the snapshot table, the snapshots' L1 tables and
// the header fields that point at the table.
func FuzzSnapshots(f *testing.F) {
	seeds := metaSeeds(f,
		[][]string{mkCmd("cluster_size=512"), ioCmd("write -P 1 0 1k"), imgCmd("snapshot", "-c", "s1"),
			ioCmd("write -P 2 512 1k"), imgCmd("snapshot", "-c", "second"), ioCmd("write -P 3 0 512")},
		[][]string{mkCmd("cluster_size=512,compat=0.10"), ioCmd("write -P 1 0 2k"), imgCmd("snapshot", "-c", "s1")},
		[][]string{mkCmd("cluster_size=16k,extended_l2=on"), ioCmd("write -P 1 4k 4k"), imgCmd("snapshot", "-c", "s1"),
			ioCmd("write -z 4k 2k")},
	)
	fuzzMeta(f, seeds, func(t testing.TB, img []byte) []region {
		h := seedHeader(t, img)
		rs := []region{{60, 12}}
		off := int(h.snapshotsOffset)
		for i := 0; i < int(h.nbSnapshots); i++ {
			e := img[off:]
			l1, l1n := int(be64(e)), int(be32(e[8:]))
			n := int(alignUp(int64(40+int(be32(e[36:]))+int(binary.BigEndian.Uint16(e[12:]))+int(binary.BigEndian.Uint16(e[14:]))), 8))
			rs = append(rs, region{off, n}, region{l1, l1n * 8})
			off += n
		}
		return rs
	})
}

// FuzzBitmaps patches the bitmaps header extension, the bitmap directory
// and the bitmap tables: every open loads the bitmaps (bitmaps.go), a
// read-write one marks them in use and the close stores them again; the
// refcount repair of a dirty image counts their clusters.
func FuzzBitmaps(f *testing.F) {
	seeds := metaSeeds(f,
		[][]string{mkCmd("cluster_size=512"), imgCmd("bitmap", "--add", "-g", "512", "IMG", "b0"),
			ioCmd("write -P 1 0 1k"), imgCmd("bitmap", "--add", "--disable", "IMG", "second")},
		[][]string{mkCmd("cluster_size=4k,lazy_refcounts=on"), imgCmd("bitmap", "--add", "IMG", "b0"),
			ioCmd("write -P 1 8k 4k")},
	)
	fuzzMeta(f, seeds, func(t testing.TB, img []byte) []region {
		h := seedHeader(t, img)
		if !h.hasBitmaps {
			t.Fatal("seed image without bitmaps")
		}
		rs := []region{{offAutoclear, 8}, {bitmapsExtOffset(img, h), 24}, {int(h.bitmaps.dirOffset), int(h.bitmaps.dirSize)}}
		for off, i := int(h.bitmaps.dirOffset), 0; i < int(h.bitmaps.nb); i++ {
			e := img[off:]
			rs = append(rs, region{int(be64(e)), int(be32(e[8:])) * 8})
			off += (24 + int(be32(e[20:])) + int(binary.BigEndian.Uint16(e[18:])) + 7) &^ 7
		}
		return rs
	})
}

// bitmapsExtOffset finds the data of the bitmaps header extension.
func bitmapsExtOffset(img []byte, h *header) int {
	for off := int(h.headerLength); off+8 <= len(img); {
		typ, n := be32(img[off:]), int(be32(img[off+4:]))
		if typ == extBitmaps {
			return off + 8
		}
		off += 8 + (n+7)&^7
	}
	panic("no bitmaps extension")
}
