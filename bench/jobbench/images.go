package main

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/blockd/blockd/bench/internal/benchutil"
)

// makeImages builds every image a case starts from in dir and returns
// their virtual size.
func makeImages(dir string) int64 {
	size := makeChain(dir)
	makeSparse(dir, size)
	makeIncremental(dir, size)
	makeText(dir, size)
	return size
}

// incrementalBytes is how much makeIncremental's bitmap marks dirty:
// what an incremental backup copies.
var incrementalBytes int64

// makeIncremental builds the images of an incremental backup:
// incbase.qcow2, random data over the whole disk (the last full
// backup), and incsrc.qcow2, the same disk after writes to a tenth of
// its 1 MiB blocks (picked by a seeded generator), which its persistent
// bitmap b0 recorded.
func makeIncremental(dir string, size int64) {
	raw := filepath.Join(dir, "incbase.raw")
	writeSparse(raw, size, []region{{0, size}}, 11)
	base := filepath.Join(dir, "incbase.qcow2")
	benchutil.MustRun("qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", raw, base)
	os.Remove(raw)
	src := filepath.Join(dir, "incsrc.qcow2")
	benchutil.MustRun("cp", base, src)
	benchutil.MustRun("qemu-img", "bitmap", "--add", src, "b0")
	pick := rand.New(rand.NewPCG(5, 6))
	args := []string{"-f", "qcow2"}
	incrementalBytes = 0
	for off := int64(0); off < size; off += 1 << 20 {
		if pick.IntN(10) == 0 {
			n := min(1<<20, size-off)
			args = append(args, "-c", fmt.Sprintf("write -q -P %d %d %d", 1+pick.IntN(254), off, n))
			incrementalBytes += n
		}
	}
	benchutil.MustRun("qemu-io", append(args, src)...)
}

// makeText builds text.qcow2: data of 4 bits of entropy a byte (it
// compresses to a bit over half), or with -text-from the contents of the
// files under a directory, in half of its 1 MiB blocks, holes elsewhere;
// the source of the compressed backups.
func makeText(dir string, size int64) {
	pick := rand.New(rand.NewPCG(5, 6))
	var regions []region
	for off := int64(0); off < size; off += 1 << 20 {
		if pick.IntN(2) == 0 {
			regions = append(regions, region{off, min(1<<20, size-off)})
		}
	}
	raw := filepath.Join(dir, "text.raw")
	if *textFrom != "" {
		writeFiles(raw, size, regions, *textFrom)
	} else {
		writeRegions(raw, size, regions, 11, true)
	}
	benchutil.MustRun("qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", raw, filepath.Join(dir, "text.qcow2"))
	os.Remove(raw)
}

// makeSparse builds sparse.qcow2: random data in a tenth of its 1 MiB
// blocks, picked by a seeded generator, and holes elsewhere, the image a
// mirror should copy in a tenth of the time of a full one.
func makeSparse(dir string, size int64) {
	pick := rand.New(rand.NewPCG(3, 4))
	var regions []region
	for off := int64(0); off < size; off += 1 << 20 {
		if pick.IntN(10) == 0 {
			regions = append(regions, region{off, min(1<<20, size-off)})
		}
	}
	raw := filepath.Join(dir, "sparse.raw")
	writeSparse(raw, size, regions, 9)
	benchutil.MustRun("qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", raw, filepath.Join(dir, "sparse.qcow2"))
	os.Remove(raw)
}

// makeChain builds base.qcow2 ◀ mid.qcow2 ◀ top.qcow2 in dir and returns
// their virtual size. Sizes below are for 1 GiB and scale with -size:
//
//	base: random data over 0-768M
//	mid:  random data in every other 64M block of 0-512M, plus 64 writes
//	      of 4-64K scattered over the whole disk
//	top:  random data in 16M at 32M (over mid and base) and 32M at 600M
//	      (over base), plus 32 scattered writes of 4-64K
//
// Each image is made standalone from a sparse raw file (qemu-img convert
// leaves holes unallocated) and then pointed at its backing file with an
// unsafe rebase, so what it does not allocate reads through. The data and
// offsets come from fixed seeds: every run copies the same chain.
func makeChain(dir string) int64 {
	raw := filepath.Join(dir, "base.raw")
	benchutil.MustRun("qemu-img", "create", "-q", "-f", "raw", raw, *sizeFlag)
	st, err := os.Stat(raw)
	benchutil.Check(err)
	size := st.Size()
	os.Remove(raw)
	u := size / 16 // 64M of a 1G disk
	pos := rand.New(rand.NewPCG(1, 2))
	scatter := func(regions []region, count int) []region {
		for i := 0; i < count; i++ {
			n := int64(1+pos.IntN(16)) << 12
			off := pos.Int64N((size-n)>>12) << 12
			regions = append(regions, region{off, n})
		}
		return regions
	}
	layers := []struct {
		name, backing string
		regions       []region
	}{
		{"base", "", []region{{0, 12 * u}}},
		{"mid", "base", scatter([]region{{0, u}, {2 * u, u}, {4 * u, u}, {6 * u, u}}, 64)},
		{"top", "mid", scatter([]region{{u / 2, u / 4}, {size * 600 / 1024, u / 2}}, 32)},
	}
	for seed, l := range layers {
		raw := filepath.Join(dir, l.name+".raw")
		writeSparse(raw, size, l.regions, uint64(seed))
		img := filepath.Join(dir, l.name+".qcow2")
		benchutil.MustRun("qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", raw, img)
		os.Remove(raw)
		if l.backing != "" {
			// Relative names: a copy of the directory is a chain of its own.
			benchutil.MustRun("qemu-img", "rebase", "-q", "-u", "-f", "qcow2", "-F", "qcow2", "-b", l.backing+".qcow2", img)
		}
	}
	return size
}

