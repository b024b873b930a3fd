package block

import (
	"errors"
	"fmt"
	"math/bits"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
)

// extent is a dirty byte range, for comparing bitmaps with expectations.
type extent struct{ off, n int64 }

// extents walks b with NextDirty.
func extents(b *DirtyBitmap) []extent {
	var es []extent
	for off := int64(0); ; {
		d, n := b.NextDirty(off, 0)
		if n == 0 {
			return es
		}
		es = append(es, extent{d, n})
		off = d + n
	}
}

// checkInvariants fails t unless b's count agrees with its bits and no
// bit past the end is set.
func checkInvariants(t *testing.T, b *DirtyBitmap) {
	t.Helper()
	s := b.st.Load()
	ng := b.granules(s.size)
	var set int64
	for w := range s.bits.words {
		v := s.bits.words[w].Load()
		set += int64(bits.OnesCount64(v))
		for i := range int64(64) {
			if g := int64(w)*64 + i; g >= ng && v&(1<<i) != 0 {
				t.Fatalf("bit of granule %d set past the end (%d granules)", g, ng)
			}
		}
	}
	if got := s.bits.dirty.Load(); got != set {
		t.Fatalf("dirty count %d, but %d bits are set", got, set)
	}
}

func newBitmap(t *testing.T, granularity, size int64) *DirtyBitmap {
	t.Helper()
	b, err := NewDirtyBitmap(granularity, size)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestDirtyBitmapGranularity(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		granularity, size int64
		ok                bool
	}{
		{512, 1 << 20, true},
		{4096, 0, true},
		{1 << 30, 1 << 40, true},
		{0, 4096, false},
		{-512, 4096, false},
		{256, 4096, false},
		{511, 4096, false},
		{513, 4096, false},
		{3 << 10, 4096, false},
		{512, -1, false},
		{512, 1 << 62, false}, // 2^53 granules: QEMU's limit is 2^41
	} {
		t.Run(fmt.Sprintf("%d/%d", tc.granularity, tc.size), func(t *testing.T) {
			b, err := NewDirtyBitmap(tc.granularity, tc.size)
			if (err == nil) != tc.ok {
				t.Fatalf("err = %v, want ok=%v", err, tc.ok)
			}
			if err != nil {
				if !errors.Is(err, ErrInvalid) {
					t.Errorf("error %v is not ErrInvalid", err)
				}
				return
			}
			if b.Granularity() != tc.granularity || b.Size() != tc.size || b.Count() != 0 || !b.Recording() || b.Busy() {
				t.Errorf("new bitmap: granularity %d size %d count %d recording %v busy %v",
					b.Granularity(), b.Size(), b.Count(), b.Recording(), b.Busy())
			}
		})
	}
	_, err := NewDirtyBitmap(1000, 4096)
	if want := "Granularity must be power of 2 and at least 512"; err == nil || err.Error() != want {
		t.Errorf("error %q, want QEMU's %q", err, want)
	}
}

// op is a Set (set true) or Reset of [off, off+n).
type op struct {
	set    bool
	off, n int64
}

func set(off, n int64) op   { return op{true, off, n} }
func reset(off, n int64) op { return op{false, off, n} }

