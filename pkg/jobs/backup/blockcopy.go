package backup

import (
	"context"
	"sync/atomic"

	"github.com/blockd/blockd/pkg/block"
	"github.com/blockd/blockd/pkg/jobs"
)

// defaultCluster is the smallest unit a backup copies (QEMU's backup
// cluster size); a target with larger clusters raises it.
const defaultCluster = 64 << 10

// maxCopy bounds one copy from the copy-before-write path, so that a
// guest's large write does not allocate a buffer of its size at once.
const maxCopy = 1 << 20

// blockCopy is the state the copy-before-write filter and the backup job
// share (QEMU's block-copy): which clusters of the source still have to
// reach the target (dirty in the bitmap), and a range lock so that one
// cluster is never copied twice at once, nor written by a guest while it
// is being copied.
//
// Both paths copy through copyRange: with the clusters locked, each
// still-dirty run is marked clean, read from the source and written to
// the target; a failure marks it dirty again. A guest write first copies
// its clusters and only then goes down, so the target gets the data as
// it was when the job started; the job walks the bitmap and finds
// clusters a guest write copied already clean.
type blockCopy struct {
	source, target *block.Child
	cluster        int64
	size           int64
	bitmap         *block.DirtyBitmap // dirty: still to copy; detached from any node
	locks          block.RangeLock
	// copied, if set, is told how many bytes reached the target (the
	// job's progress).
	copied atomic.Pointer[func(int64)]
	// compress makes the data writes compressed (backup compress=true);
	// zeroes are still written as zeroes.
	compress atomic.Bool
}

// newBlockCopy prepares copying source to target, everything dirty.
func newBlockCopy(source, target *block.Child) (*blockCopy, error) {
	cluster := max(int64(defaultCluster), target.Node().Caps().Limits.OptimalTransfer)
	size := source.Size()
	bm, err := block.NewDirtyBitmap(cluster, size)
	if err != nil {
		return nil, err
	}
	bm.Set(0, size)
	return &blockCopy{source: source, target: target, cluster: cluster, size: size, bitmap: bm}, nil
}

// startFrom limits the copy to the clusters dirty in bm (the filter's
// bitmap option), which must be usable and of the source's size.
func (b *blockCopy) startFrom(bm *block.DirtyBitmap) error {
	if err := bm.CheckUse(block.UseBits); err != nil {
		return err
	}
	b.bitmap.Clear()
	return b.bitmap.Merge(bm)
}

// onCopied makes fn hear of every byte copied from now on.
func (b *blockCopy) onCopied(fn func(int64)) { b.copied.Store(&fn) }

// remaining is how many bytes are still to copy.
func (b *blockCopy) remaining() int64 { return min(b.bitmap.Count(), b.size) }

// extent answers jobs.Copy: the run at off is to be copied if its
// clusters are dirty.
func (b *blockCopy) extent(ctx context.Context, off, max int64) (int64, bool, error) {
	d, n := b.bitmap.NextDirty(off, max)
	switch {
	case n == 0:
		return max, false, nil
	case d > off:
		return min(d-off, max), false, nil
	}
	return n, true, nil
}

// copyRange copies what is still dirty among the clusters that
// [off, off+n) touches, using buf (at least one cluster) for the data.
// A failed write is wrapped with jobs.WriteError.
func (b *blockCopy) copyRange(ctx context.Context, off, n int64, buf []byte) error {
	lo := off / b.cluster * b.cluster
	hi := min((off+n+b.cluster-1)/b.cluster*b.cluster, b.size)
	if lo >= hi {
		return nil
	}
	lk, err := b.locks.Lock(ctx, lo, hi)
	if err != nil {
		return err
	}
	defer b.locks.Unlock(lk)
	for pos := lo; pos < hi; {
		// Only inside the locked range: a run found beyond it is another
		// caller's to copy under its own lock (copying it here, unlocked,
		// could read a guest's new data while that caller lets the write
		// through, having found the run clean).
		d, m := b.bitmap.NextDirtyIn(pos, hi)
		if m == 0 {
			return nil
		}
		b.bitmap.Reset(d, m)
		if err := b.copyRun(ctx, d, m, buf); err != nil {
			return err
		}
		pos = d + m
	}
	return nil
}

// copyRun copies [off, off+n), whose bits the caller just reset, piece
// by piece; on failure what was not copied turns dirty again. Ranges the
// source reads as zeroes are zeroed on the target without being read.
func (b *blockCopy) copyRun(ctx context.Context, off, n int64, buf []byte) error {
	for end := off + n; off < end; {
		l, err := b.copyPiece(ctx, off, min(end-off, int64(len(buf))), buf)
		if err != nil {
			b.bitmap.Set(off, end-off)
			return err
		}
		if fn := b.copied.Load(); fn != nil {
			(*fn)(l)
		}
		off += l
	}
	return nil
}

// copyPiece copies up to n bytes at off and says how many it copied.
func (b *blockCopy) copyPiece(ctx context.Context, off, n int64, buf []byte) (int64, error) {
	st, err := block.StatusAbove(ctx, b.source.Node(), nil, off, n)
	if err != nil {
		return 0, err
	}
	compress := b.compress.Load()
	if st.Zero {
		l := min(st.Len, n)
		if compress && off+l < b.size {
			// Compressed writes take whole clusters: what follows a
			// zero run must start at a cluster boundary.
			l -= l % b.cluster
		}
		if l > 0 {
			return l, wrapWrite(b.target.Zero(ctx, off, l, 0))
		}
	}
	p := buf[:n]
	if err := b.source.ReadAt(ctx, p, off, 0); err != nil {
		return 0, err
	}
	if block.IsZero(p) {
		return n, wrapWrite(b.target.Zero(ctx, off, n, 0))
	}
	var fl block.Flags
	if compress {
		fl = block.FlagCompressed
	}
	return n, wrapWrite(b.target.WriteAt(ctx, p, off, fl))
}

func wrapWrite(err error) error {
	if err != nil {
		return jobs.WriteError(err)
	}
	return nil
}
