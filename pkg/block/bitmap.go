package block

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"math/bits"
	"slices"
	"sync"
	"sync/atomic"
)

// A DirtyBitmap records which parts of a node changed. Jobs that copy a
// node while it is in use (mirror, active commit) attach an anonymous one
// to the source and copy again what turns dirty behind them; incremental
// backup keeps named ones across jobs (QMP block-dirty-bitmap-*). The
// generic layer (io.go) sets every recording bitmap of a node on each
// write, write-zeroes and discard that reached its driver, failed ones
// included: a failed request may have changed part of its range, and a
// range marked dirty for nothing costs one extra copy, while one missed
// leaves a target that differs from its source.
//
// Granularity. One bit stands for one granule, a power of two of at least
// 512 bytes. Set rounds outward (every granule the range touches turns
// dirty); Reset rounds inward (only granules the range covers whole turn
// clean, and the last, partial granule counts as covered when the range
// reaches the end): rounding either way the other would lose writes. A
// copy loop that copies whole granules, as mirror does, resets exactly
// what it is about to copy. Count is in granules times the granularity,
// as QEMU reports it, so a dirty last granule counts whole.
//
// Size. A bitmap on a node covers the node's size: a truncate resizes it
// (the granules past a smaller end are dropped, a larger end adds clean
// ones, a granule cut in two keeps its bit) and a write past the end grows
// it. A partial last granule is part of the bitmap.
//
// Concurrency. Every method is safe for concurrent use. Set, Get, Count,
// NextDirty and NextClean take no lock: bits live in 64-bit words changed
// with atomic OR and AND, and Set on a granule already dirty writes no
// memory at all. Reset, Clear, Merge, Resize and Copy take the bitmap's
// mutex among themselves. A Set that returned before a Reset began is
// cleared by it; one that began after the Reset returned is kept; readers
// see each word either before or after a concurrent change. A writer must
// therefore set after its data is in place, and a copier reset before it
// reads (the order io.go and mirror keep), so that a write racing a copy
// is always copied again.
type DirtyBitmap struct {
	name  string
	shift uint // log2 of the granularity; immutable

	// st is the current size and words. Resize replaces it (under mu);
	// Set, which takes no lock, checks after setting that it did not set
	// bits in an array a resize had already copied, and sets again if so.
	st atomic.Pointer[bitmapState]
	mu sync.Mutex // serialises Reset, Clear, Merge, Resize and Copy

	disabled atomic.Bool // not recording: the node's writes pass it by
	busy     atomic.Bool
	frozen   atomic.Bool // a job's successor records in its place

	// What a format that stores bitmaps in its image (qcow2) needs to
	// know and say about one: see the methods of the same names.
	persistent, inconsistent, readOnly atomic.Bool
}

// bitmapState is one size of a bitmap. Several states may share an
// array: growing within its capacity only swaps the state.
type bitmapState struct {
	size int64
	bits *bitArray
}

// bitArray holds the bits. Bits past the granules of the current size are
// always zero, so growing in place needs no clearing.
type bitArray struct {
	words []atomic.Uint64
	dirty atomic.Int64 // set bits in words
}

// MaxBitmapName is the longest name a named bitmap may have, in bytes
// (QEMU's BDRV_BITMAP_MAX_NAME_SIZE; qcow2 stores names up to it).
const MaxBitmapName = 1023

// maxGranules is QEMU's bound on a bitmap (HBITMAP_LOG_MAX_SIZE): 2^41
// bits, 256 GiB of memory, far beyond any real use.
const maxGranules = 1 << 41

// NewDirtyBitmap returns an anonymous bitmap of size bytes, all clean and
// recording, not attached to a node. Jobs use it for a private copy
// bitmap; nodes' bitmaps come from AddDirtyBitmap.
func NewDirtyBitmap(granularity, size int64) (*DirtyBitmap, error) {
	return newDirtyBitmap("", granularity, size)
}