func TestDirtyBitmapSetReset(t *testing.T) {
	t.Parallel()
	const k = 512
	for _, tc := range []struct {
		name              string
		granularity, size int64
		ops               []op
		want              []extent
	}{
		{"one byte dirties its granule", k, 8 * k, []op{set(100, 1)}, []extent{{0, k}}},
		{"a byte either side of a boundary", k, 8 * k, []op{set(k-1, 2)}, []extent{{0, 2 * k}}},
		{"empty and negative ranges", k, 8 * k, []op{set(0, 0), set(-k, 2*k), set(k, -1)}, nil},
		{"past the end is ignored", k, 1000, []op{set(900, 1000), set(5000, 10)}, []extent{{k, 1000 - k}}},
		{"reset rounds inward", k, 8 * k, []op{set(0, 8*k), reset(100, 1000)}, []extent{{0, k}, {2 * k, 6 * k}}},
		{"reset of less than a granule", k, 8 * k, []op{set(0, 8*k), reset(k+1, k-2), reset(3*k, k-1)}, []extent{{0, 8 * k}}},
		{"reset exact granules", k, 8 * k, []op{set(0, 8*k), reset(k, 2*k)}, []extent{{0, k}, {3 * k, 5 * k}}},
		{"reset to the end takes the partial granule", k, 1000, []op{set(0, 1000), reset(k, 1000-k)}, []extent{{0, k}}},
		{"reset past the end", k, 1000, []op{set(0, 1000), reset(k, 1<<40)}, []extent{{0, k}}},
		{"reset stopping short of the end", k, 1000, []op{set(0, 1000), reset(k, 1000-k-1)}, []extent{{0, 1000}}},
		{"across a word", k, 200 * k, []op{set(63*k, 3*k)}, []extent{{63 * k, 3 * k}}},
		{"hole at a word start", k, 200 * k, []op{set(63*k, 3*k), reset(64*k, k)}, []extent{{63 * k, k}, {65 * k, k}}},
		{"whole words", k, 200 * k, []op{set(0, 200*k), reset(10*k, 150*k)}, []extent{{0, 10 * k}, {160 * k, 40 * k}}},
		{"last word partial", k, 130*k + 7, []op{set(127*k, 10*k)}, []extent{{127 * k, 3*k + 7}}},
		{"64 KiB granules", 64 << 10, 1<<20 + 1, []op{set(70000, 1), set(1<<20, 1)}, []extent{{64 << 10, 64 << 10}, {1 << 20, 1}}},
		{"64 KiB granules, reset inward", 64 << 10, 1 << 20, []op{set(0, 1<<20), reset(1, 1<<20-2)}, []extent{{0, 64 << 10}, {15 * 64 << 10, 64 << 10}}},
		{"1 GiB granule, small disk", 1 << 30, 4096, []op{set(4095, 1)}, []extent{{0, 4096}}},
		{"reset and set again", k, 8 * k, []op{set(0, 8*k), reset(0, 8*k), set(3*k, 1)}, []extent{{3 * k, k}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := newBitmap(t, tc.granularity, tc.size)
			for _, o := range tc.ops {
				if o.set {
					b.Set(o.off, o.n)
				} else {
					b.Reset(o.off, o.n)
				}
			}
			checkInvariants(t, b)
			if got := extents(b); !slices.Equal(got, tc.want) {
				t.Errorf("dirty %v, want %v", got, tc.want)
			}
			// Count is whole granules, a partial last one included.
			var want int64
			for _, e := range tc.want {
				first, last := e.off/tc.granularity, (e.off+e.n-1)/tc.granularity
				want += (last - first + 1) * tc.granularity
			}
			if b.Count() != want {
				t.Errorf("count %d, want %d", b.Count(), want)
			}
			for _, e := range tc.want {
				if !b.Get(e.off) || !b.Get(e.off+e.n-1) {
					t.Errorf("Get misses the ends of %v", e)
				}
				if e.off > 0 && b.Get(e.off-1) {
					t.Errorf("Get: byte before %v is dirty", e)
				}
			}
		})
	}
}

