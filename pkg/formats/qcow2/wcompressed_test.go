package qcow2

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"math/rand/v2"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"

	"github.com/blockd/blockd/pkg/block"
)

// compressible returns n bytes of low-entropy data (two bits a byte).
func compressible(seed uint64, n int) []byte {
	b := make([]byte, n)
	r := rand.New(rand.NewPCG(seed, 11))
	for i := range b {
		b[i] = 'a' + byte(r.IntN(4))
	}
	return b
}

// checkStats runs qemu-img check --output=json and returns its numbers.
func checkStats(t *testing.T, path string) map[string]any {
	t.Helper()
	qemuCheck(t, path, false)
	out, err := exec.Command("qemu-img", "check", "--output=json", path).Output()
	if err != nil {
		t.Fatalf("qemu-img check: %v", err)
	}
	var m map[string]any
	if err := json.Unmarshal(out, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

// mapOffsets returns, for each mapped data extent of qemu-img map, its
// start and whether it has a host offset (compressed clusters have none).
func mapOffsets(t *testing.T, path string) map[int64]bool {
	t.Helper()
	var exts []struct {
		Start  int64  `json:"start"`
		Length int64  `json:"length"`
		Data   bool   `json:"data"`
		Offset *int64 `json:"offset"`
	}
	if err := json.Unmarshal([]byte(qemuImg(t, "map", "--output=json", path)), &exts); err != nil {
		t.Fatal(err)
	}
	m := map[int64]bool{}
	for _, e := range exts {
		if e.Data {
			m[e.Start] = e.Offset != nil
		}
	}
	return m
}

func TestCompressedWrite(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts string
		cs   int64
	}{
		{"zlib", "cluster_size=65536", 65536},
		{"zstd", "compression_type=zstd", 65536},
		{"v2-4k", "compat=0.10,cluster_size=4096", 4096},
		{"extl2", "extended_l2=on,cluster_size=32768", 32768},
		{"rb1-512", "refcount_bits=1,cluster_size=512", 512},
		{"zstd-2m", "compression_type=zstd,cluster_size=2M", 2 << 20},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			testCompressedWrite(t, tc.opts, tc.cs)
		})
	}
}

