package cor_test

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/blockd/blockd/pkg/block"
	"github.com/blockd/blockd/pkg/block/blocktest"
	"github.com/blockd/blockd/pkg/filters/cor"
	"github.com/blockd/blockd/pkg/filters/internal/filtertest"
)

func build(t testing.TB, g *block.Graph, mem string) (*block.Node, []*block.Node) {
	base := blocktest.Open(t, g, fmt.Sprintf(`{"node-name":"base",%s`, mem[1:]))
	blocktest.Open(t, g, `{"driver":"blocktest-mem","node-name":"other","size":4096}`)
	blocktest.Open(t, g, `{"driver":"blocktest-mem","node-name":"ro","size":4096,"read-only":true}`)
	blocktest.Open(t, g, `{"driver":"blocktest-filter","node-name":"pass","file":"base"}`)
	flt := blocktest.Open(t, g, `{"driver":"copy-on-read","node-name":"flt","discard":"unmap","file":"base"}`)
	return flt, []*block.Node{base}
}

func TestConformance(t *testing.T) {
	filtertest.Run(t, filtertest.Config{
		Build: build,
		BadOptions: []filtertest.BadOption{
			filtertest.Bad("no such bottom", `{"driver":"copy-on-read","node-name":"c1","file":{"driver":"blocktest-mem","size":4096},"bottom":"nosuch"}`,
				"Bottom node 'nosuch' not found"),
			filtertest.Bad("bottom is a filter", `{"driver":"copy-on-read","node-name":"c1","file":"pass","bottom":"pass"}`,
				"Bottom node 'pass' is a filter"),
			filtertest.Bad("bottom not in the chain", `{"driver":"copy-on-read","node-name":"c1","file":"base","bottom":"other"}`,
				"Bottom node 'other' is not in the backing chain of 'base'"),
			filtertest.Bad("read-only file", `{"driver":"copy-on-read","node-name":"c1","file":"ro"}`, "Block node is read-only"),
			filtertest.Bad("no such file", `{"driver":"copy-on-read","node-name":"c1","file":"nosuch"}`,
				"Cannot find device='nosuch' nor node-name='nosuch'"),
		},
	})
}

func TestPermissions(t *testing.T) {
	g := blocktest.NewGraph()
	flt, below := build(t, g, filtertest.MemOptions(""))
	edge := func() string {
		c := flt.Children()[0]
		p, s := c.Perm()
		return fmt.Sprintf("perm %v shared %v", p, s)
	}
	// Transcript (f) B: with nobody above, the filter takes only
	// write-unchanged and shares everything.
	if got, want := edge(), "perm write-unchanged shared resize,write-unchanged,write,consistent-read"; got != want {
		t.Errorf("idle: %s, want %s", got, want)
	}
	r := blocktest.NewRoot(t, flt, block.PermConsistentRead, block.PermConsistentRead|block.PermWriteUnchanged)
	if got, want := edge(), "perm write-unchanged,consistent-read shared write-unchanged,consistent-read"; got != want {
		t.Errorf("under a reader that shares no write: %s, want %s", got, want)
	}
	tx := g.Begin()
	tx.SetRootPerm(r, block.PermConsistentRead, block.PermAll)
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	if got, want := edge(), "perm write-unchanged,consistent-read shared resize,write-unchanged,write,consistent-read"; got != want {
		t.Errorf("under a reader that shares all: %s, want %s", got, want)
	}
	// The filter itself does not stop other writers of the node below.
	blocktest.NewRoot(t, below[0], block.PermWrite|block.PermConsistentRead, block.PermAll)
}

// chain builds base <- mid <- top (formats of the given driver over
// memory nodes, with data in each: base at 0, mid at 8K, top at 16K, each
// 4 KiB, plus mid at 40K-44K) and a copy-on-read filter over top.
func chain(t *testing.T, driver, extra, bottom string) (g *block.Graph, flt, top *block.Node) {
	t.Helper()
	ctx := context.Background()
	g = blocktest.NewGraph()
	mem := `{"driver":"blocktest-mem","size":65536}`
	base := blocktest.Open(t, g, fmt.Sprintf(`{"driver":%q,"node-name":"base","file":%s%s}`, driver, mem, extra))
	mid := blocktest.Open(t, g, fmt.Sprintf(`{"driver":%q,"node-name":"mid","file":%s,"backing":"base"%s}`, driver, mem, extra))
	top = blocktest.Open(t, g, fmt.Sprintf(`{"driver":%q,"node-name":"top","file":{"driver":"blocktest-mem","node-name":"top-file","size":65536},"backing":"mid"%s}`, driver, extra))
	for _, w := range []struct {
		n        *block.Node
		off, len int64
		b        byte
	}{{base, 0, 4096, 0x11}, {mid, 8192, 4096, 0x22}, {mid, 40960, 4096, 0x23}, {top, 16384, 4096, 0x33}} {
		r := blocktest.NewRoot(t, w.n, block.PermWrite|block.PermConsistentRead, block.PermAll)
		if err := r.WriteAt(ctx, bytes.Repeat([]byte{w.b}, int(w.len)), w.off, 0); err != nil {
			t.Fatalf("write %s: %v", w.n.Name(), err)
		}
		tx := g.Begin()
		tx.Detach(r)
		if err := tx.Commit(); err != nil {
			t.Fatal(err)
		}
	}
	opts := `{"driver":"copy-on-read","node-name":"cor","file":"top"`
	if bottom != "" {
		opts += fmt.Sprintf(`,"bottom":%q`, bottom)
	}
	flt = blocktest.Open(t, g, opts+"}")
	return g, flt, top
}