// TestDirtyBitmapModel runs random Sets and Resets against a plain slice
// of bools, at several granularities and sizes around word boundaries.
func TestDirtyBitmapModel(t *testing.T) {
	t.Parallel()
	for _, gran := range []int64{512, 4096, 64 << 10} {
		for _, granules := range []int64{1, 63, 64, 65, 200} {
			for _, tail := range []int64{0, 1, gran - 1} {
				size := granules*gran + tail
				if tail > 0 {
					size -= gran // the last granule is partial
				}
				t.Run(fmt.Sprintf("%d/%d", gran, size), func(t *testing.T) {
					t.Parallel()
					rng := rand.New(rand.NewPCG(uint64(gran), uint64(size)))
					b := newBitmap(t, gran, size)
					ng := (size + gran - 1) / gran
					model := make([]bool, ng)
					for range 300 {
						off := rng.Int64N(size + gran)
						n := rng.Int64N(size/2 + 2)
						if rng.IntN(2) == 0 {
							b.Set(off, n)
							for g := off / gran; off < size && g*gran < min(off+n, size); g++ {
								model[g] = true
							}
						} else {
							b.Reset(off, n)
							for g := (off + gran - 1) / gran; g < ng; g++ {
								if end := min((g+1)*gran, size); end > off+n {
									break
								}
								model[g] = false
							}
						}
						var count int64
						for g, dirty := range model {
							if b.Get(int64(g)*gran) != dirty {
								t.Fatalf("granule %d: Get %v, model %v", g, !dirty, dirty)
							}
							if dirty {
								count += gran
							}
						}
						if b.Count() != count {
							t.Fatalf("count %d, model %d", b.Count(), count)
						}
						// NextDirtyIn finds, in a random range, the first
						// dirty run of the model, clipped to the range.
						from, end := rng.Int64N(size+gran), rng.Int64N(size+gran)
						wantOff, wantN := int64(-1), int64(0)
						for p := from; p < min(end, size); p++ {
							if model[p/gran] {
								if wantN == 0 {
									wantOff = p
								}
								wantN++
								p = min((p/gran+1)*gran, end, size) - 1
								wantN = p + 1 - wantOff
							} else if wantN > 0 {
								break
							}
						}
						if off, n := b.NextDirtyIn(from, end); off != wantOff || n != wantN {
							t.Fatalf("NextDirtyIn(%d, %d) = %d, %d; model %d, %d", from, end, off, n, wantOff, wantN)
						}
					}
					checkInvariants(t, b)
				})
			}
		}
	}
}

func TestDirtyBitmapNext(t *testing.T) {
	t.Parallel()
	const k = 512
	b := newBitmap(t, k, 300*k+100)
	b.Set(10*k, 5*k)  // granules 10-14
	b.Set(63*k, 70*k) // granules 63-132: across two word boundaries
	b.Set(300*k, 100) // the partial last granule
	for _, tc := range []struct {
		from, max int64
		off, n    int64
	}{
		{0, 0, 10 * k, 5 * k},
		{-5, 0, 10 * k, 5 * k},
		{10 * k, 0, 10 * k, 5 * k},
		{12*k + 7, 0, 12*k + 7, 3*k - 7}, // from inside a dirty granule
		{10 * k, 2 * k, 10 * k, 2 * k},
		{10 * k, 100, 10 * k, 100}, // max below a granule
		{15 * k, 0, 63 * k, 70 * k},
		{64 * k, 64 * k, 64 * k, 64 * k},
		{133 * k, 0, 300 * k, 100},
		{300*k + 99, 0, 300*k + 99, 1},
		{300*k + 100, 0, -1, 0}, // at the end
		{1 << 40, 0, -1, 0},
	} {
		if off, n := b.NextDirty(tc.from, tc.max); off != tc.off || n != tc.n {
			t.Errorf("NextDirty(%d, %d) = %d, %d; want %d, %d", tc.from, tc.max, off, n, tc.off, tc.n)
		}
	}
	for _, tc := range []struct {
		from, end int64
		off, n    int64
	}{
		{0, 300 * k, 10 * k, 5 * k},
		{0, 10 * k, -1, 0},             // clean up to end, dirty right after
		{0, 12*k + 5, 10 * k, 2*k + 5}, // end inside a dirty granule
		{-5, 11 * k, 10 * k, k},
		{12*k + 7, 20 * k, 12*k + 7, 3*k - 7},
		{15 * k, 63 * k, -1, 0},
		{15 * k, 64*k + 1, 63 * k, k + 1},
		{100 * k, 1 << 40, 100 * k, 33 * k}, // end past the bitmap
		{133 * k, 1 << 40, 300 * k, 100},
		{300 * k, 300*k + 50, 300 * k, 50},
		{5 * k, 5 * k, -1, 0}, // empty range
		{6 * k, 5 * k, -1, 0},
		{300*k + 100, 1 << 40, -1, 0},
	} {
		if off, n := b.NextDirtyIn(tc.from, tc.end); off != tc.off || n != tc.n {
			t.Errorf("NextDirtyIn(%d, %d) = %d, %d; want %d, %d", tc.from, tc.end, off, n, tc.off, tc.n)
		}
	}
	for _, tc := range []struct{ from, want int64 }{
		{0, 0},
		{-1, 0},
		{10 * k, 15 * k},
		{11*k + 3, 15 * k},
		{15*k + 3, 15*k + 3},
		{63 * k, 133 * k},
		{300 * k, -1}, // dirty to the end
		{300*k + 100, -1},
	} {
		if got := b.NextClean(tc.from); got != tc.want {
			t.Errorf("NextClean(%d) = %d, want %d", tc.from, got, tc.want)
		}
	}
	b.Clear()
	if off, n := b.NextDirty(0, 0); n != 0 || off != -1 || b.Count() != 0 {
		t.Errorf("after Clear: NextDirty %d, %d, count %d", off, n, b.Count())
	}
	checkInvariants(t, b)
}

