package blocktest

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"

	"github.com/blockd/blockd/pkg/block"
)

// DriverCase describes a driver for RunDriverSuite.
type DriverCase struct {
	// Open adds the node under test (monitor-owned, named "dut") to g and
	// returns it. Its size must be at least 4 MiB.
	Open func(t *testing.T, g *block.Graph) *block.Node
	// Stores is false for drivers that keep no data (null-co): only the
	// contract of shapes and errors is checked then.
	Stores bool
	// ZeroReads: a range made zero (Zero, or never written) reads as
	// zeroes. True for every driver that stores data.
	ZeroReads bool
	// Resizable: Truncate works.
	Resizable bool
}

// RunDriverSuite checks the contract every protocol and format driver
// keeps, through the generic layer: what is written reads back, ranges
// made zero read as zero, block status never calls data zero, parallel
// writes to disjoint ranges do not disturb each other, flush succeeds and
// the size follows truncation.
func RunDriverSuite(t *testing.T, c DriverCase) {
	ctx := context.Background()
	setup := func(t *testing.T) (*block.Node, *block.Root) {
		g := NewGraph()
		n := c.Open(t, g)
		return n, NewRoot(t, n, block.PermConsistentRead|block.PermWrite|block.PermResize, block.PermAll)
	}
	pattern := func(seed, n int) []byte {
		p := make([]byte, n)
		r := rand.New(rand.NewPCG(uint64(seed), 7))
		for i := range p {
			p[i] = byte(r.IntN(255) + 1)
		}
		return p
	}
	t.Run("ReadAfterWrite", func(t *testing.T) {
		_, r := setup(t)
		for i, w := range []struct{ off, n int64 }{{0, 4096}, {65536, 65536}, {1 << 20, 3 << 10}, {123, 4567}, {2<<20 - 100, 300}} {
			p := pattern(i, int(w.n))
			if err := r.WriteAt(ctx, p, w.off, 0); err != nil {
				t.Fatalf("write %d@%d: %v", w.n, w.off, err)
			}
			q := make([]byte, w.n)
			if err := r.ReadAt(ctx, q, w.off, 0); err != nil {
				t.Fatalf("read %d@%d: %v", w.n, w.off, err)
			}
			if c.Stores && !bytes.Equal(p, q) {
				t.Errorf("read %d@%d differs from what was written", w.n, w.off)
			}
		}
	})
	t.Run("Zero", func(t *testing.T) {
		_, r := setup(t)
		p := pattern(1, 256<<10)
		if err := r.WriteAt(ctx, p, 0, 0); err != nil {
			t.Fatal(err)
		}
		for _, z := range []struct {
			off, n int64
			f      block.Flags
		}{{4096, 8192, 0}, {100000, 5000, 0}, {131072, 65536, block.FlagMayUnmap}} {
			if err := r.Zero(ctx, z.off, z.n, z.f); err != nil {
				t.Fatalf("zero %d@%d: %v", z.n, z.off, err)
			}
			copy(p[z.off:z.off+z.n], make([]byte, z.n))
		}
		q := make([]byte, len(p))
		if err := r.ReadAt(ctx, q, 0, 0); err != nil {
			t.Fatal(err)
		}
		if c.Stores && !bytes.Equal(p, q) {
			t.Errorf("data after write-zeroes differs")
		}
		if c.ZeroReads {
			u := make([]byte, 65536)
			if err := r.ReadAt(ctx, u, 3<<20, 0); err != nil || !block.IsZero(u) {
				t.Errorf("never-written range does not read as zero: %v", err)
			}
		}
	})
	t.Run("BlockStatusNeverHidesData", func(t *testing.T) {
		n, r := setup(t)
		if err := r.WriteAt(ctx, pattern(2, 65536), 1<<20, 0); err != nil {
			t.Fatal(err)
		}
		size := n.Size()
		buf := make([]byte, 0, 1<<20)
		for off := int64(0); off < min(size, 4<<20); {
			e, err := block.ResolveStatus(ctx, n, off, min(size, 4<<20)-off)
			if err != nil {
				t.Fatalf("status at %d: %v", off, err)
			}
			if e.Len <= 0 {
				t.Fatalf("empty extent at %d", off)
			}
			if c.Stores && e.Status&block.StatusZero != 0 {
				for x := off; x < off+e.Len; x += int64(cap(buf)) {
					k := min(int64(cap(buf)), off+e.Len-x)
					b := buf[:k]
					if err := r.ReadAt(ctx, b, x, 0); err != nil {
						t.Fatal(err)
					}
					if !block.IsZero(b) {
						t.Fatalf("status says zero at %d+%d but data is not", x, k)
					}
				}
			}
			off += e.Len
		}
	})
	t.Run("ParallelWrites", func(t *testing.T) {
		_, r := setup(t)
		var wg sync.WaitGroup
		errs := make(chan error, 16)
		for i := 0; i < 16; i++ {
			wg.Add(1)
			go func(i int) {
				defer wg.Done()
				if err := r.WriteAt(ctx, pattern(100+i, 65536), int64(i)*65536, 0); err != nil {
					errs <- err
				}
			}(i)
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
		if !c.Stores {
			return
		}
		for i := 0; i < 16; i++ {
			q := make([]byte, 65536)
			if err := r.ReadAt(ctx, q, int64(i)*65536, 0); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(q, pattern(100+i, 65536)) {
				t.Errorf("parallel write %d lost", i)
			}
		}
	})
	t.Run("FlushAndRange", func(t *testing.T) {
		n, r := setup(t)
		if err := r.Flush(ctx); err != nil {
			t.Fatalf("flush: %v", err)
		}
		if err := r.ReadAt(ctx, make([]byte, 512), n.Size(), 0); err == nil {
			t.Errorf("read past the end succeeded")
		}
		if err := r.WriteAt(ctx, make([]byte, 512), -512, 0); err == nil {
			t.Errorf("write at a negative offset succeeded")
		}
	})
	if c.Resizable {
		t.Run("Truncate", func(t *testing.T) {
			n, r := setup(t)
			size := n.Size()
			for _, s := range []int64{size + 1<<20, size} {
				if err := r.Truncate(ctx, s, true); err != nil {
					t.Fatalf("truncate to %d: %v", s, err)
				}
				if n.Size() != s {
					t.Errorf("size after truncate to %d is %d", s, n.Size())
				}
			}
		})
	}
}

// OpenJSON is a DriverCase.Open for a node given as JSON options, with
// %s replaced by a fresh temporary directory.
func OpenJSON(options string) func(t *testing.T, g *block.Graph) *block.Node {
	return func(t *testing.T, g *block.Graph) *block.Node {
		return Open(t, g, fmt.Sprintf(options, t.TempDir()))
	}
}
