package qcow2

import (
	"context"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"sync"
	"testing"

	"github.com/blockd/blockd/pkg/block"
)

// posByte is the byte every writer of the shared region writes at a
// position, so that overlapping writes in any order leave one result.
func posByte(off int64) byte { return byte(off*7 + off>>9 + 1) }

func posData(off, n int64) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = posByte(off + int64(i))
	}
	return b
}

// TestConcurrentWriters runs many goroutines at once: each owns a region
// (writes, zeroes, discards, flushes, reads, with its own model), and all
// write overlapping ranges of a shared, unallocated region. Afterwards
// the image must read as the models say and pass qemu-img check.
func TestConcurrentWriters(t *testing.T) {
	for _, tc := range []struct {
		name  string
		opts  CreateOptions
		extra map[string]any
		back  bool
	}{
		{name: "c64k", opts: CreateOptions{}},
		{name: "c4k-small-cache", opts: CreateOptions{ClusterSize: ptr(uint64(4096))}, extra: map[string]any{"l2-cache-size": 8192, "refcount-cache-size": 16384}},
		{name: "extl2-backing", opts: CreateOptions{ExtendedL2: ptr(true), ClusterSize: ptr(uint64(16384))}, back: true},
		{name: "lazy", opts: CreateOptions{LazyRefcounts: ptr(true), ClusterSize: ptr(uint64(8192))}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			const workers, regionSize, shared = 12, 1 << 20, 4 << 20
			size := int64(workers*regionSize + shared)
			dir := t.TempDir()
			p := filepath.Join(dir, "img.qcow2")
			opts := tc.opts
			opts.Size = uint64(size)
			base := make([]byte, size)
			if tc.back {
				b := filepath.Join(dir, "base.qcow2")
				qemuImg(t, "create", "-q", "-f", "qcow2", b, fmt.Sprint(size))
				qemuIO(t, b, fmt.Sprintf("write -P 0x3c 0 %d", size))
				base = rawContents(t, b)
				opts.BackingFile = ptr("base.qcow2")
				opts.BackingFmt = ptr(DriverName("qcow2"))
			}
			createImage(t, p, opts)
			cs := int64(65536)
			if opts.ClusterSize != nil {
				cs = int64(*opts.ClusterSize)
			}
			g := newGraph()
			_, r := openImage(t, g, "q", p, tc.extra)
			ctx := context.Background()
			sharedStart := int64(workers * regionSize)
			var wg sync.WaitGroup
			models := make([]*model, workers)
			errs := make(chan error, workers*2)
			for w := 0; w < workers; w++ {
				m := &model{data: append([]byte(nil), base[w*regionSize:(w+1)*regionSize]...), cluster: cs, discardZeroes: true}
				models[w] = m
				wg.Add(2)
				go func(w int) {
					defer wg.Done()
					rng := rand.New(rand.NewPCG(uint64(w), 11))
					start := int64(w * regionSize)
					for i := 0; i < 40; i++ {
						off := rng.Int64N(regionSize)
						l := min(1+rng.Int64N(128<<10), regionSize-off)
						var err error
						switch rng.IntN(8) {
						case 0:
							err = r.Zero(ctx, start+off, l, block.FlagMayUnmap)
							m.zero(off, l)
						case 1:
							// Discard works on whole clusters of the image;
							// keep the request inside the region.
							err = r.Discard(ctx, start+off, l)
							m.discard(off, l)
						case 2:
							err = r.Flush(ctx)
						case 3:
							got := make([]byte, l)
							if err = r.ReadAt(ctx, got, start+off, 0); err == nil {
								if d := firstDiff(got, m.data[off:off+l]); d != "" {
									err = fmt.Errorf("worker %d: read at %d: %s", w, off, d)
								}
							}
						default:
							p := pattern(rng.Uint64(), int(l))
							err = r.WriteAt(ctx, p, start+off, 0)
							m.write(off, p)
						}
						if err != nil {
							errs <- err
							return
						}
					}
				}(w)
				go func(w int) {
					defer wg.Done()
					rng := rand.New(rand.NewPCG(uint64(w), 12))
					for i := 0; i < 30; i++ {
						off := sharedStart + rng.Int64N(shared-64<<10)
						l := 1 + rng.Int64N(64<<10)
						if err := r.WriteAt(ctx, posData(off, l), off, 0); err != nil {
							errs <- err
							return
						}
						got := make([]byte, l)
						if err := r.ReadAt(ctx, got, off, 0); err != nil {
							errs <- err
							return
						}
						for i, b := range got {
							if b != posByte(off+int64(i)) {
								errs <- fmt.Errorf("shared region: byte %#x reads %#x after a write", off+int64(i), b)
								return
							}
						}
					}
				}(w)
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Fatal(err)
			}
			got := readAll(t, r)
			for w, m := range models {
				if d := firstDiff(got[w*regionSize:(w+1)*regionSize], m.data); d != "" {
					t.Fatalf("region %d: %s", w, d)
				}
			}
			for i := sharedStart; i < size; i++ {
				if got[i] != base[i] && got[i] != posByte(i) {
					t.Fatalf("shared region: byte %#x reads %#x", i, got[i])
				}
			}
			closeImage(t, g, r, "q")
			qemuCheck(t, p, false)
			if d := firstDiff(rawContents(t, p), got); d != "" {
				t.Fatalf("qemu reads: %s", d)
			}
		})
	}
}