func newDirtyBitmap(name string, granularity, size int64) (*DirtyBitmap, error) {
	if granularity < 512 || granularity&(granularity-1) != 0 {
		// compat(qsd-7.2): block-dirty-bitmap-add's wording.
		return nil, Errorf(ErrInvalid, "Granularity must be power of 2 and at least 512")
	}
	if size < 0 {
		return nil, Errorf(ErrInvalid, "Bitmap size cannot be negative")
	}
	b := &DirtyBitmap{name: name, shift: uint(bits.TrailingZeros64(uint64(granularity)))}
	n := b.granules(size)
	if n > maxGranules {
		return nil, Errorf(ErrInvalid, "A bitmap of granularity %d cannot cover %d bytes", granularity, size)
	}
	b.st.Store(&bitmapState{size: size, bits: &bitArray{words: make([]atomic.Uint64, wordsFor(n))}})
	return b, nil
}

// Name is the bitmap's name; "" for an anonymous (job) bitmap.
func (b *DirtyBitmap) Name() string { return b.name }

// Granularity is the number of bytes one bit stands for.
func (b *DirtyBitmap) Granularity() int64 { return 1 << b.shift }

// Size is the number of bytes the bitmap covers.
func (b *DirtyBitmap) Size() int64 { return b.st.Load().size }

// Recording reports whether the node's writes set the bitmap (QMP's
// "recording"). Set, Reset and Merge change a bitmap either way.
func (b *DirtyBitmap) Recording() bool { return !b.disabled.Load() }

// SetRecording enables or disables recording (block-dirty-bitmap-enable,
// -disable).
func (b *DirtyBitmap) SetRecording(on bool) { b.disabled.Store(!on) }

// Busy reports whether an operation (a backup job) uses the bitmap, so
// that QMP commands must leave it alone.
func (b *DirtyBitmap) Busy() bool { return b.busy.Load() }

// SetBusy marks the bitmap as used by an operation, or no longer.
func (b *DirtyBitmap) SetBusy(busy bool) { b.busy.Store(busy) }

// Frozen reports whether the node's writes pass the bitmap by because a
// job's successor bitmap records them apart (QEMU's frozen bitmap): the
// bitmap still counts as recording, and keeps the bits it had when the
// job began until the job hands the successor's back.
func (b *DirtyBitmap) Frozen() bool { return b.frozen.Load() }

// SetFrozen freezes or thaws the bitmap (see Frozen).
func (b *DirtyBitmap) SetFrozen(on bool) { b.frozen.Store(on) }

// A persistent bitmap is one a format driver (qcow2) stores in its image
// when the node closes or goes read-only, and loads again when the image
// is opened. An inconsistent one was found marked in use in the image
// (whoever had it open did not store it): its bits cannot be trusted, so
// it is not recording and QMP commands other than remove refuse it, but
// it stays in the image until removed. The driver reads the flags from
// its close path while QMP may change them: they are atomic.

// Persistent reports whether the bitmap is to be stored in the node's
// image (block-dirty-bitmap-add's "persistent"). A format that stores
// bitmaps writes the persistent ones when it flushes or closes; the flag
// itself stores nothing.
func (b *DirtyBitmap) Persistent() bool { return b.persistent.Load() }

// SetPersistent sets whether the bitmap is to be stored in the image.
func (b *DirtyBitmap) SetPersistent(on bool) { b.persistent.Store(on) }

// Inconsistent reports whether the bitmap was loaded from an image that
// was not closed cleanly while it recorded: its bits cannot be trusted,
// and it may only be removed.
func (b *DirtyBitmap) Inconsistent() bool { return b.inconsistent.Load() }

// SetInconsistent marks a loaded bitmap as inconsistent.
func (b *DirtyBitmap) SetInconsistent(on bool) { b.inconsistent.Store(on) }

// ReadOnly reports whether the bitmap was loaded from an image opened
// read-only: it must not change, because it could not be stored again.
func (b *DirtyBitmap) ReadOnly() bool { return b.readOnly.Load() }

// SetReadOnly marks a loaded bitmap as read-only, or no longer.
func (b *DirtyBitmap) SetReadOnly(on bool) { b.readOnly.Store(on) }

// BitmapUse is what a QMP command does with a bitmap, for CheckUse.
type BitmapUse uint8

const (
	// UseBits reads the bits or switches recording (enable, disable, a
	// merge's source).
	UseBits BitmapUse = iota
	// ChangeBits changes the bits (clear, a merge's target).
	ChangeBits
	// RemoveBitmap removes the bitmap: an inconsistent one may go.
	RemoveBitmap
)