type region struct{ off, n int64 }

// writeSparse makes a sparse file of size bytes with random data from a
// seeded generator in the regions and holes elsewhere.
func writeSparse(path string, size int64, regions []region, seed uint64) {
	writeRegions(path, size, regions, seed, false)
}

// writeRegions is writeSparse, with data of 4 bits of entropy a byte
// when low is set.
func writeRegions(path string, size int64, regions []region, seed uint64, low bool) {
	f, err := os.Create(path)
	benchutil.Check(err)
	benchutil.Check(f.Truncate(size))
	var key [32]byte
	key[0] = byte(seed)
	gen := rand.NewChaCha8(key)
	buf := make([]byte, 1<<20)
	for _, r := range regions {
		for done := int64(0); done < r.n; done += int64(len(buf)) {
			b := buf[:min(int64(len(buf)), r.n-done)]
			gen.Read(b)
			if low {
				for i := range b {
					b[i] = 'a' + b[i]&15
				}
			}
			_, err := f.WriteAt(b, r.off+done)
			benchutil.Check(err)
		}
	}
	benchutil.Check(f.Close())
}

// allocated is how many bytes of img's chain are allocated at depths
// lo..hi (0 is img itself), from qemu-img map: what a stream of those
// images copies into img.
func allocated(img string, lo, hi int) int64 {
	out, err := exec.Command("qemu-img", "map", "--output=json", img).Output()
	benchutil.Check(err)
	var m []struct {
		Length  int64 `json:"length"`
		Depth   int   `json:"depth"`
		Present *bool `json:"present"`
		Data    bool  `json:"data"`
		Zero    bool  `json:"zero"`
	}
	benchutil.Check(json.Unmarshal(out, &m))
	var n int64
	for _, e := range m {
		present := e.Data || e.Zero
		if e.Present != nil {
			present = *e.Present
		}
		if present && e.Depth >= lo && e.Depth <= hi {
			n += e.Length
		}
	}
	return n
}

// faultIn maps n bytes of memory with every page faulted in, and frees
// them again. The freed pages are the first the kernel hands out next, so
// the page cache the stream writes and the daemon's buffers come from
// memory the machine has just backed. On a VM that returns free memory to
// its host (this one: free page reporting), the first touch of a returned
// page costs the toucher 2-5 s a GiB here, which would otherwise land on
// whichever daemon got such pages, and swamp the difference being measured.
func faultIn(n int64) {
	if n == 0 {
		return
	}
	b, err := syscall.Mmap(-1, 0, int(n), syscall.PROT_READ|syscall.PROT_WRITE,
		syscall.MAP_ANON|syscall.MAP_PRIVATE|syscall.MAP_POPULATE)
	benchutil.Check(err)
	benchutil.Check(syscall.Munmap(b))
}

// parseSize reads a size with an optional K, M, G or T suffix (powers
// of 1024), as qemu-img does.
func parseSize(s string) int64 {
	mult := int64(1)
	if i := strings.IndexAny(s, "KMGTkmgt"); i >= 0 && i == len(s)-1 {
		mult = 1 << (10 * (1 + strings.IndexByte("KMGT", byte(strings.ToUpper(s[i:])[0]))))
		s = s[:i]
	}
	v, err := strconv.ParseInt(s, 10, 64)
	benchutil.Check(err)
	return v * mult
}

func mib(n int64) float64 { return float64(n) / (1 << 20) }

// writeFiles fills the regions of a sparse raw file of size bytes with
// the contents of the regular files under root, one after another, in
// the order filepath.Walk visits them (again from the first when they
// run out).
func writeFiles(path string, size int64, regions []region, root string) {
	var data []byte
	var need int64
	for _, r := range regions {
		need += r.n
	}
	for len(data) < int(need) {
		before := len(data)
		benchutil.Check(filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
			if err != nil || !fi.Mode().IsRegular() || int64(len(data)) >= need {
				return nil
			}
			if b, err := os.ReadFile(p); err == nil {
				data = append(data, b...)
			}
			return nil
		}))
		if len(data) == before {
			panic("-text-from: no readable files under " + root)
		}
	}
	f, err := os.Create(path)
	benchutil.Check(err)
	benchutil.Check(f.Truncate(size))
	for _, r := range regions {
		_, err := f.WriteAt(data[:r.n], r.off)
		benchutil.Check(err)
		data = data[r.n:]
	}
	benchutil.Check(f.Close())
}
