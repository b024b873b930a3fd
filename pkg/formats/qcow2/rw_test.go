package qcow2

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/blockd/blockd/pkg/block"
)

func ptr[T any](v T) *T { return &v }

// createImage makes path with blockd's blockdev-create.
func createImage(t testing.TB, path string, opts CreateOptions) {
	t.Helper()
	if err := tryCreateImage(path, opts); err != nil {
		t.Fatalf("create %s: %v", path, err)
	}
}

func tryCreateImage(path string, opts CreateOptions) error {
	if err := os.WriteFile(path, nil, 0o644); err != nil {
		return err
	}
	g := newGraph()
	tx := g.Begin()
	_, err := tx.Open(context.Background(), json.RawMessage(fmt.Sprintf(`{"driver":"file","node-name":"f","filename":%q}`, path)), true)
	if err != nil {
		tx.Abort()
		return err
	}
	if err := tx.Commit(); err != nil {
		return err
	}
	defer func() {
		tx := g.Begin()
		_ = tx.Delete("f")
		_ = tx.Commit()
	}()
	opts.File = block.NodeRef{Name: "f"}
	return create(context.Background(), g, &opts)
}

// model is what a device should read.
type model struct {
	data          []byte
	cluster       int64
	discardZeroes bool
}

func (m *model) write(off int64, p []byte) { copy(m.data[off:], p) }
func (m *model) zero(off, n int64)         { clear(m.data[off : off+n]) }
func (m *model) discard(off, n int64) {
	if !m.discardZeroes {
		return
	}
	lo := (off + m.cluster - 1) / m.cluster * m.cluster
	hi := (off + n) / m.cluster * m.cluster
	if lo < hi {
		clear(m.data[lo:hi])
	}
}

func pattern(seed uint64, n int) []byte {
	b := make([]byte, n)
	r := rand.New(rand.NewPCG(seed, 7))
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// randomOps applies n random requests to r and m.
func randomOps(t testing.TB, r *block.Root, m *model, rng *rand.Rand, n int, maxLen int64) {
	t.Helper()
	ctx := context.Background()
	size := int64(len(m.data))
	for i := 0; i < n; i++ {
		off := rng.Int64N(size)
		l := min(1+rng.Int64N(maxLen), size-off)
		if rng.IntN(3) == 0 { // aligned requests are common too
			off = off / 4096 * 4096
			l = min((l+4095)/4096*4096, size-off)
		}
		switch op := rng.IntN(10); {
		case op < 6:
			p := pattern(rng.Uint64(), int(l))
			if err := r.WriteAt(ctx, p, off, 0); err != nil {
				t.Fatalf("write %d+%d: %v", off, l, err)
			}
			m.write(off, p)
		case op < 8:
			f := block.Flags(0)
			if rng.IntN(2) == 0 {
				f = block.FlagMayUnmap
			}
			if err := r.Zero(ctx, off, l, f); err != nil {
				t.Fatalf("zero %d+%d: %v", off, l, err)
			}
			m.zero(off, l)
		case op < 9:
			if err := r.Discard(ctx, off, l); err != nil {
				t.Fatalf("discard %d+%d: %v", off, l, err)
			}
			m.discard(off, l)
		default:
			if err := r.Flush(ctx); err != nil {
				t.Fatalf("flush: %v", err)
			}
		}
	}
}

type createCase struct {
	name        string
	opts        CreateOptions
	size        int64
	backing     bool
	openExtra   map[string]any
	maxLen      int64
	ops         int
	qemuVersion string
}

func createCases() []createCase {
	return []createCase{
		{name: "default", opts: CreateOptions{}},
		{name: "v2", opts: CreateOptions{Version: ptr(Version("v2"))}},
		{name: "c512", opts: CreateOptions{ClusterSize: ptr(uint64(512))}, size: 2 << 20},
		{name: "c4k-rb1", opts: CreateOptions{ClusterSize: ptr(uint64(4096)), RefcountBits: ptr(int64(1))}},
		{name: "c2m", opts: CreateOptions{ClusterSize: ptr(uint64(2 << 20))}, size: 32 << 20, maxLen: 3 << 20},
		{name: "rb64", opts: CreateOptions{RefcountBits: ptr(int64(64)), ClusterSize: ptr(uint64(1024))}, size: 4 << 20},
		{name: "rb8", opts: CreateOptions{RefcountBits: ptr(int64(8))}},
		{name: "rb2", opts: CreateOptions{RefcountBits: ptr(int64(2)), ClusterSize: ptr(uint64(2048))}},
		{name: "lazy", opts: CreateOptions{LazyRefcounts: ptr(true)}},
		{name: "extl2", opts: CreateOptions{ExtendedL2: ptr(true), ClusterSize: ptr(uint64(32768))}},
		{name: "zstd", opts: CreateOptions{CompressionType: ptr(CompressionType("zstd"))}},
		{name: "backing", backing: true},
		{name: "backing-v2", opts: CreateOptions{Version: ptr(Version("v2"))}, backing: true},
		{name: "backing-extl2", opts: CreateOptions{ExtendedL2: ptr(true), ClusterSize: ptr(uint64(16384))}, backing: true},
		{name: "small-cache", opts: CreateOptions{ClusterSize: ptr(uint64(4096))},
			openExtra: map[string]any{"l2-cache-size": 8192, "l2-cache-entry-size": 512, "refcount-cache-size": 4096}},
		{name: "prealloc-metadata", opts: CreateOptions{Preallocation: ptr(Preallocation("metadata"))}},
		{name: "prealloc-full-extl2", opts: CreateOptions{Preallocation: ptr(Preallocation("full")), ExtendedL2: ptr(true), BackingFile: nil}},
	}
}

// TestBlockdImagesPassQemuCheck creates images with blockd, writes them
// with random requests, and asks qemu-img whether they are sound and hold
// what was written.
func TestBlockdImagesPassQemuCheck(t *testing.T) {
	for _, tc := range createCases() {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			size := tc.size
			if size == 0 {
				size = 8 << 20
			}
			p := filepath.Join(dir, "img.qcow2")
			opts := tc.opts
			opts.Size = uint64(size)
			m := &model{data: make([]byte, size), discardZeroes: true}
			if tc.backing {
				base := filepath.Join(dir, "base.qcow2")
				qemuImg(t, "create", "-q", "-f", "qcow2", base, fmt.Sprint(size-1<<20))
				qemuIO(t, base, "write -P 0x5a 0 3M", "write -P 0xa5 5M 1M")
				copy(m.data, rawContents(t, base))
				opts.BackingFile = ptr("base.qcow2")
				opts.BackingFmt = ptr(DriverName("qcow2"))
				if opts.Version != nil && *opts.Version == "v2" {
					m.discardZeroes = false
				}
			}
			createImage(t, p, opts)
			qemuCheck(t, p, false)
			cs := int64(65536)
			if opts.ClusterSize != nil {
				cs = int64(*opts.ClusterSize)
			}
			m.cluster = cs
			g := newGraph()
			_, r := openImage(t, g, "q", p, tc.openExtra)
			rng := rand.New(rand.NewPCG(uint64(len(tc.name)), 1))
			maxLen := tc.maxLen
			if maxLen == 0 {
				maxLen = 300 << 10
			}
			ops := tc.ops
			if ops == 0 {
				ops = 150
			}
			randomOps(t, r, m, rng, ops, maxLen)
			if d := firstDiff(readAll(t, r), m.data); d != "" {
				t.Fatalf("blockd reads back: %s", d)
			}
			if err := r.Flush(context.Background()); err != nil {
				t.Fatal(err)
			}
			checkMapAgrees(t, r, p)
			closeImage(t, g, r, "q")
			qemuCheck(t, p, false)
			if d := firstDiff(rawContents(t, p), m.data); d != "" {
				t.Fatalf("qemu reads back: %s", d)
			}
		})
	}
}