func TestDirtyBitmapResize(t *testing.T) {
	t.Parallel()
	const k = 512
	for _, tc := range []struct {
		name   string
		size   int64
		sets   []extent // before the resize
		resize []int64
		want   []extent
	}{
		{"shrink drops what lies past the end", 200 * k, []extent{{0, 200 * k}}, []int64{70 * k}, []extent{{0, 70 * k}}},
		{"shrink then grow: new area clean", 200 * k, []extent{{0, 200 * k}}, []int64{70 * k, 200 * k}, []extent{{0, 70 * k}}},
		{"a granule cut in two keeps its bit", 200 * k, []extent{{0, 200 * k}}, []int64{70*k + 1, 200 * k}, []extent{{0, 71 * k}}},
		{"grow within the last word", 10 * k, []extent{{9 * k, k}}, []int64{60 * k}, []extent{{9 * k, k}}},
		{"grow past the word", 10 * k, []extent{{9 * k, k}}, []int64{1000 * k}, []extent{{9 * k, k}}},
		{"grow from a partial granule", 10*k + 1, []extent{{10 * k, 1}}, []int64{20 * k}, []extent{{10 * k, k}}},
		{"to zero and back", 10 * k, []extent{{0, 10 * k}}, []int64{0, 10 * k}, nil},
		{"shrink within a granule", 10 * k, []extent{{9 * k, k}}, []int64{9*k + 5}, []extent{{9 * k, 5}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := newBitmap(t, k, tc.size)
			for _, e := range tc.sets {
				b.Set(e.off, e.n)
			}
			for _, s := range tc.resize {
				b.Resize(s)
				checkInvariants(t, b)
				if b.Size() != s {
					t.Fatalf("size %d after Resize(%d)", b.Size(), s)
				}
			}
			if got := extents(b); !slices.Equal(got, tc.want) {
				t.Errorf("dirty %v, want %v", got, tc.want)
			}
		})
	}
	// The write path grows by doubling the array; the bits survive.
	b := newBitmap(t, k, k)
	for s := int64(k); s < 5000*k; s += 37 * k {
		b.grow(s)
		b.Set(s-1, 1)
	}
	checkInvariants(t, b)
	if b.Count() != 136*k {
		t.Errorf("count %d after growing, want %d", b.Count(), 136*k)
	}
	if n := len(b.st.Load().bits.words); n > 2*int(wordsFor(5000)) {
		t.Errorf("%d words for %d granules", n, 5000)
	}
}

func TestDirtyBitmapCopyMerge(t *testing.T) {
	t.Parallel()
	const k = 512
	b := newBitmap(t, k, 100*k)
	b.Set(3*k, 2*k)
	c := b.Copy()
	b.Set(50*k, 1)
	b.Reset(3*k, k)
	if got, want := extents(c), []extent{{3 * k, 2 * k}}; !slices.Equal(got, want) || c.Name() != "" {
		t.Errorf("copy changed with its source: %v", got)
	}
	checkInvariants(t, c)

	// Same granularity: word OR.
	if err := c.Merge(b); err != nil {
		t.Fatal(err)
	}
	if got, want := extents(c), []extent{{3 * k, 2 * k}, {50 * k, k}}; !slices.Equal(got, want) {
		t.Errorf("merged %v, want %v", got, want)
	}
	checkInvariants(t, c)

	// A finer source rounds outward into a coarser target and back.
	coarse := newBitmap(t, 8*k, 100*k)
	if err := coarse.Merge(c); err != nil {
		t.Fatal(err)
	}
	if got, want := extents(coarse), []extent{{0, 8 * k}, {48 * k, 8 * k}}; !slices.Equal(got, want) {
		t.Errorf("merged into coarse %v, want %v", got, want)
	}
	fine := newBitmap(t, k, 100*k)
	if err := fine.Merge(coarse); err != nil {
		t.Fatal(err)
	}
	if got, want := extents(fine), extents(coarse); !slices.Equal(got, want) {
		t.Errorf("merged into fine %v, want %v", got, want)
	}
	checkInvariants(t, coarse)
	checkInvariants(t, fine)

	if err := fine.Merge(fine); err != nil || fine.Count() != 16*k {
		t.Errorf("merge with itself: %v, count %d", err, fine.Count())
	}
	other := newBitmap(t, k, 100*k+1)
	err := b.Merge(other)
	if want := "Bitmaps are of different sizes (destination size is 51200, source size is 51201) and can't be merged"; err == nil || err.Error() != want {
		t.Errorf("merge of different sizes: %v, want %q", err, want)
	}
}