func testCompressedWrite(t *testing.T, opts string, cs int64) {
	ctx := context.Background()
	img := filepath.Join(t.TempDir(), "c.qcow2")
	size := 12*cs + 4096 // a short last cluster (a whole one for 512 and 4k)
	if cs <= 4096 {
		size = 12 * cs
	}
	qemuImg(t, "create", "-q", "-f", "qcow2", "-o", opts, img, strconv.FormatInt(size, 10))
	g := newGraph()
	n, r := openImage(t, g, "q", img, nil)
	if !n.Caps().Compressed {
		t.Fatal("qcow2 does not report compressed writes")
	}
	want := make([]byte, size)
	put := func(off int64, p []byte) {
		t.Helper()
		if err := r.WriteAt(ctx, p, off, block.FlagCompressed); err != nil {
			t.Fatalf("compressed write at %d: %v", off, err)
		}
		copy(want[off:], p)
	}
	put(0, compressible(1, int(4*cs)))         // four clusters at once
	put(4*cs, compressible(2, int(cs)))        // one
	put(5*cs, make([]byte, cs))                // zeroes
	put(6*cs, pattern(3, int(cs)))             // incompressible: written plain
	put(8*cs, compressible(4, int(size-8*cs))) // to the end, short last cluster
	// The rules: whole clusters, aligned, into free clusters only.
	for _, bad := range []struct {
		off, n int64
		errno  syscall.Errno
	}{
		{0, cs, syscall.EIO},                // holds compressed data
		{6 * cs, cs, syscall.EIO},           // holds plain data
		{512, cs - 512, syscall.EINVAL},     // unaligned
		{7 * cs, cs / 2, syscall.EINVAL},    // not a whole cluster
		{7 * cs, cs + cs/2, syscall.EINVAL}, // not whole clusters
	} {
		if bad.off == 512 && cs == 512 {
			continue
		}
		err := r.WriteAt(ctx, compressible(9, int(bad.n)), bad.off, block.FlagCompressed)
		if got := block.ErrnoOf(err); got != bad.errno {
			t.Errorf("compressed write of %d at %d: %v (%v), want %v", bad.n, bad.off, err, got, bad.errno)
		}
	}
	if got := readAll(t, r); !bytes.Equal(got, want) {
		t.Fatalf("read back: %s", firstDiff(got, want))
	}
	closeImage(t, g, r, "q")

	st := checkStats(t, img)
	nclusters := (size + cs - 1) / cs
	if c := st["compressed-clusters"]; c != float64(nclusters-2) { // all but the plain and the unwritten one
		t.Errorf("compressed clusters: %v, want %d", c, nclusters-2)
	}
	if got := rawContents(t, img); !bytes.Equal(got, want) {
		t.Fatalf("qemu-img convert: %s", firstDiff(got, want))
	}
	offs := mapOffsets(t, img)
	if !offs[6*cs] {
		t.Errorf("qemu-img map: the incompressible cluster has no host offset: %v", offs)
	}
	if offs[0] {
		t.Errorf("qemu-img map: the first cluster has a host offset: %v", offs)
	}
	// Packed: the compressed data takes far fewer host clusters than
	// guest clusters (unless 1-bit refcounts forbid sharing).
	if rb := st["allocated-clusters"]; rb != float64(nclusters-1) {
		t.Errorf("allocated clusters %v", rb)
	}
	// Header, refcount table and block, L1, L2, the plain cluster: the
	// rest is the compressed data of 11 clusters, packed.
	if end := st["image-end-offset"].(float64) / float64(cs); cs > 512 && end > 11 {
		t.Errorf("image ends after %v clusters: compressed data not packed", end)
	}

	// Rewrite parts: a plain write into a compressed cluster (copy on
	// write of the rest), a discard, a zero, then compressed data again
	// where the discard freed the cluster.
	g = newGraph()
	_, r = openImage(t, g, "q", img, nil)
	p := pattern(5, 100)
	if err := r.WriteAt(ctx, p, cs+300, 0); err != nil {
		t.Fatal(err)
	}
	copy(want[cs+300:], p)
	if err := r.Discard(ctx, 2*cs, cs); err != nil {
		t.Fatal(err)
	}
	clear(want[2*cs : 3*cs])
	if err := r.Zero(ctx, 3*cs, cs, block.FlagMayUnmap); err != nil {
		t.Fatal(err)
	}
	clear(want[3*cs : 4*cs])
	if err := r.Discard(ctx, 3*cs, cs); err != nil { // v2 wrote zeroes
		t.Fatal(err)
	}
	put(2*cs, compressible(6, int(cs)))
	put(3*cs, compressible(7, int(cs)))
	put(7*cs, compressible(8, int(cs)))
	if err := r.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if got := readAll(t, r); !bytes.Equal(got, want) {
		t.Fatalf("read back after rewrites: %s", firstDiff(got, want))
	}
	closeImage(t, g, r, "q")
	checkStats(t, img)
	if got := rawContents(t, img); !bytes.Equal(got, want) {
		t.Fatalf("qemu-img convert after rewrites: %s", firstDiff(got, want))
	}
	// qemu-io reads what we wrote, and we read what qemu-io compresses.
	qemuIO(t, img, "read -P 0 "+strconv.FormatInt(5*cs, 10)+" "+strconv.FormatInt(cs, 10))
	qemuIO(t, img, "discard 0 "+strconv.FormatInt(cs, 10), "write -c -P 0x5a 0 "+strconv.FormatInt(cs, 10))
	g = newGraph()
	_, r = openImage(t, g, "q", img, map[string]any{"read-only": true})
	got := make([]byte, cs)
	if err := r.ReadAt(ctx, got, 0, 0); err != nil || !bytes.Equal(got, bytes.Repeat([]byte{0x5a}, int(cs))) {
		t.Fatalf("reading qemu-io's compressed cluster: %v", err)
	}
	closeImage(t, g, r, "q")
}

// Compressed writes of many clusters at once, from many writers, keep the
// refcounts exact.
func TestCompressedWriteConcurrent(t *testing.T) {
	ctx := context.Background()
	img := filepath.Join(t.TempDir(), "c.qcow2")
	const cs, clusters = 4096, 512
	qemuImg(t, "create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", img, strconv.Itoa(cs*clusters))
	g := newGraph()
	_, r := openImage(t, g, "q", img, nil)
	want := make([]byte, cs*clusters)
	errs := make(chan error, 8)
	for w := 0; w < 8; w++ {
		go func() {
			var err error
			for c := w; c < clusters && err == nil; c += 8 {
				p := compressible(uint64(c), cs)
				if c%5 == 0 {
					p = pattern(uint64(c), cs)
				}
				copy(want[c*cs:], p)
				err = r.WriteAt(ctx, p, int64(c*cs), block.FlagCompressed)
			}
			errs <- err
		}()
	}
	for range 8 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	closeImage(t, g, r, "q")
	st := checkStats(t, img)
	if c := st["compressed-clusters"]; c != float64(clusters-clusters/5-1) {
		t.Errorf("compressed clusters %v", c)
	}
	if got := rawContents(t, img); !bytes.Equal(got, want) {
		t.Fatalf("qemu-img convert: %s", firstDiff(got, want))
	}
}

// The gate refuses compressed writes on nodes that cannot take them.
func TestCompressedWriteRefused(t *testing.T) {
	img := filepath.Join(t.TempDir(), "c.raw")
	qemuImg(t, "create", "-q", "-f", "raw", img, "1M")
	g := newGraph()
	n, err := blocktestTryOpen(g, `{"driver":"raw","node-name":"r","file":{"driver":"file","filename":"`+img+`"}}`)
	if err != nil {
		t.Fatal(err)
	}
	r := newRootT(t, n, block.PermConsistentRead|block.PermWrite)
	err = r.WriteAt(context.Background(), make([]byte, 65536), 0, block.FlagCompressed)
	if !errors.Is(err, block.ErrNotSupported) {
		t.Fatalf("compressed write to raw: %v", err)
	}
	closeImage(t, g, r, "r")
}

