package qcow2

import (
	"context"

	"github.com/blockd/blockd/pkg/block"
)

// SpliceRead implements block.Splicer: the range is mapped as a read
// maps it, and each plain data extent is spliced from the file at its
// host offset (unallocated ones from the backing node, which must be
// able to splice too). Zero and compressed clusters have no bytes in a
// file to move: the reader falls back to ReadAt, where they are built
// in memory. An NBD export's sparse reads send zero clusters as holes,
// so a fully allocated or sparse image mostly takes this path.
func (q *image) SpliceRead(ctx context.Context, pipe int, off int64, n int) (int, error) {
	if err := q.usable(); err != nil {
		return 0, err
	}
	q.ioGate.RLock()
	defer q.ioGate.RUnlock()
	var arr [16]extent
	moved := 0
	for moved < n {
		q.mu.Lock()
		exts, err := q.mapIntoLocked(ctx, off+int64(moved), int64(n-moved), arr[:0], len(arr), 1<<30)
		q.mu.Unlock()
		if err != nil {
			return moved, err
		}
		for _, x := range exts {
			k, err := q.spliceExtent(ctx, pipe, x)
			moved += k
			if err != nil {
				return moved, err
			}
			if k != int(x.len) {
				return moved, nil // short: the caller falls back
			}
		}
	}
	return moved, nil
}

func (q *image) spliceExtent(ctx context.Context, pipe int, x extent) (int, error) {
	switch x.kind {
	case eData:
		q.event(block.DebugReadAIO)
		// An error is not reported as the image's: the reader falls back
		// to ReadAt, which reports what it finds.
		return q.file.SpliceRead(ctx, pipe, x.host, int(x.len))
	case eUnalloc:
		if q.backing == nil || x.off+x.len > q.backing.Size() {
			return 0, block.ErrNoSplice // zeroes, which no file holds
		}
		q.event(block.DebugReadBackingAIO)
		return q.backing.SpliceRead(ctx, pipe, x.off, int(x.len))
	}
	return 0, block.ErrNoSplice
}

// SpliceWritable implements block.SpliceWriter: the data clusters are
// the file's bytes, so the image takes writes from a pipe when its file
// does.
func (q *image) SpliceWritable() bool {
	return q.usable() == nil && q.file.SpliceWritable()
}

// SpliceWrite implements block.SpliceWriter: the write maps and
// allocates clusters as WriteAt does, and each run of host clusters
// takes its bytes from the pipe through the file's SpliceWrite. A mirror
// into a new image moves its data with one copy in the kernel (the
// pipe's pages into the target's page cache) and none in blockd.
func (q *image) SpliceWrite(ctx context.Context, pipe int, off int64, n int, f block.Flags) error {
	if f&block.FlagCompressed != 0 {
		return block.ErrNoSplice
	}
	if err := q.usable(); err != nil {
		return err
	}
	q.ioGate.RLock()
	defer q.ioGate.RUnlock()
	src := payload{pipe: pipe}
	return q.writePayload(ctx, &src, int64(n), off)
}
