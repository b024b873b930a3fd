package qcow2

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/blockd/blockd/pkg/block"
	"github.com/blockd/blockd/pkg/block/blocktest"
)

// The benchmarks compare qcow2 with raw on a page-cached temp file:
// the same requests through a qcow2 node and through a raw node.
//
//	go test -run '^$' -bench . -benchtime 2s ./pkg/formats/qcow2/

const (
	benchReadArea = 256 << 20 // the allocated area the read benchmarks use
	benchVirtual  = 64 << 30  // the write benchmarks' virtual size
)

type benchDev struct {
	g    *block.Graph
	r    *block.Root
	name string
	dir  string
}

func (d *benchDev) close(b *testing.B) {
	closeImage(b, d.g, d.r, d.name)
	os.RemoveAll(d.dir)
}

// benchDir is a directory on tmpfs when there is one (QCOW2_BENCH_DIR
// overrides): the page cache without write-back, so that the figures
// measure the drivers and not the disk.
func benchDir(b *testing.B) string {
	parent := os.Getenv("QCOW2_BENCH_DIR")
	if parent == "" {
		if st, err := os.Stat("/dev/shm"); err == nil && st.IsDir() {
			parent = "/dev/shm"
		}
	}
	if parent == "" {
		return b.TempDir()
	}
	dir, err := os.MkdirTemp(parent, "qcow2-bench")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// openBench opens a fresh qcow2 or raw device of size bytes; fill writes
// the first benchReadArea bytes.
func openBench(b *testing.B, kind string, size int64, fill bool) *benchDev {
	b.Helper()
	dir := benchDir(b)
	g := newGraph()
	d := &benchDev{g: g, name: "dev", dir: dir}
	var n *block.Node
	switch kind {
	case "qcow2":
		p := filepath.Join(dir, "img.qcow2")
		createImage(b, p, CreateOptions{Size: uint64(size)})
		n = blocktest.Open(b, g, nodeOpts("dev", p, nil))
	case "raw":
		p := filepath.Join(dir, "img.raw")
		if err := os.WriteFile(p, nil, 0o644); err != nil {
			b.Fatal(err)
		}
		if err := os.Truncate(p, size); err != nil {
			b.Fatal(err)
		}
		n = blocktest.Open(b, g, fmt.Sprintf(`{"driver":"raw","node-name":"dev","file":{"driver":"file","filename":%q}}`, p))
	}
	d.r = blocktest.NewRoot(b, n, block.PermConsistentRead|block.PermWrite, block.PermAll)
	if fill {
		buf := pattern(5, 1<<20)
		for off := int64(0); off < benchReadArea; off += int64(len(buf)) {
			if err := d.r.WriteAt(context.Background(), buf, off, 0); err != nil {
				b.Fatal(err)
			}
		}
		if err := d.r.Flush(context.Background()); err != nil {
			b.Fatal(err)
		}
	}
	return d
}

func benchKinds(b *testing.B, fn func(b *testing.B, kind string)) {
	for _, kind := range []string{"qcow2", "raw"} {
		b.Run(kind, func(b *testing.B) { fn(b, kind) })
	}
}

func benchRead(b *testing.B, bs int64, random bool) {
	benchKinds(b, func(b *testing.B, kind string) {
		d := openBench(b, kind, benchReadArea, true)
		defer d.close(b)
		buf := make([]byte, bs)
		ctx := context.Background()
		rng := rand.New(rand.NewPCG(1, 2))
		b.SetBytes(bs)
		b.ResetTimer()
		off := int64(0)
		for i := 0; i < b.N; i++ {
			if random {
				off = rng.Int64N(benchReadArea/bs) * bs
			}
			if err := d.r.ReadAt(ctx, buf, off, 0); err != nil {
				b.Fatal(err)
			}
			if off += bs; off >= benchReadArea {
				off = 0
			}
		}
	})
}

func BenchmarkSeqRead4K(b *testing.B)  { benchRead(b, 4096, false) }
func BenchmarkSeqRead1M(b *testing.B)  { benchRead(b, 1<<20, false) }
func BenchmarkRandRead4K(b *testing.B) { benchRead(b, 4096, true) }

// benchWrite writes into never written space: every qcow2 request
// allocates (4 KiB requests allocate one cluster in 16 sequentially, or
// one each at random; 1 MiB requests 16 clusters). A fresh image is used
// for every 256 MiB written, so that the dirty page cache stays small
// and both kinds see the same write-back conditions.
func benchWrite(b *testing.B, bs int64, random bool) {
	const perImage = 256 << 20
	benchKinds(b, func(b *testing.B, kind string) {
		buf := pattern(3, int(bs))
		ctx := context.Background()
		rng := rand.New(rand.NewPCG(1, 2))
		var d *benchDev
		var off, written int64
		b.SetBytes(bs)
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			if d == nil || written >= perImage {
				b.StopTimer()
				if d != nil {
					d.close(b)
				}
				d = openBench(b, kind, benchVirtual, false)
				off, written = 0, 0
				b.StartTimer()
			}
			if random {
				// A fresh 64 KiB cluster each time (almost always).
				off = rng.Int64N(benchVirtual/max(65536, bs)) * max(65536, bs)
			}
			if err := d.r.WriteAt(ctx, buf, off, 0); err != nil {
				b.Fatal(err)
			}
			off += bs
			written += bs
		}
		b.StopTimer()
		d.close(b)
	})
}

func BenchmarkSeqWrite4K(b *testing.B)  { benchWrite(b, 4096, false) }
func BenchmarkSeqWrite1M(b *testing.B)  { benchWrite(b, 1<<20, false) }
func BenchmarkRandWrite4K(b *testing.B) { benchWrite(b, 4096, true) }
func BenchmarkRandWrite1M(b *testing.B) { benchWrite(b, 1<<20, true) }