// TestDirtyBitmapConcurrent sets from many goroutines, each granule once,
// while another resets and sets again a region of its own (a copy loop's
// order), another resizes the bitmap back and forth (a new array every
// time, so that Sets race the copy of the words) and another reads. No
// Set may be lost; run with -race. (Without either half of Set's
// protocol with Resize, the retry or the second copy, this loses bits.)
func TestDirtyBitmapConcurrent(t *testing.T) {
	t.Parallel()
	const (
		k       = 512
		writers = 4
		per     = 50000
		lower   = writers * per * k // the writers' granules
		size    = lower + 64*k      // and the copier's
	)
	b := newBitmap(t, k, size)
	var wg, others sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			for i := range per {
				b.Set(int64(i*writers+w)*k+int64(i%k), 1)
			}
		})
	}
	wg.Go(func() {
		for i := range per {
			off := lower + int64(i%64)*k
			b.Reset(off, k)
			b.Set(off, k)
		}
	})
	done := make(chan struct{})
	others.Go(func() {
		for i := 0; ; i++ {
			select {
			case <-done:
				return
			default:
			}
			b.Resize(size + int64(i%2)*64*k)
		}
	})
	others.Go(func() {
		for {
			select {
			case <-done:
				return
			default:
			}
			b.NextDirty(0, 1<<20)
			b.NextClean(0)
			b.Get(lower)
			b.Count()
		}
	})
	wg.Wait()
	close(done)
	others.Wait()
	checkInvariants(t, b)
	if b.Count() != size {
		t.Fatalf("count %d, want %d: %d Sets lost", b.Count(), size, (size-b.Count())/k)
	}
	if off, _ := b.NextDirty(size, 0); off != -1 {
		t.Errorf("grown area has dirty data at %d", off)
	}
}

func TestDirtyBitmapRecording(t *testing.T) {
	t.Parallel()
	b := newBitmap(t, 512, 4096)
	b.SetRecording(false)
	b.SetBusy(true)
	if b.Recording() || !b.Busy() {
		t.Errorf("recording %v busy %v", b.Recording(), b.Busy())
	}
	// Explicit changes apply to a disabled bitmap (block-dirty-bitmap-merge
	// into a disabled target does).
	b.Set(0, 1)
	if b.Count() != 512 {
		t.Errorf("Set on a disabled bitmap: count %d", b.Count())
	}
}

