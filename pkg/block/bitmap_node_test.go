package block_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/blockd/blockd/pkg/block"
	"github.com/blockd/blockd/pkg/block/blocktest"
)

type span struct{ off, n int64 }

func dirty(b *block.DirtyBitmap) []span {
	var s []span
	for off := int64(0); ; {
		d, n := b.NextDirty(off, 0)
		if n == 0 {
			return s
		}
		s = append(s, span{d, n})
		off = d + n
	}
}

func addBitmap(t testing.TB, n *block.Node, name string, granularity int64) *block.DirtyBitmap {
	t.Helper()
	b, err := n.AddDirtyBitmap(name, granularity)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestNodeDirtyBitmaps(t *testing.T) {
	t.Parallel()
	g := blocktest.NewGraph()
	n := blocktest.Open(t, g, `{"driver":"blocktest-mem","node-name":"mem","size":1048576}`)
	if len(n.DirtyBitmaps()) != 0 {
		t.Fatalf("new node has bitmaps")
	}
	a := addBitmap(t, n, "a", 65536)
	anon1 := addBitmap(t, n, "", 4096)
	anon2 := addBitmap(t, n, "", 4096)
	if a.Size() != 1<<20 || a.Name() != "a" || a.Granularity() != 65536 {
		t.Errorf("bitmap a: size %d name %q granularity %d", a.Size(), a.Name(), a.Granularity())
	}
	_, err := n.AddDirtyBitmap("a", 512)
	if want := "Bitmap already exists: a"; err == nil || err.Error() != want {
		t.Errorf("duplicate name: %v, want %q", err, want)
	}
	_, err = n.AddDirtyBitmap("b", 1000)
	if want := "Granularity must be power of 2 and at least 512"; err == nil || err.Error() != want {
		t.Errorf("bad granularity: %v, want %q", err, want)
	}
	long := strings.Repeat("x", block.MaxBitmapName)
	if _, err := n.AddDirtyBitmap(long+"x", 512); err == nil || err.Error() != "Bitmap name too long: "+long+"x" {
		t.Errorf("name too long: %v", err)
	}
	if b, err := n.AddDirtyBitmap(long, 512); err != nil {
		t.Errorf("longest name: %v", err)
	} else {
		n.RemoveDirtyBitmap(b)
	}
	if got := n.DirtyBitmaps(); !slices.Equal(got, []*block.DirtyBitmap{a, anon1, anon2}) {
		t.Errorf("list %v", got)
	}
	if n.FindDirtyBitmap("a") != a || n.FindDirtyBitmap("") != nil || n.FindDirtyBitmap("b") != nil {
		t.Errorf("FindDirtyBitmap")
	}
	n.RemoveDirtyBitmap(anon1)
	n.RemoveDirtyBitmap(anon1) // not n's any more: nothing happens
	if got := n.DirtyBitmaps(); !slices.Equal(got, []*block.DirtyBitmap{a, anon2}) {
		t.Errorf("after remove: %v", got)
	}
	n.RemoveDirtyBitmap(a)
	n.RemoveDirtyBitmap(anon2)
	if len(n.DirtyBitmaps()) != 0 {
		t.Errorf("after removing all: %v", n.DirtyBitmaps())
	}
	if _, err := n.AddDirtyBitmap("a", 512); err != nil {
		t.Errorf("name free again after remove: %v", err)
	}
}

// TestDirtyBitmapGate checks that the generic layer records what changes
// a node: writes, write-zeroes and discards through a Child, on the node
// and on the node below a filter; reads change nothing; truncate resizes.
func TestDirtyBitmapGate(t *testing.T) {
	t.Parallel()
	const K = 64 << 10
	ctx := context.Background()
	g := blocktest.NewGraph()
	mem := blocktest.Open(t, g, `{"driver":"blocktest-mem","node-name":"mem","size":1048576,"discard":"unmap"}`)
	flt := blocktest.Open(t, g, `{"driver":"blocktest-filter","node-name":"flt","file":"mem","discard":"unmap"}`)
	r := blocktest.NewRoot(t, flt, block.PermConsistentRead|block.PermWrite|block.PermResize, block.PermAll)
	bm := addBitmap(t, mem, "m", K)
	bf := addBitmap(t, flt, "f", K)
	off := addBitmap(t, mem, "off", 512)
	off.SetRecording(false)

	buf := make([]byte, 4096)
	for _, step := range []struct {
		name string
		do   func() error
		want []span // in both bitmaps
	}{
		{"read", func() error { return r.ReadAt(ctx, buf, 0, 0) }, nil},
		{"write", func() error { buf[0] = 1; return r.WriteAt(ctx, buf, K+100, 0) }, []span{{K, K}}},
		{"write across granules", func() error { return r.WriteAt(ctx, buf, 4*K-1, 0) }, []span{{K, K}, {3 * K, 2 * K}}},
		{"zero", func() error { return r.Zero(ctx, 8*K, 1, 0) }, []span{{K, K}, {3 * K, 2 * K}, {8 * K, K}}},
		{"discard", func() error { return r.Discard(ctx, 10*K, 2*K) }, []span{{K, K}, {3 * K, 2 * K}, {8 * K, K}, {10 * K, 2 * K}}},
		{"read again", func() error { return r.ReadAt(ctx, buf, 10*K, 0) }, []span{{K, K}, {3 * K, 2 * K}, {8 * K, K}, {10 * K, 2 * K}}},
		{"truncate smaller", func() error { return r.Truncate(ctx, 4*K+512, true) }, []span{{K, K}, {3 * K, K + 512}}},
		{"truncate larger", func() error { return r.Truncate(ctx, 16*K, true) }, []span{{K, K}, {3 * K, 2 * K}}},
		{"write at the new end", func() error { return r.WriteAt(ctx, buf, 16*K-4096, 0) }, []span{{K, K}, {3 * K, 2 * K}, {15 * K, K}}},
	} {
		if err := step.do(); err != nil {
			t.Fatalf("%s: %v", step.name, err)
		}
		for _, b := range []*block.DirtyBitmap{bm, bf} {
			if got := dirty(b); !slices.Equal(got, step.want) {
				t.Errorf("after %s, bitmap %s: dirty %v, want %v", step.name, b.Name(), got, step.want)
			}
			if b.Size() != mem.Size() {
				t.Errorf("after %s, bitmap %s covers %d bytes, node %d", step.name, b.Name(), b.Size(), mem.Size())
			}
		}
		if off.Count() != 0 || off.Size() != mem.Size() {
			t.Errorf("after %s: disabled bitmap count %d size %d", step.name, off.Count(), off.Size())
		}
	}
}

// TestDirtyBitmapGrowingWrite: a write past the end of a protocol node
// (by a parent that may resize it) grows the node and its bitmaps.
func TestDirtyBitmapGrowingWrite(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	g := blocktest.NewGraph()
	mem := blocktest.Open(t, g, `{"driver":"blocktest-mem","node-name":"mem","size":4096}`)
	b := addBitmap(t, mem, "m", 512)
	// A Root refuses to go past the end; its Child, which may resize, does not.
	r := blocktest.NewRoot(t, mem, block.PermConsistentRead|block.PermWrite|block.PermResize, block.PermAll)
	err := r.Do(func(c *block.Child) error { return c.WriteAt(ctx, make([]byte, 512), 8192, 0) })
	if err != nil {
		t.Fatal(err)
	}
	if mem.Size() != 8704 || b.Size() != 8704 {
		t.Errorf("node %d bytes, bitmap %d", mem.Size(), b.Size())
	}
	if got, want := dirty(b), []span{{8192, 512}}; !slices.Equal(got, want) {
		t.Errorf("dirty %v, want %v", got, want)
	}
}

// failing writes (and zeroes) to its child and then reports EIO, as a
// device that fails halfway would.
type failing struct{ block.Forward }

func (f *failing) WriteAt(ctx context.Context, p []byte, off int64, fl block.Flags) error {
	if err := f.C.WriteAt(ctx, p, off, fl); err != nil {
		return err
	}
	return fmt.Errorf("failing: %w", syscall.EIO)
}

func init() {
	block.Register("bitmaptest-failing", block.KindFilter, func(ctx context.Context, o *block.Opener, opts *blocktest.FilterOptions) (block.Impl, error) {
		c, err := o.Attach(ctx, "file", opts.File, block.RoleFilter)
		if err != nil {
			return nil, err
		}
		return &failing{block.Forward{C: c}}, nil
	})
}

// TestDirtyBitmapFailedWrite: a write that fails may have changed its
// range; it is recorded as QEMU records it.
func TestDirtyBitmapFailedWrite(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	g := blocktest.NewGraph()
	blocktest.Open(t, g, `{"driver":"blocktest-mem","node-name":"mem","size":65536}`)
	f := blocktest.Open(t, g, `{"driver":"bitmaptest-failing","node-name":"f","file":"mem"}`)
	b := addBitmap(t, f, "f", 4096)
	r := blocktest.NewRoot(t, f, block.PermConsistentRead|block.PermWrite, block.PermAll)
	if err := r.WriteAt(ctx, make([]byte, 512), 8192, 0); !errors.Is(err, syscall.EIO) {
		t.Fatalf("write: %v, want EIO", err)
	}
	if got, want := dirty(b), []span{{8192, 4096}}; !slices.Equal(got, want) {
		t.Errorf("dirty %v, want %v", got, want)
	}
}

// BenchmarkDirtyBitmapSet measures Set as the write path calls it: a 4
// KiB request on a 1 TiB bitmap of 64 KiB granules, on a granule already
// dirty (no memory written), on clean ones (an atomic OR and a count
// update), and on dirty ones from every CPU at once.
func BenchmarkDirtyBitmapSet(b *testing.B) {
	const size, gran, req = 1 << 40, 64 << 10, 4096
	newBitmap := func(b *testing.B, dirty bool) *block.DirtyBitmap {
		bm, err := block.NewDirtyBitmap(gran, size)
		if err != nil {
			b.Fatal(err)
		}
		if dirty {
			bm.Set(0, size)
		}
		b.ReportAllocs()
		return bm
	}
	for _, clean := range []bool{false, true} {
		b.Run(map[bool]string{false: "dirty", true: "clean"}[clean], func(b *testing.B) {
			bm := newBitmap(b, !clean)
			var off int64
			for b.Loop() {
				bm.Set(off, req)
				if off += gran; off == size {
					off = 0
					if clean {
						bm.Clear() // once per 16 Mi Sets
					}
				}
			}
		})
	}
	b.Run("dirty/parallel", func(b *testing.B) {
		bm := newBitmap(b, true)
		b.RunParallel(func(pb *testing.PB) {
			// Each goroutine walks its own stretch, as requests to
			// different places of a disk do.
			off := rand.Int64N(size/gran) * gran
			for pb.Next() {
				bm.Set(off, req)
				if off += gran; off == size {
					off = 0
				}
			}
		})
	})
}

// BenchmarkWrite4KBitmap is a 4 KiB write through the gate to a memory
// node without a bitmap and to one with a bitmap of 64 KiB granules. The
// two run interleaved in batches, so that a noisy machine slows both
// alike; the metrics are ns per request of each and the bitmap's
// overhead in percent.
func BenchmarkWrite4KBitmap(b *testing.B) {
	const size, batch = 64 << 20, 64
	ctx := context.Background()
	names := []string{"none", "bitmap"}
	roots := make([]*block.Root, len(names))
	for i := range names {
		g := blocktest.NewGraph()
		n := blocktest.Open(b, g, fmt.Sprintf(`{"driver":"blocktest-mem","node-name":"mem","size":%d}`, size))
		if i == 1 {
			addBitmap(b, n, "", 64<<10)
		}
		roots[i] = blocktest.NewRoot(b, n, block.PermConsistentRead|block.PermWrite, block.PermAll)
	}
	buf := make([]byte, 4096)
	spent := make([]time.Duration, len(names))
	rounds := 0
	b.ReportAllocs()
	for b.Loop() {
		for j := range roots {
			i := (j + rounds) % len(roots) // alternate who goes first
			r := roots[i]
			start := time.Now()
			for k := range batch {
				off := int64((rounds*batch+k)*len(buf)) % size
				if err := r.WriteAt(ctx, buf, off, 0); err != nil {
					b.Fatal(err)
				}
			}
			spent[i] += time.Since(start)
		}
		rounds++
	}
	per := func(i int) float64 { return float64(spent[i]) / float64(rounds*batch) }
	b.ReportMetric(per(0), "none-ns/req")
	b.ReportMetric(per(1), "bitmap-ns/req")
	b.ReportMetric(100*(per(1)-per(0))/per(0), "bitmap-%")
	b.ReportMetric(0, "ns/op")
}