// CheckUse says whether a QMP command may use the bitmap as use says,
// and if not why, in QEMU's words: never while busy; not when read-only,
// to change or remove it; not when inconsistent, but to remove it.
func (b *DirtyBitmap) CheckUse(use BitmapUse) error {
	// compat(qsd-7.2): bdrv_dirty_bitmap_check's messages and order.
	switch {
	case b.Busy():
		return Errorf(ErrBusy, "Bitmap '%s' is currently in use by another operation and cannot be used", b.name)
	case use != UseBits && b.ReadOnly():
		return Errorf(ErrReadOnly, "Bitmap '%s' is readonly and cannot be modified", b.name)
	case use != RemoveBitmap && b.Inconsistent():
		return Errorf(ErrInvalid, "Bitmap '%s' is inconsistent and cannot be used", b.name)
	}
	return nil
}

// Count is the number of dirty bytes: dirty granules times the
// granularity (QMP's "count").
func (b *DirtyBitmap) Count() int64 { return b.st.Load().bits.dirty.Load() << b.shift }

// granules is the number of granules covering size bytes.
func (b *DirtyBitmap) granules(size int64) int64 {
	return size>>b.shift + min(size&b.offMask(), 1)
}

// offMask masks an offset's position within its granule.
func (b *DirtyBitmap) offMask() int64 { return 1<<b.shift - 1 }

func wordsFor(granules int64) int64 { return (granules + 63) >> 6 }

// Get reports whether the granule holding off is dirty. Offsets outside
// the bitmap are clean.
func (b *DirtyBitmap) Get(off int64) bool {
	s := b.st.Load()
	if off < 0 || off >= s.size {
		return false
	}
	g := off >> b.shift
	return s.bits.words[g>>6].Load()&(1<<(g&63)) != 0
}

// Set marks every granule that [off, off+length) touches dirty. The part
// of the range past the bitmap's end is ignored.
func (b *DirtyBitmap) Set(off, length int64) {
	if off < 0 || length <= 0 {
		return
	}
	for {
		s := b.st.Load()
		if off >= s.size {
			return
		}
		end := s.size
		if length < end-off {
			end = off + length
		}
		s.bits.set(off>>b.shift, (end-1)>>b.shift+1)
		// If a resize swapped the state meanwhile, its copies of the old
		// words may have missed these bits: set them in the new array
		// too. (If the state is still s, a resize yet to swap will copy
		// them once more after its swap.)
		if b.st.Load() == s {
			return
		}
	}
}