// expected is what the chain reads as.
func expected() []byte {
	want := make([]byte, 65536)
	copy(want[0:], bytes.Repeat([]byte{0x11}, 4096))
	copy(want[8192:], bytes.Repeat([]byte{0x22}, 4096))
	copy(want[40960:], bytes.Repeat([]byte{0x23}, 4096))
	copy(want[16384:], bytes.Repeat([]byte{0x33}, 4096))
	return want
}

// topMap shows, per KiB, whether top allocates it ('T') or not ('.').
func topMap(t *testing.T, top *block.Node) string {
	t.Helper()
	var b strings.Builder
	for off := int64(0); off < 65536; {
		e, err := block.ResolveStatus(context.Background(), top, off, 65536-off)
		if err != nil {
			t.Fatal(err)
		}
		c := "."
		if e.Status&block.StatusAllocated != 0 {
			c = "T"
		}
		for k := int64(0); k < e.Len; k += 1024 {
			b.WriteString(c)
		}
		off += e.Len
	}
	return b.String()
}

func TestCopyUp(t *testing.T) {
	// Per KiB: base data 0-4K, mid 8-12K and 40-44K, top 16-20K.
	const (
		all  = "TTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTT"
		none = "................TTTT............................................"
		mid  = "........TTTT....TTTT....................TTTT...................."
		base = "TTTT....TTTT....TTTT....................TTTT...................."
	)
	tests := []struct {
		name, bottom string
		off, n       int64
		before, want string
	}{
		// Without bottom, everything the top lacks is copied, holes too
		// (as zeroes), as QEMU does.
		{"no bottom", "", 0, 65536, none, all},
		// bottom is inclusive: data of bottom and above is copied, data
		// below it and holes are only read.
		{"bottom mid", "mid", 0, 65536, none, mid},
		{"bottom base", "base", 0, 65536, none, base},
		{"bottom top: nothing below to copy", "top", 0, 65536, none, none},
		{"part of the image", "", 8192, 2048, none, "........TT......TTTT............................................"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			_, flt, top := chain(t, "blocktest-cow", "", tt.bottom)
			if got := topMap(t, top); got != tt.before {
				t.Fatalf("top before:\n%s\nwant\n%s", got, tt.before)
			}
			r := blocktest.NewRoot(t, flt, block.PermConsistentRead, block.PermAll)
			got := make([]byte, tt.n)
			if err := r.ReadAt(ctx, got, tt.off, 0); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, expected()[tt.off:tt.off+tt.n]) {
				t.Fatal("read through the filter differs from the chain's data")
			}
			if got := topMap(t, top); got != tt.want {
				t.Errorf("top after:\n%s\nwant\n%s", got, tt.want)
			}
			// The top now answers the copied ranges with the same data.
			again := make([]byte, 65536)
			if err := r.ReadAt(ctx, again, 0, 0); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(again, expected()) {
				t.Fatal("data changed by the copy")
			}
			if f, _ := cor.Of(flt); (f.Bottom() == nil) != (tt.bottom == "") {
				t.Errorf("Bottom() = %v", f.Bottom())
			}
		})
	}
}

// TestWholeClusters: an unaligned read copies the whole clusters around
// it, so the top never gets a partial cluster (cortest-cow refuses them).
func TestWholeClusters(t *testing.T) {
	ctx := context.Background()
	_, flt, top := chain(t, "cortest-cow", `,"cluster":4096`, "")
	r := blocktest.NewRoot(t, flt, block.PermConsistentRead, block.PermAll)
	got := make([]byte, 100)
	if err := r.ReadAt(ctx, got, 8192+4000, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, expected()[12192:12292]) {
		t.Fatal("data differs")
	}
	// The read touched clusters 2 (mid's data) and 3 (a hole).
	if got, want := topMap(t, top), "........TTTTTTTTTTTT............................................"; got != want {
		t.Errorf("top:\n%s\nwant\n%s", got, want)
	}
}

// TestConcurrentReadsCopyOnce reads overlapping ranges from many
// goroutines: every cluster is copied exactly once.
func TestConcurrentReadsCopyOnce(t *testing.T) {
	ctx := context.Background()
	_, flt, top := chain(t, "cortest-cow", `,"cluster":4096`, "")
	r := blocktest.NewRoot(t, flt, block.PermConsistentRead, block.PermAll)
	var wg sync.WaitGroup
	for i := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			off := int64(i%4) * 3000
			got := make([]byte, 20000)
			if err := r.ReadAt(ctx, got, off, 0); err != nil {
				t.Error(err)
				return
			}
			if !bytes.Equal(got, expected()[off:off+20000]) {
				t.Error("data differs")
			}
		}()
	}
	wg.Wait()
	counts := top.Impl().(*clusterCOW).writeCounts()
	// Clusters 0-7 were read (up to 29 KB); top had cluster 4 already.
	// Cluster 4 was written by the setup, and never again.
	want := []int{1, 1, 1, 1, 1, 1, 1, 1}
	for i, w := range want {
		if counts[i] != w {
			t.Errorf("cluster %d written %d times, want %d", i, counts[i], w)
		}
	}
}

// TestWriteThrough: writes through the filter land in the top.
func TestWriteThrough(t *testing.T) {
	ctx := context.Background()
	_, flt, top := chain(t, "blocktest-cow", "", "")
	r := blocktest.NewRoot(t, flt, block.PermConsistentRead|block.PermWrite, block.PermAll)
	if err := r.WriteAt(ctx, bytes.Repeat([]byte{0x44}, 512), 30720, 0); err != nil {
		t.Fatal(err)
	}
	if m := topMap(t, top); m[30] != 'T' {
		t.Errorf("top after a write: %s", m)
	}
}
