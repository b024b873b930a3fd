package qcow2

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/blockd/blockd/pkg/block"
)

// TestCacheCleanInterval drives the cache-clean ticker by hand: entries
// unused for a whole interval are dropped, used ones stay.
func TestCacheCleanInterval(t *testing.T) {
	tick := make(chan time.Time)
	stopped := make(chan struct{})
	old := newTicker
	var gotInterval time.Duration
	newTicker = func(d time.Duration) (<-chan time.Time, func()) {
		gotInterval = d
		return tick, func() { close(stopped) }
	}
	cleaned := make(chan struct{})
	cleanHook = func() { cleaned <- struct{}{} }
	defer func() { newTicker, cleanHook = old, nil }()

	p := filepath.Join(t.TempDir(), "x.qcow2")
	createImage(t, p, CreateOptions{Size: 64 << 20, ClusterSize: ptr(uint64(4096))})
	g := newGraph()
	n, r := openImage(t, g, "q", p, map[string]any{"cache-clean-interval": 7})
	if gotInterval != 7*time.Second {
		t.Fatalf("interval %v", gotInterval)
	}
	q := n.Impl().(*image)
	ctx := context.Background()
	for i := int64(0); i < 8; i++ {
		if err := r.WriteAt(ctx, []byte("x"), i<<23, 0); err != nil {
			t.Fatal(err)
		}
	}
	if err := r.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	entries := func() (int, int) {
		q.mu.Lock()
		defer q.mu.Unlock()
		return q.l2c.len(), q.rbc.len()
	}
	if l2, _ := entries(); l2 == 0 {
		t.Fatal("nothing cached")
	}
	tick <- time.Time{} // marks what was used so far
	<-cleaned
	if err := r.ReadAt(ctx, make([]byte, 1), 0, 0); err != nil {
		t.Fatal(err)
	}
	tick <- time.Time{} // drops what was not used since the first tick
	<-cleaned
	if l2, rb := entries(); l2 != 1 || rb != 0 {
		t.Fatalf("after cleaning: %d L2 slices, %d refcount blocks cached", l2, rb)
	}
	closeImage(t, g, r, "q")
	select {
	case <-stopped:
	case <-time.After(5 * time.Second):
		t.Fatal("ticker not stopped at close")
	}
}

// TestCacheOptions checks QEMU's rules and messages for cache sizes.
func TestCacheOptions(t *testing.T) {
	p := filepath.Join(t.TempDir(), "x.qcow2")
	createImage(t, p, CreateOptions{Size: 64 << 20})
	for _, tc := range []struct {
		extra map[string]any
		want  string
	}{
		{map[string]any{"cache-size": 1000000, "l2-cache-size": 100000, "refcount-cache-size": 100000}, "cache-size, l2-cache-size and refcount-cache-size may not be set at the same time"},
		{map[string]any{"cache-size": 100000, "l2-cache-size": 200000}, "l2-cache-size may not exceed cache-size"},
		{map[string]any{"cache-size": 100000, "refcount-cache-size": 200000}, "refcount-cache-size may not exceed cache-size"},
		{map[string]any{"l2-cache-entry-size": 1000}, "L2 cache entry size must be a power of two between 512 and the cluster size (65536)"},
		{map[string]any{"l2-cache-entry-size": 131072}, "L2 cache entry size must be a power of two between 512 and the cluster size (65536)"},
		{map[string]any{"cache-clean-interval": -1}, "Cache clean interval too big"},
		{map[string]any{"l2-cache-size": -5}, "Parameter 'l2-cache-size' expects a non-negative number below 2^64"},
		{map[string]any{"lazy-refcounts": true, "encrypt": map[string]any{"format": "luks", "key-secret": "s"}}, "No encryption in image header, but options specified format 'luks'"},
		{map[string]any{"data-file": map[string]any{"driver": "file", "filename": p}}, "'data-file' can only be set for images with an external data file"},
		{map[string]any{"cache-size": 1 << 20}, ""},
		{map[string]any{"overlap-check": "none", "pass-discard-other": true, "l2-cache-entry-size": 4096}, ""},
		{map[string]any{"overlap-check": map[string]any{"template": "all", "main-header": false}}, ""},
	} {
		g := newGraph()
		_, err := blocktestTryOpen(g, nodeOpts("q", p, tc.extra))
		if tc.want == "" {
			if err != nil {
				t.Errorf("%v: %v", tc.extra, err)
				continue
			}
			closeImage(t, g, nil, "q")
			continue
		}
		if err == nil || err.Error() != tc.want {
			t.Errorf("%v: error %v, want %q", tc.extra, err, tc.want)
		}
	}
	v2 := filepath.Join(t.TempDir(), "v2.qcow2")
	createImage(t, v2, CreateOptions{Size: 1 << 20, Version: ptr(Version("v2"))})
	_, err := blocktestTryOpen(newGraph(), nodeOpts("q", v2, map[string]any{"lazy-refcounts": true}))
	if err == nil || err.Error() != "Lazy refcounts require a qcow2 image with at least qemu 1.1 compatibility level" {
		t.Fatalf("lazy on v2: %v", err)
	}
}

