package nbdtest

import "sync"

// Bitmap is an nbd.DirtyMap for tests: one flag per granule of a fixed
// size, kept as a plain slice so that what it answers is easy to trust.
type Bitmap struct {
	gran, size int64

	mu    sync.Mutex
	dirty []bool // guarded by mu; one per granule
}

// NewBitmap returns a clean bitmap of size bytes in granules of gran.
func NewBitmap(size, gran int64) *Bitmap {
	return &Bitmap{gran: gran, size: size, dirty: make([]bool, (size+gran-1)/gran)}
}

// Set marks dirty every granule that [off, off+n) touches.
func (b *Bitmap) Set(off, n int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for g := off / b.gran; g*b.gran < min(off+n, b.size); g++ {
		b.dirty[g] = true
	}
}

// NextDirtyIn implements nbd.DirtyMap, one granule at a time.
func (b *Bitmap) NextDirtyIn(from, end int64) (off, n int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	end = min(end, b.size)
	off = -1
	for p := max(from, 0); p < end; {
		next := min((p/b.gran+1)*b.gran, end)
		switch {
		case b.dirty[p/b.gran] && off < 0:
			off = p
		case !b.dirty[p/b.gran] && off >= 0:
			return off, p - off
		}
		p = next
	}
	if off < 0 {
		return -1, 0
	}
	return off, end - off
}