// TestDirtyBitmapSHA256 pins the hash to what qsd 7.2's
// x-debug-block-dirty-bitmap-sha256 answered for a 64 MiB node after the
// same writes (qemu-io over NBD: 512 bytes at 0, 70000 at 100000, 1 MiB
// of zeroes at 10 MiB, the last 512 bytes), and for a 1024-byte node
// whose one granule needs one word.
func TestDirtyBitmapSHA256(t *testing.T) {
	t.Parallel()
	writes := []extent{{0, 512}, {100000, 70000}, {10 << 20, 1 << 20}, {64<<20 - 512, 512}}
	for _, tc := range []struct {
		gran, size   int64
		clean, dirty string
	}{
		{65536, 64 << 20, "38723a2e5e8a17aa7950dc008209944e898f69a7bd10a23c839d341e935fd5ca", "342dd17b2dc414fc01cd4283729e2ed2f2ea904e39930a098372a2970abf0176"},
		{512, 64 << 20, "4fe7b59af6de3b665b67788cc2f99892ab827efae3a467342b3bb4e3bc8e5bfe", "5002a2ddeb751363161c518a5d7411adbb1088c4ef75fe1798f9b91b5330e852"},
		{1 << 31, 64 << 20, "af5570f5a1810b7af78caf4bc70a660f0df51e42baf91d4de5b2328de0e83dfc", "7c9fa136d4413fa6173637e883b6998d32e1d675f88cddff9dcbcf331820f4b8"},
		{65536, 1024, "af5570f5a1810b7af78caf4bc70a660f0df51e42baf91d4de5b2328de0e83dfc", ""},
	} {
		b := newBitmap(t, tc.gran, tc.size)
		if got := b.SHA256(); got != tc.clean {
			t.Errorf("granularity %d size %d, clean: %s, want %s", tc.gran, tc.size, got, tc.clean)
		}
		if tc.dirty == "" {
			continue
		}
		for _, w := range writes {
			b.Set(w.off, w.n)
		}
		if got := b.SHA256(); got != tc.dirty {
			t.Errorf("granularity %d, dirty: %s, want %s", tc.gran, got, tc.dirty)
		}
		// Spare words past the end (a bitmap grown by writes) are not hashed.
		b.grow(tc.size + 1<<30)
		b.Resize(tc.size)
		if got := b.SHA256(); got != tc.dirty {
			t.Errorf("granularity %d, after growing and shrinking back: %s, want %s", tc.gran, got, tc.dirty)
		}
	}
}

// TestDirtyBitmapRestore: a bitmap cleared or merged into gets back
// exactly the bits of its copy, count included.
func TestDirtyBitmapRestore(t *testing.T) {
	t.Parallel()
	const k = 512
	b := newBitmap(t, k, 100*k)
	b.Set(3*k, 2*k)
	backup := b.Copy()
	b.Clear()
	b.Set(70*k, 1)
	b.Restore(backup)
	if got, want := extents(b), []extent{{3 * k, 2 * k}}; !slices.Equal(got, want) || b.Count() != 2*k {
		t.Errorf("restored %v count %d, want %v", got, b.Count(), want)
	}
	checkInvariants(t, b)
}

// TestDirtyBitmapCheckUse: the refusals QMP commands give, in QEMU's
// order: busy before read-only before inconsistent; read-only matters to
// commands that change or remove a bitmap, inconsistent to all but
// removal.
func TestDirtyBitmapCheckUse(t *testing.T) {
	t.Parallel()
	b, err := newDirtyBitmap("bm", 512, 4096)
	if err != nil {
		t.Fatal(err)
	}
	const (
		busy  = "Bitmap 'bm' is currently in use by another operation and cannot be used"
		ro    = "Bitmap 'bm' is readonly and cannot be modified"
		incon = "Bitmap 'bm' is inconsistent and cannot be used"
	)
	for _, tc := range []struct {
		busy, ro, incon bool
		want            [3]string // UseBits, ChangeBits, RemoveBitmap
	}{
		{want: [3]string{"", "", ""}},
		{incon: true, want: [3]string{incon, incon, ""}},
		{ro: true, want: [3]string{"", ro, ro}},
		{ro: true, incon: true, want: [3]string{incon, ro, ro}},
		{busy: true, ro: true, incon: true, want: [3]string{busy, busy, busy}},
	} {
		b.SetBusy(tc.busy)
		b.SetReadOnly(tc.ro)
		b.SetInconsistent(tc.incon)
		for use, want := range tc.want {
			err := b.CheckUse(BitmapUse(use))
			if (err == nil) != (want == "") || err != nil && err.Error() != want {
				t.Errorf("busy %v ro %v inconsistent %v, use %d: %v, want %q", tc.busy, tc.ro, tc.incon, use, err, want)
			}
		}
	}
	b.SetBusy(true)
	if !errors.Is(b.CheckUse(UseBits), ErrBusy) {
		t.Errorf("busy is not ErrBusy")
	}
}