// TestLazyDirtyBit: with lazy refcounts the image is dirty while open
// after a write, and clean after close.
func TestLazyDirtyBit(t *testing.T) {
	p := filepath.Join(t.TempDir(), "x.qcow2")
	createImage(t, p, CreateOptions{Size: 16 << 20, LazyRefcounts: ptr(true)})
	g := newGraph()
	n, r := openImage(t, g, "q", p, nil)
	if err := r.WriteAt(context.Background(), []byte("abc"), 5<<20, 0); err != nil {
		t.Fatal(err)
	}
	if ii := n.Impl().(block.Infoer).ImageInfo(context.Background()); !*ii.DirtyFlag {
		t.Fatal("not dirty after an allocating write")
	}
	if !strings.Contains(qemuImg(t, "info", "-U", "--output=json", p), `"dirty-flag": true`) {
		t.Fatal("qemu-img info does not see the dirty flag")
	}
	closeImage(t, g, r, "q")
	if !strings.Contains(qemuImg(t, "info", "--output=json", p), `"dirty-flag": false`) {
		t.Fatal("dirty after close")
	}
	qemuCheck(t, p, false)
}

// TestTruncate grows and shrinks images and checks them with qemu-img:
// the grown area reads as zeroes even over a longer backing file.
func TestTruncate(t *testing.T) {
	for _, tc := range []struct {
		name    string
		opts    CreateOptions
		backing bool
	}{
		{name: "v3", opts: CreateOptions{ClusterSize: ptr(uint64(4096))}},
		{name: "v2", opts: CreateOptions{Version: ptr(Version("v2")), ClusterSize: ptr(uint64(1024))}},
		{name: "backing", opts: CreateOptions{}, backing: true},
		{name: "extl2", opts: CreateOptions{ExtendedL2: ptr(true)}, backing: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			p := filepath.Join(dir, "x.qcow2")
			opts := tc.opts
			opts.Size = 3<<20 + 512
			if tc.backing {
				base := filepath.Join(dir, "base.qcow2")
				qemuImg(t, "create", "-q", "-f", "qcow2", base, "16M")
				qemuIO(t, base, "write -P 0x77 0 16M")
				opts.BackingFile = ptr("base.qcow2")
				opts.BackingFmt = ptr(DriverName("qcow2"))
			}
			createImage(t, p, opts)
			g := newGraph()
			_, r := openImage(t, g, "q", p, nil)
			ctx := context.Background()
			if err := r.WriteAt(ctx, pattern(1, 3<<20+512), 0, 0); err != nil {
				t.Fatal(err)
			}
			want := pattern(1, 3<<20+512)
			steps := []int64{1<<20 + 1536, 5 << 20, 700 << 10, 40 << 20, 12 << 20}
			for _, size := range steps {
				if err := r.Truncate(ctx, size, true); err != nil {
					t.Fatalf("truncate to %d: %v", size, err)
				}
				if r.Size() != size {
					t.Fatalf("size %d after truncate to %d", r.Size(), size)
				}
				if int64(len(want)) > size {
					want = want[:size]
				} else {
					want = append(want, make([]byte, size-int64(len(want)))...)
				}
				if d := firstDiff(readAll(t, r), want); d != "" {
					t.Fatalf("after truncate to %d: %s", size, d)
				}
				if err := r.WriteAt(ctx, []byte("tail"), size-4, 0); err != nil {
					t.Fatal(err)
				}
				copy(want[size-4:], "tail")
			}
			if err := r.Truncate(ctx, 1000, true); err == nil || err.Error() != "The new size must be a multiple of 512" {
				t.Fatalf("unaligned truncate: %v", err)
			}
			closeImage(t, g, r, "q")
			qemuCheck(t, p, false)
			if d := firstDiff(rawContents(t, p), want); d != "" {
				t.Fatalf("qemu reads: %s", d)
			}
			var info struct {
				VirtualSize int64 `json:"virtual-size"`
			}
			_ = json.Unmarshal([]byte(qemuImg(t, "info", "--output=json", p)), &info)
			if info.VirtualSize != 12<<20 {
				t.Fatalf("virtual size %d", info.VirtualSize)
			}
		})
	}
}

