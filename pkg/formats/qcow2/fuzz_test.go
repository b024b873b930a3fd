package qcow2

import (
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/blockd/blockd/internal/fuzzcheck"
	"github.com/blockd/blockd/pkg/block"
	"github.com/blockd/blockd/pkg/block/blocktest"
)

// fuzzMem is a memory protocol driver for the fuzz tests: it starts with
// given bytes and refuses to grow past a limit, so that an image that
// makes the driver write far away fails instead of exhausting memory.
type fuzzMemOptions struct {
	Key string `json:"key"`
}

type fuzzMem struct {
	mu    sync.Mutex
	data  []byte
	limit int64
}

var fuzzImages sync.Map // key -> []byte
var fuzzKeys atomic.Int64

const fuzzLimit = 64 << 20

func openFuzzMem(ctx context.Context, o *block.Opener, opts *fuzzMemOptions) (block.Impl, error) {
	v, ok := fuzzImages.Load(opts.Key)
	if !ok {
		return nil, fmt.Errorf("no image %q", opts.Key)
	}
	return &fuzzMem{data: append([]byte(nil), v.([]byte)...), limit: fuzzLimit}, nil
}

func (m *fuzzMem) Caps() block.Caps {
	return block.Caps{Zero: true, Discard: true}
}
func (m *fuzzMem) Size(ctx context.Context) (int64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return int64(len(m.data)), nil
}
func (m *fuzzMem) ReadAt(ctx context.Context, p []byte, off int64, f block.Flags) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	n := 0
	if off < int64(len(m.data)) {
		n = copy(p, m.data[off:])
	}
	clear(p[n:])
	return nil
}
func (m *fuzzMem) grow(end int64) error {
	if end > m.limit {
		return block.Errorf(block.ErrNoSpace, "fuzz memory node: %d bytes is past the limit", end)
	}
	if end > int64(len(m.data)) {
		m.data = append(m.data, make([]byte, end-int64(len(m.data)))...)
	}
	return nil
}
func (m *fuzzMem) WriteAt(ctx context.Context, p []byte, off int64, f block.Flags) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.grow(off + int64(len(p))); err != nil {
		return err
	}
	copy(m.data[off:], p)
	return nil
}
func (m *fuzzMem) Zero(ctx context.Context, off, n int64, f block.Flags) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.grow(off + n); err != nil {
		return err
	}
	clear(m.data[off : off+n])
	return nil
}
func (m *fuzzMem) Discard(ctx context.Context, off, n int64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if off < int64(len(m.data)) {
		clear(m.data[off:min(off+n, int64(len(m.data)))])
	}
	return nil
}
func (m *fuzzMem) Flush(ctx context.Context) error { return nil }
func (m *fuzzMem) BlockStatus(ctx context.Context, off, n int64) (block.Extent, error) {
	return block.Extent{Len: n, Status: block.StatusData | block.StatusAllocated}, nil
}
func (m *fuzzMem) Truncate(ctx context.Context, size int64, exact bool) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if size < int64(len(m.data)) {
		m.data = m.data[:size]
		return nil
	}
	return m.grow(size)
}
func (m *fuzzMem) Close() error     { return nil }
func (m *fuzzMem) Filename() string { return "fuzz-mem" }

func init() {
	block.Register("qcow2-fuzz-mem", block.KindProtocol, openFuzzMem)
}

// exerciseImage opens data as a qcow2 image (never its backing file) and
// runs reads, block status and, with rw, writes, zeroes, discards,
// flushes and a resize through it. Errors are expected; panics, hangs
// and runaway allocations are the bugs.
func exerciseImage(t testing.TB, data []byte, rw bool) {
	key := strconv.FormatInt(fuzzKeys.Add(1), 10)
	fuzzImages.Store(key, data)
	defer fuzzImages.Delete(key)
	g := newGraph()
	if _, err := blocktest.TryOpen(g, fmt.Sprintf(`{"driver":"qcow2-fuzz-mem","node-name":"m","key":%q}`, key)); err != nil {
		t.Fatal(err)
	}
	defer func() {
		tx := g.Begin()
		_ = tx.Delete("m")
		_ = tx.Commit()
	}()
	n, err := blocktest.TryOpen(g, fmt.Sprintf(`{"driver":"qcow2","node-name":"q","file":"m","backing":null,"read-only":%v,"discard":"unmap","cache-clean-interval":0}`, !rw))
	if err != nil {
		return
	}
	perm := block.PermConsistentRead
	if rw {
		perm |= block.PermWrite | block.PermResize
	}
	r := blocktest.NewRoot(t, n, perm, block.PermAll)
	defer closeImage(t, g, r, "q")
	ctx := context.Background()
	size := r.Size()
	buf := make([]byte, 64<<10)
	for _, off := range []int64{0, size / 3, size - int64(len(buf))} {
		if off < 0 {
			off = 0
		}
		k := min(int64(len(buf)), size-off)
		if k > 0 {
			_ = r.ReadAt(ctx, buf[:k], off, 0)
		}
	}
	for off, i := int64(0), 0; off < size && i < 64; i++ {
		x, err := r.Child().BlockStatus(ctx, off, size-off)
		if err != nil {
			break
		}
		off += x.Len
	}
	if !rw {
		return
	}
	for _, off := range []int64{0, 4096, size / 2, size - 9000} {
		if off < 0 || off >= size {
			continue
		}
		k := min(int64(len(fuzzData)), size-off)
		_ = r.WriteAt(ctx, fuzzData[:k], off, 0)
	}
	if size > 1<<20 {
		_ = r.Zero(ctx, 1<<19, 1<<19, block.FlagMayUnmap)
		_ = r.Discard(ctx, 0, 1<<20)
	}
	_ = r.Flush(ctx)
	_ = r.WriteAt(ctx, []byte("after flush"), 100, 0)
	exerciseSnapshots(ctx, n)
	if size < 1<<30 {
		_ = r.Truncate(ctx, size+1<<20, true)
	}
	_ = r.ReadAt(ctx, buf[:min(int64(len(buf)), r.Size())], 0, 0)
}