// Reset marks clean the granules that [off, off+length) covers whole; a
// range that reaches the end covers the last, partial granule.
func (b *DirtyBitmap) Reset(off, length int64) {
	if off < 0 || length <= 0 {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	s := b.st.Load()
	if off >= s.size {
		return
	}
	lo := off >> b.shift
	if off&b.offMask() != 0 {
		lo++
	}
	hi := b.granules(s.size)
	if length < s.size-off {
		hi = (off + length) >> b.shift
	}
	if lo < hi {
		s.bits.reset(lo, hi)
	}
}

// Clear marks the whole bitmap clean.
func (b *DirtyBitmap) Clear() {
	b.mu.Lock()
	defer b.mu.Unlock()
	a := b.st.Load().bits
	for i := range a.words {
		if old := a.words[i].Swap(0); old != 0 {
			a.dirty.Add(-int64(bits.OnesCount64(old)))
		}
	}
}

// NextDirty returns the first dirty extent at or after from: it starts at
// from or at the start of the first dirty granule after it, and ends at
// the next clean granule, the bitmap's end, or maxLen bytes later if
// maxLen is positive, whichever comes first. n is 0 (and off -1) if
// nothing is dirty from there on. A copy loop walks a bitmap with it.
func (b *DirtyBitmap) NextDirty(from, maxLen int64) (off, n int64) {
	s := b.st.Load()
	from = max(from, 0)
	if from >= s.size {
		return -1, 0
	}
	ng := b.granules(s.size)
	g := s.bits.next(from>>b.shift, ng, true)
	if g < 0 {
		return -1, 0
	}
	off = max(from, g<<b.shift)
	limit := s.size
	if maxLen > 0 && maxLen < limit-off {
		limit = off + maxLen
	}
	end := limit
	if c := s.bits.next(g, b.granules(limit), false); c >= 0 {
		end = min(c<<b.shift, limit)
	}
	return off, end - off
}

// NextDirtyIn returns the first dirty extent inside [from, end): it
// starts at from or at the start of the first dirty granule after it, and
// ends at the next clean granule, the bitmap's end or end, whichever comes
// first. n is 0 (and off -1) when [from, end) is clean. Unlike NextDirty
// it looks no further than end, so an NBD export's block status costs
// what the asked range holds, not what the rest of the disk does.
func (b *DirtyBitmap) NextDirtyIn(from, end int64) (off, n int64) {
	s := b.st.Load()
	from, end = max(from, 0), min(end, s.size)
	if from >= end {
		return -1, 0
	}
	g := s.bits.next(from>>b.shift, b.granules(end), true)
	if g < 0 {
		return -1, 0
	}
	off = max(from, g<<b.shift)
	stop := end
	if c := s.bits.next(g, b.granules(end), false); c >= 0 {
		stop = min(c<<b.shift, end)
	}
	return off, stop - off
}

// NextClean returns the first offset at or after from whose granule is
// clean, or -1 if everything from there to the end is dirty.
func (b *DirtyBitmap) NextClean(from int64) int64 {
	s := b.st.Load()
	from = max(from, 0)
	if from >= s.size {
		return -1
	}
	g := s.bits.next(from>>b.shift, b.granules(s.size), false)
	if g < 0 {
		return -1
	}
	return max(from, g<<b.shift)
}

// Copy returns an anonymous, detached bitmap with the same granularity,
// size and bits: what was dirty when a pass started.
func (b *DirtyBitmap) Copy() *DirtyBitmap {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := b.st.Load()
	c := &DirtyBitmap{shift: b.shift}
	a := &bitArray{words: make([]atomic.Uint64, wordsFor(b.granules(s.size)))}
	a.or(s.bits, b.granules(s.size))
	c.st.Store(&bitmapState{size: s.size, bits: a})
	return c
}

// Merge sets in b every byte that is dirty in src (b |= src). The two
// must cover the same size; their granularities may differ (src's dirty
// ranges are then set in b, rounded outward to b's granules).
func (b *DirtyBitmap) Merge(src *DirtyBitmap) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	s, o := b.st.Load(), src.st.Load()
	if s.size != o.size {
		// compat(qsd-7.2): block-dirty-bitmap-merge's wording.
		return Errorf(ErrInvalid, "Bitmaps are of different sizes (destination size is %d, source size is %d) and can't be merged", s.size, o.size)
	}
	if b.shift == src.shift {
		s.bits.or(o.bits, b.granules(s.size))
		return nil
	}
	for off := int64(0); ; {
		d, n := src.NextDirty(off, 0)
		if n == 0 || d >= s.size { // src may have grown since
			return nil
		}
		end := min(d+n, s.size)
		s.bits.set(d>>b.shift, (end-1)>>b.shift+1)
		off = end
	}
}

// Restore gives b back the bits of backup, a Copy of b taken earlier
// (b's granularity; its size, if b has not been resized since): what an
// aborted transaction does to a bitmap it cleared or merged into. Bits
// set in b since the copy are lost, so the caller keeps the node's
// writers drained from the copy to the restore.
func (b *DirtyBitmap) Restore(backup *DirtyBitmap) {
	b.mu.Lock()
	defer b.mu.Unlock()
	s, o := b.st.Load(), backup.st.Load()
	ng := b.granules(s.size)
	a := &bitArray{words: make([]atomic.Uint64, wordsFor(ng))}
	if backup.shift == b.shift {
		a.or(o.bits, min(ng, b.granules(o.size)))
	}
	b.st.Store(&bitmapState{size: s.size, bits: a})
}

// SHA256 is the hex SHA-256 of the bitmap's bits as QEMU lays them out
// in memory (x-debug-block-dirty-bitmap-sha256): one bit per granule, in
// little-endian 64-bit words, as many words as the granules need but at
// least one, bits past the end clear.
func (b *DirtyBitmap) SHA256() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := b.st.Load()
	n := b.granules(s.size)
	h := sha256.New()
	var w [8]byte
	for i := range max(wordsFor(n), 1) {
		var v uint64
		if i < int64(len(s.bits.words)) {
			_, m := wordMask(i<<6, n)
			v = s.bits.words[i].Load() & m
		}
		binary.LittleEndian.PutUint64(w[:], v)
		h.Write(w[:])
	}
	return hex.EncodeToString(h.Sum(nil))
}