// Random writes, zeroes, discards and compressed writes agree with a
// model, on every L2 and refcount layout.
func TestCompressedRandomOps(t *testing.T) {
	for _, opts := range []string{"cluster_size=4096", "extended_l2=on,refcount_bits=8", "compat=0.10,cluster_size=16384", "compression_type=zstd,lazy_refcounts=on"} {
		t.Run(opts, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			img := filepath.Join(t.TempDir(), "c.qcow2")
			const size = 16 << 20
			qemuImg(t, "create", "-q", "-f", "qcow2", "-o", opts, img, strconv.Itoa(size))
			g := newGraph()
			n, r := openImage(t, g, "q", img, nil)
			cs := n.Caps().Limits.OptimalTransfer
			m := &model{data: make([]byte, size), cluster: cs, discardZeroes: true}
			rng := rand.New(rand.NewPCG(uint64(len(opts)), 5))
			for i := 0; i < 600; i++ {
				if rng.IntN(3) > 0 {
					randomOps(t, r, m, rng, 1, 256<<10)
					continue
				}
				off := rng.Int64N(size) &^ (cs - 1)
				l := min(cs*(1+rng.Int64N(4)), size-off)
				if err := r.Zero(ctx, off, l, block.FlagMayUnmap); err != nil {
					t.Fatal(err)
				}
				if err := r.Discard(ctx, off, l); err != nil { // v2 wrote zeroes
					t.Fatal(err)
				}
				p := compressible(rng.Uint64(), int(l))
				if err := r.WriteAt(ctx, p, off, block.FlagCompressed); err != nil {
					t.Fatalf("op %d: compressed write %d+%d: %v", i, off, l, err)
				}
				m.write(off, p)
				if got := readAll(t, r); !bytes.Equal(got, m.data) {
					t.Fatalf("op %d (compressed %d+%d): %s", i, off, l, firstDiff(got, m.data))
				}
			}
			closeImage(t, g, r, "q")
			checkStats(t, img)
			if got := rawContents(t, img); !bytes.Equal(got, m.data) {
				t.Fatalf("qemu-img convert: %s", firstDiff(got, m.data))
			}
		})
	}
}

// A write from the middle of one compressed cluster to the middle of the
// next keeps the head of the first and the tail of the second (each
// cluster decompressed for its own part).
func TestWriteAcrossCompressedClusters(t *testing.T) {
	img := filepath.Join(t.TempDir(), "c.qcow2")
	qemuImg(t, "create", "-q", "-f", "qcow2", img, "1M")
	qemuIO(t, img, "write -c -P 0x11 0 64k", "write -c -P 0x22 64k 64k")
	g := newGraph()
	_, r := openImage(t, g, "q", img, nil)
	if err := r.WriteAt(context.Background(), bytes.Repeat([]byte{0x33}, 64<<10), 32<<10, 0); err != nil {
		t.Fatal(err)
	}
	closeImage(t, g, r, "q")
	qemuCheck(t, img, false)
	qemuIO(t, img, "read -P 0x11 0 32k", "read -P 0x33 32k 64k", "read -P 0x22 96k 32k")
}

// qemu reads what every encoder path writes: clusters of every
// compressibility, and random data with short zero runs (where both
// tries of zlib and zstd are made), in zlib and zstd images.
func TestCompressedWriteQemuReads(t *testing.T) {
	for _, typ := range []string{"zlib", "zstd"} {
		t.Run(typ, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			const cs = 65536
			var data []byte
			for rnd := 0; rnd <= 16; rnd++ {
				data = append(data, mixed(7, cs, rnd)...)
			}
			r := rand.New(rand.NewPCG(8, 9))
			for _, run := range []int{16, 32, 64} {
				b := make([]byte, cs)
				for i := range b {
					if i%512 >= run {
						b[i] = byte(r.Uint32())
					}
				}
				data = append(data, b...)
			}
			img := filepath.Join(t.TempDir(), "c.qcow2")
			qemuImg(t, "create", "-q", "-f", "qcow2", "-o", "compression_type="+typ, img, strconv.Itoa(len(data)))
			g := newGraph()
			_, root := openImage(t, g, "q", img, nil)
			if err := root.WriteAt(ctx, data, 0, block.FlagCompressed); err != nil {
				t.Fatal(err)
			}
			closeImage(t, g, root, "q")
			st := checkStats(t, img)
			if got := rawContents(t, img); !bytes.Equal(got, data) {
				t.Fatalf("qemu-img convert: %s", firstDiff(got, data))
			}
			t.Logf("%v of %d clusters compressed", st["compressed-clusters"], len(data)/cs)
		})
	}
}