// mapEntry is one entry of qemu-img map --output=json.
type mapEntry struct {
	Start   int64  `json:"start"`
	Length  int64  `json:"length"`
	Depth   int    `json:"depth"`
	Present bool   `json:"present"`
	Zero    bool   `json:"zero"`
	Data    bool   `json:"data"`
	Offset  *int64 `json:"offset"`
}

// checkMapAgrees compares blockd's block status of the top image with
// qemu-img map of the same image (allocation, data, host offsets).
func checkMapAgrees(t testing.TB, r *block.Root, path string) {
	t.Helper()
	out := qemuImg(t, "map", "-U", "--output=json", path)
	var qm []mapEntry
	if err := json.Unmarshal([]byte(out), &qm); err != nil {
		t.Fatalf("qemu-img map: %v\n%s", err, out)
	}
	ctx := context.Background()
	n := r.Node()
	for _, e := range qm {
		for off := e.Start; off < e.Start+e.Length; {
			x, err := r.Child().BlockStatus(ctx, off, e.Start+e.Length-off)
			if err != nil {
				t.Fatalf("block status %d: %v", off, err)
			}
			alloc := x.Status&block.StatusAllocated != 0
			data := x.Status&block.StatusData != 0
			top := e.Depth == 0 && e.Present
			if alloc != top || (top && data != e.Data) {
				t.Fatalf("%s: at %#x blockd says %+v, qemu-img map %+v", n.Name(), off, x, e)
			}
			if data && e.Offset != nil && x.Status&block.StatusOffsetValid != 0 && x.Offset != *e.Offset+(off-e.Start) {
				t.Fatalf("%s: at %#x blockd maps to %#x, qemu-img map %+v", n.Name(), off, x.Offset, e)
			}
			off += x.Len
		}
	}
}