// Resize makes the bitmap cover size bytes: granules past a smaller end
// are dropped, a larger end adds clean ones.
func (b *DirtyBitmap) Resize(size int64) {
	if size < 0 {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.resizeLocked(size, false)
}

// grow makes the bitmap cover at least size bytes. The write path grows
// bitmaps a little at a time, so the array grows by doubling.
func (b *DirtyBitmap) grow(size int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if size > b.st.Load().size {
		b.resizeLocked(size, true)
	}
}

func (b *DirtyBitmap) resizeLocked(size int64, spare bool) {
	old := b.st.Load()
	if size == old.size {
		return
	}
	ng, og := b.granules(size), b.granules(old.size)
	need := wordsFor(ng)
	// Same granules, or more that fit the array: the bits past the old
	// end are already clear, so only the size changes. A Set still on
	// the old state stays within the old, smaller range.
	if ng == og || (ng > og && need <= int64(len(old.bits.words))) {
		b.st.Store(&bitmapState{size: size, bits: old.bits})
		return
	}
	// A new array: shrinking in place could not stop a Set on the old,
	// larger state from setting bits past the new end.
	words := need
	if spare && ng > og {
		words = max(need, 2*int64(len(old.bits.words)))
	}
	a := &bitArray{words: make([]atomic.Uint64, words)}
	keep := min(ng, og)
	a.or(old.bits, keep)
	b.st.Store(&bitmapState{size: size, bits: a})
	// Sets that loaded the old state may have landed after the first
	// copy but checked the state before the swap; copy once more. Those
	// that check after the swap set the new array themselves.
	a.or(old.bits, keep)
}

// set sets granules [lo, hi).
func (a *bitArray) set(lo, hi int64) {
	for lo < hi {
		w, m := wordMask(lo, hi)
		word := &a.words[w]
		if word.Load()&m != m {
			if fresh := m &^ word.Or(m); fresh != 0 {
				a.dirty.Add(int64(bits.OnesCount64(fresh)))
			}
		}
		lo = (w + 1) << 6
	}
}

// reset clears granules [lo, hi).
func (a *bitArray) reset(lo, hi int64) {
	for lo < hi {
		w, m := wordMask(lo, hi)
		word := &a.words[w]
		if word.Load()&m != 0 {
			if gone := m & word.And(^m); gone != 0 {
				a.dirty.Add(-int64(bits.OnesCount64(gone)))
			}
		}
		lo = (w + 1) << 6
	}
}

// or sets in a the bits of src's first n granules.
func (a *bitArray) or(src *bitArray, n int64) {
	for w := range wordsFor(n) {
		_, m := wordMask(w<<6, n)
		if v := src.words[w].Load() & m; v != 0 && a.words[w].Load()&v != v {
			if fresh := v &^ a.words[w].Or(v); fresh != 0 {
				a.dirty.Add(int64(bits.OnesCount64(fresh)))
			}
		}
	}
}

// next returns the first granule in [lo, hi) whose bit is dirty (or
// clean, if dirty is false), or -1.
func (a *bitArray) next(lo, hi int64, dirty bool) int64 {
	for lo < hi {
		w, m := wordMask(lo, hi)
		v := a.words[w].Load()
		if !dirty {
			v = ^v
		}
		if v &= m; v != 0 {
			return w<<6 + int64(bits.TrailingZeros64(v))
		}
		lo = (w + 1) << 6
	}
	return -1
}

// wordMask returns the word holding granule lo and the mask of granules
// [lo, hi) within it. Granules are never negative, so shifts and masks
// (cheaper than signed division, and this is on the write path) do.
func wordMask(lo, hi int64) (w int64, m uint64) {
	w = lo >> 6
	m = ^uint64(0) << (lo & 63)
	if end := hi - w<<6; end < 64 {
		m &= 1<<(end&63) - 1
	}
	return w, m
}

// nodeBitmaps are a node's dirty bitmaps. The I/O path reads list with one
// atomic load and no lock; changes copy the slice under mu.
type nodeBitmaps struct {
	mu   sync.Mutex
	list atomic.Pointer[[]*DirtyBitmap] // nil when there is none
}

// AddDirtyBitmap attaches a new, clean, recording bitmap to n, covering
// n's size. An empty name makes an anonymous bitmap (jobs' own); named
// ones are unique per node. To record every write from a given moment
// on, add the bitmap while the node is drained: a write that is in
// flight while it is added may or may not be recorded.
func (n *Node) AddDirtyBitmap(name string, granularity int64) (*DirtyBitmap, error) {
	n.bitmaps.mu.Lock()
	defer n.bitmaps.mu.Unlock()
	if name != "" && n.FindDirtyBitmap(name) != nil {
		// compat(qsd-7.2): bdrv_create_dirty_bitmap's wording.
		return nil, Errorf(ErrInvalid, "Bitmap already exists: %s", name)
	}
	if len(name) > MaxBitmapName {
		return nil, Errorf(ErrInvalid, "Bitmap name too long: %s", name)
	}
	b, err := newDirtyBitmap(name, granularity, n.Size())
	if err != nil {
		return nil, err
	}
	list := append(n.DirtyBitmaps(), b)
	n.bitmaps.list.Store(&list)
	return b, nil
}

// RemoveDirtyBitmap detaches b from n; it does nothing if b is not n's.
// b stays usable as a detached bitmap.
func (n *Node) RemoveDirtyBitmap(b *DirtyBitmap) {
	n.bitmaps.mu.Lock()
	defer n.bitmaps.mu.Unlock()
	var list []*DirtyBitmap
	for _, x := range n.DirtyBitmaps() {
		if x != b {
			list = append(list, x)
		}
	}
	if len(list) == 0 {
		n.bitmaps.list.Store(nil)
		return
	}
	n.bitmaps.list.Store(&list)
}

// ReplaceDirtyBitmap puts b where old is in n's list and detaches old:
// a job's anonymous successor handing its place back to the bitmap it
// stood for (QEMU's abdicate: the bitmap then lists as the newer one).
// It does nothing unless both are n's.
func (n *Node) ReplaceDirtyBitmap(old, b *DirtyBitmap) {
	n.bitmaps.mu.Lock()
	defer n.bitmaps.mu.Unlock()
	cur := n.DirtyBitmaps()
	if !slices.Contains(cur, old) || !slices.Contains(cur, b) {
		return
	}
	list := make([]*DirtyBitmap, 0, len(cur)-1)
	for _, x := range cur {
		switch x {
		case b:
		case old:
			list = append(list, b)
		default:
			list = append(list, x)
		}
	}
	n.bitmaps.list.Store(&list)
}

// DirtyBitmaps lists n's bitmaps in the order they were added. The slice
// must not be modified.
func (n *Node) DirtyBitmaps() []*DirtyBitmap {
	if p := n.bitmaps.list.Load(); p != nil {
		return *p
	}
	return nil
}

// FindDirtyBitmap returns n's bitmap called name, or nil. Anonymous
// bitmaps have no name to find them by.
func (n *Node) FindDirtyBitmap(name string) *DirtyBitmap {
	if name == "" {
		return nil
	}
	for _, b := range n.DirtyBitmaps() {
		if b.name == name {
			return b
		}
	}
	return nil
}

// markDirty records a request that reached n's driver and may have
// changed [off, off+length). It costs one atomic load on a node without
// bitmaps.
func (n *Node) markDirty(off, length int64) {
	if n.bitmaps.list.Load() != nil {
		n.markDirtySlow(off, length)
	}
}

func (n *Node) markDirtySlow(off, length int64) {
	for _, b := range n.DirtyBitmaps() {
		// A write past the end grew the node (noteWrite) before this;
		// a failed one did not, and Set ignores what lies past the end.
		if off+length > b.Size() {
			b.grow(n.Size())
		}
		if b.Recording() && !b.Frozen() {
			b.Set(off, length)
		}
	}
}

// resizeDirtyBitmaps makes n's bitmaps follow n's size after a truncate.
func (n *Node) resizeDirtyBitmaps() {
	for _, b := range n.DirtyBitmaps() {
		b.Resize(n.Size())
	}
}