// TestBlockStatusExtents: block status reports whole runs, not clusters,
// and follows the allocation of a chain.
func TestBlockStatusExtents(t *testing.T) {
	dir := t.TempDir()
	base := filepath.Join(dir, "base.qcow2")
	qemuImg(t, "create", "-q", "-f", "qcow2", base, "1G")
	qemuIO(t, base, "write -P 1 0 100M")
	p := filepath.Join(dir, "top.qcow2")
	createImage(t, p, CreateOptions{Size: 1 << 30, BackingFile: ptr("base.qcow2"), BackingFmt: ptr(DriverName("qcow2"))})
	g := newGraph()
	n, r := openImage(t, g, "q", p, nil)
	ctx := context.Background()
	if err := r.WriteAt(ctx, make([]byte, 8<<20), 10<<20, 0); err != nil {
		t.Fatal(err)
	}
	if err := r.Zero(ctx, 30<<20, 600<<20, 0); err != nil {
		t.Fatal(err)
	}
	c := r.Child()
	for _, tc := range []struct {
		off    int64
		len    int64
		status block.Status
	}{
		{0, 10 << 20, 0},
		{10 << 20, 8 << 20, block.StatusData | block.StatusAllocated | block.StatusOffsetValid},
		{18 << 20, 12 << 20, 0},
		{30 << 20, 600 << 20, block.StatusZero | block.StatusAllocated},
		{630 << 20, 394 << 20, 0},
	} {
		x, err := c.BlockStatus(ctx, tc.off, 1<<30-tc.off)
		if err != nil {
			t.Fatal(err)
		}
		if x.Len != tc.len || x.Status != tc.status {
			t.Errorf("at %d MiB: %+v; want len %d MiB status %v", tc.off>>20, x, tc.len>>20, tc.status)
		}
	}
	// Through the chain: the backing file's data shows below.
	st, err := block.StatusAbove(ctx, n, nil, 0, 1<<30)
	if err != nil || st.Depth != 2 || !st.Data || st.Len != 10<<20 {
		t.Fatalf("status above: %+v %v", st, err)
	}
	closeImage(t, g, r, "q")
	qemuCheck(t, p, false)
	out := qemuImg(t, "map", "--output=json", p)
	if !strings.Contains(out, fmt.Sprintf(`"start": %d, "length": %d, "depth": 0, "present": true, "zero": true, "data": false`, 30<<20, 600<<20)) {
		t.Fatalf("qemu-img map: %s", out)
	}
}