var fuzzData = pattern(1, 9000)

// exerciseSnapshots takes a snapshot, deletes the image's first one and
// the new one: each walks every table of the trees it touches.
func exerciseSnapshots(ctx context.Context, n *block.Node) {
	sn := n.Impl().(block.InternalSnapshotter)
	list, _ := sn.InternalSnapshots(ctx)
	made, err := sn.CreateInternalSnapshot(ctx, block.InternalSnapshot{Name: "fuzz"})
	if len(list) > 0 {
		_ = sn.DeleteInternalSnapshot(ctx, list[0].ID, list[0].Name)
	}
	if err == nil {
		_ = sn.DeleteInternalSnapshot(ctx, made.ID, made.Name)
	}
}

// fuzzSeeds returns small images made by qemu-img and blockd: the first
// clusters of the file hold header, tables and some data.
func fuzzSeeds(t testing.TB) [][]byte {
	dir := t.TempDir()
	var seeds [][]byte
	add := func(p string) {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		seeds = append(seeds, b)
	}
	for i, c := range []struct{ opts, io string }{
		{"cluster_size=512", "write -P 1 0 1k"},
		{"cluster_size=512,compat=0.10", "write -P 2 1000 700"},
		{"cluster_size=1k,refcount_bits=1", "write -c -P 3 0 1k"},
		{"cluster_size=16k,extended_l2=on", "write -P 4 1k 3k"},
		{"cluster_size=1k,compression_type=zstd", "write -c -P 5 0 2k"},
		{"cluster_size=512,lazy_refcounts=on,refcount_bits=64", "write -z 0 1k"},
	} {
		p := filepath.Join(dir, fmt.Sprintf("s%d.qcow2", i))
		qemuImg(t, "create", "-q", "-f", "qcow2", "-o", c.opts, p, "256k")
		qemuIO(t, p, c.io)
		add(p)
	}
	p := filepath.Join(dir, "snap.qcow2")
	qemuImg(t, "create", "-q", "-f", "qcow2", "-o", "cluster_size=512", p, "64k")
	qemuIO(t, p, "write -P 6 0 1k")
	qemuImg(t, "snapshot", "-c", "s", p)
	qemuIO(t, p, "write -P 7 0 1k")
	add(p)
	if err := os.WriteFile(filepath.Join(dir, "base.img"), make([]byte, 4096), 0o644); err != nil {
		t.Fatal(err)
	}
	p = filepath.Join(dir, "back.qcow2")
	qemuImg(t, "create", "-q", "-f", "qcow2", "-o", "cluster_size=512", "-b", "base.img", "-F", "raw", p, "64k")
	add(p)
	return seeds
}

// bigTables reports headers whose tables would take long to read (up to
// QEMU's limits of 32 MiB and 8 MiB): legal, covered by the hostile image
// tests, but too slow for a fuzz loop.
func bigTables(b []byte) bool {
	if len(b) < 72 {
		return false
	}
	cb := binary.BigEndian.Uint32(b[20:])
	return binary.BigEndian.Uint32(b[36:]) > 1<<16 || cb < 32 && uint64(binary.BigEndian.Uint32(b[56:]))<<cb > 1<<20
}

// FuzzHeader opens arbitrary bytes as an image.
func FuzzHeader(f *testing.F) {
	for _, s := range fuzzSeeds(f) {
		if len(s) <= 16<<10 { // large inputs make minimization crawl
			f.Add(s, true)
		}
	}
	f.Fuzz(func(t *testing.T, data []byte, rw bool) {
		if len(data) > 4<<20 || bigTables(data) {
			return
		}
		fuzzcheck.Bounded(t, func() { exerciseImage(t, data, rw) })
	})
}

// FuzzTables patches the tables of valid images: each 12-byte record of
// the input writes a 64-bit value at a position of the first 64 KiB.
func FuzzTables(f *testing.F) {
	seeds := fuzzSeeds(f)
	for i := range seeds {
		f.Add(uint8(i), []byte{})
		rec := make([]byte, 12)
		binary.BigEndian.PutUint32(rec, 1536+8)
		binary.BigEndian.PutUint64(rec[4:], 1<<63|0x800)
		f.Add(uint8(i), rec)
	}
	f.Fuzz(func(t *testing.T, which uint8, patches []byte) {
		img := append([]byte(nil), seeds[int(which)%len(seeds)]...)
		for len(patches) >= 12 {
			pos := int(binary.BigEndian.Uint32(patches)) % min(len(img), 64<<10)
			pos &^= 7
			if pos+8 <= len(img) {
				copy(img[pos:], patches[4:12])
			}
			patches = patches[12:]
		}
		if bigTables(img) {
			return
		}
		fuzzcheck.Bounded(t, func() { exerciseImage(t, img, true) })
	})
}
