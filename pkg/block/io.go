package block

import (
	"context"
	"errors"
	"fmt"
	"math"
)

// This file is the gate: every request to a node passes through these
// Child methods, which check range, permission and alignment once, keep
// statistics, and emulate what a driver lacks. Drivers never re-check.
//
// Every node counts its requests and bytes; only requests from outside
// the graph (Root) are timed, since reading the clock twice per layer
// would cost more than a pass-through filter does.

// zeroBuf is a shared buffer of zeroes for emulated write-zeroes. Drivers
// never modify what they are given to write.
var zeroBuf = make([]byte, 1<<20)

func (c *Child) checkWrite(n *Node, f Flags) error {
	if n.ReadOnly() {
		return Errorf(ErrReadOnly, "Block node '%s' is read-only", n.name)
	}
	perm, _ := c.Perm()
	need := PermWrite
	if f&FlagWriteUnchanged != 0 {
		need = PermWriteUnchanged
	}
	if perm&(need|PermWrite) == 0 {
		return fmt.Errorf("%s has no write permission on node '%s': %w", c.parent.Describe(), n.name, ErrPermission)
	}
	return nil
}

func checkRange(off, n int64) error {
	if off < 0 || n < 0 || off > math.MaxInt64-n {
		return Errorf(ErrOutOfRange, "request offset %d length %d is invalid", off, n)
	}
	return nil
}

// Size returns the node's virtual size.
func (c *Child) Size() int64 { return c.Node().Size() }

// ReadAt reads len(p) bytes at off. Reads beyond the node's end read
// zeroes (a protocol node's file may be shorter than its users think).
func (c *Child) ReadAt(ctx context.Context, p []byte, off int64, f Flags) error {
	n := c.Node()
	if err := checkRange(off, int64(len(p))); err != nil {
		n.Stats.InvalidRd.Add(1)
		return err
	}
	err := n.readAt(ctx, p, off, f)
	if err != nil {
		n.Stats.FailedRd.Add(1)
		return err
	}
	n.Stats.RdOps.Add(1)
	n.Stats.RdBytes.Add(int64(len(p)))
	return nil
}

func (n *Node) readAt(ctx context.Context, p []byte, off int64, f Flags) error {
	if len(p) == 0 {
		return nil
	}
	size := n.Size()
	if off >= size {
		clear(p)
		return nil
	}
	if end := off + int64(len(p)); end > size {
		clear(p[size-off:])
		p = p[:size-off]
	}
	caps := n.caps.Load()
	align := caps.Limits.RequestAlign
	if align > 1 && (off%align != 0 || int64(len(p))%align != 0) {
		return n.readUnaligned(ctx, p, off, f, align)
	}
	if caps.Limits.MaxTransfer <= 0 || int64(len(p)) <= caps.Limits.MaxTransfer {
		return n.impl.ReadAt(ctx, p, off, f)
	}
	return n.split(int64(len(p)), caps.Limits, func(o, l int64) error {
		return n.impl.ReadAt(ctx, p[o:o+l], off+o, f)
	})
}

// split calls fn on pieces of at most MaxTransfer bytes (aligned).
func (n *Node) split(total int64, l Limits, fn func(o, l int64) error) error {
	max := l.MaxTransfer
	if max <= 0 || total <= max {
		return fn(0, total)
	}
	if a := l.RequestAlign; a > 1 {
		max -= max % a
	}
	for o := int64(0); o < total; o += max {
		k := min(max, total-o)
		if err := fn(o, k); err != nil {
			return err
		}
	}
	return nil
}

func alignDown(x, a int64) int64 { return x - x%a }
func alignUp(x, a int64) int64   { return alignDown(x+a-1, a) }

func (n *Node) readUnaligned(ctx context.Context, p []byte, off int64, f Flags, align int64) error {
	lo := alignDown(off, align)
	hi := alignUp(off+int64(len(p)), align)
	buf := alignedBuf(int(hi - lo))
	err := n.split(hi-lo, n.Caps().Limits, func(o, l int64) error {
		return n.impl.ReadAt(ctx, buf[o:o+l], lo+o, f)
	})
	if err == nil {
		copy(p, buf[off-lo:])
	}
	return err
}

// alignedBuf returns a zeroed buffer aligned to 4096 bytes (O_DIRECT).
func alignedBuf(size int) []byte {
	const a = 4096
	b := make([]byte, size+a)
	shift := 0
	if r := int(uintptrOf(b) % a); r != 0 {
		shift = a - r
	}
	return b[shift : shift+size : shift+size]
}

// WriteAt writes p at off. A write beyond the node's end grows it, which
// only a parent holding the resize permission may do.
func (c *Child) WriteAt(ctx context.Context, p []byte, off int64, f Flags) error {
	n := c.Node()
	if err := c.checkIO(n, off, int64(len(p)), f); err != nil {
		n.Stats.InvalidWr.Add(1)
		return err
	}
	if f&FlagCompressed != 0 && !n.Caps().Compressed {
		n.Stats.FailedWr.Add(1)
		return fmt.Errorf("node '%s' cannot write compressed data: %w", n.name, ErrNotSupported)
	}
	n.checkWriteThreshold(off, int64(len(p)))
	err := n.writeAtEvents(ctx, p, off, f)
	if err != nil {
		n.markDirty(off, int64(len(p))) // part of it may have been written
		n.Stats.FailedWr.Add(1)
		return err
	}
	n.noteWrite(off, int64(len(p)))
	n.Stats.WrOps.Add(1)
	n.Stats.WrBytes.Add(int64(len(p)))
	return nil
}

// checkIO is the common check of requests that change data.
func (c *Child) checkIO(n *Node, off, length int64, f Flags) error {
	if err := checkRange(off, length); err != nil {
		return err
	}
	if err := c.checkWrite(n, f); err != nil {
		return err
	}
	if off+length > n.Size() {
		if perm, _ := c.Perm(); perm&PermResize == 0 {
			return Errorf(ErrOutOfRange, "write of %d bytes at offset %d is beyond the end of node '%s' (%d bytes)", length, off, n.name, n.Size())
		}
	}
	return nil
}

func (n *Node) noteWrite(off, length int64) {
	end := off + length
	for {
		s := n.size.Load()
		if end <= s || n.size.CompareAndSwap(s, end) {
			break
		}
	}
	for {
		h := n.Stats.WrHighestOffset.Load()
		if end <= h || n.Stats.WrHighestOffset.CompareAndSwap(h, end) {
			break
		}
	}
	n.markDirty(off, length)
}

func (n *Node) writeAt(ctx context.Context, p []byte, off int64, f Flags) error {
	if len(p) == 0 {
		return nil
	}
	if dz := n.common.DetectZeroes; dz != "" && dz != DetectZeroesOff && isZero(p) {
		zf := f &^ (FlagWriteUnchanged | FlagCompressed)
		if dz == DetectZeroesUnmap {
			zf |= FlagMayUnmap
		}
		return n.zero(ctx, off, int64(len(p)), zf)
	}
	return n.writeRaw(ctx, p, off, f)
}

// writeRaw is writeAt without detect-zeroes.
func (n *Node) writeRaw(ctx context.Context, p []byte, off int64, f Flags) error {
	caps := n.caps.Load()
	fua := f&FlagFUA != 0 && !caps.FUA
	if fua {
		f &^= FlagFUA
	}
	align := caps.Limits.RequestAlign
	var err error
	if align > 1 && (off%align != 0 || int64(len(p))%align != 0) {
		err = n.rmwWrite(ctx, p, off, f, align)
	} else {
		if align > 1 {
			n.rmw.RLock()
		}
		if caps.Limits.MaxTransfer <= 0 || int64(len(p)) <= caps.Limits.MaxTransfer {
			err = n.impl.WriteAt(ctx, p, off, f)
		} else {
			err = n.split(int64(len(p)), caps.Limits, func(o, l int64) error {
				return n.impl.WriteAt(ctx, p[o:o+l], off+o, f)
			})
		}
		if align > 1 {
			n.rmw.RUnlock()
		}
	}
	if err == nil && fua {
		err = n.impl.Flush(ctx)
	}
	return err
}

// rmwWrite writes an unaligned request by reading the aligned blocks
// around it. It excludes all other writes to the node while it works:
// unaligned writes are rare (O_DIRECT nodes under byte-granular users).
func (n *Node) rmwWrite(ctx context.Context, p []byte, off int64, f Flags, align int64) error {
	n.rmw.Lock()
	defer n.rmw.Unlock()
	lo := alignDown(off, align)
	hi := alignUp(off+int64(len(p)), align)
	buf := alignedBuf(int(hi - lo))
	size := n.Size()
	// Only the first and last block need reading.
	for _, b := range []int64{lo, hi - align} {
		if b >= size {
			continue
		}
		if err := n.impl.ReadAt(ctx, buf[b-lo:b-lo+align], b, 0); err != nil {
			return err
		}
	}
	copy(buf[off-lo:], p)
	return n.split(hi-lo, n.Caps().Limits, func(o, l int64) error {
		return n.impl.WriteAt(ctx, buf[o:o+l], lo+o, f)
	})
}

func isZero(p []byte) bool {
	for len(p) >= 8 {
		if p[0]|p[1]|p[2]|p[3]|p[4]|p[5]|p[6]|p[7] != 0 {
			return false
		}
		p = p[8:]
	}
	for _, b := range p {
		if b != 0 {
			return false
		}
	}
	return true
}

// IsZero reports whether p holds only zero bytes.
func IsZero(p []byte) bool { return isZero(p) }

// Zero makes [off, off+length) read as zeroes. FlagMayUnmap lets the
// driver deallocate; FlagNoFallback makes it fail with ErrNotSupported
// rather than write zeroes.
func (c *Child) Zero(ctx context.Context, off, length int64, f Flags) error {
	n := c.Node()
	if err := c.checkIO(n, off, length, f); err != nil {
		n.Stats.InvalidWr.Add(1)
		return err
	}
	n.checkWriteThreshold(off, length)
	err := n.zeroEvents(ctx, off, length, f)
	if err != nil {
		if !errors.Is(err, ErrNotSupported) {
			n.markDirty(off, length) // part of it may have been zeroed
			n.Stats.FailedWr.Add(1)
		}
		return err
	}
	n.noteWrite(off, length)
	n.Stats.WrOps.Add(1)
	return nil
}

func (n *Node) zero(ctx context.Context, off, length int64, f Flags) error {
	if length == 0 {
		return nil
	}
	if n.common.Discard != DiscardUnmap {
		f &^= FlagMayUnmap
	}
	caps := n.caps.Load()
	align := caps.Limits.RequestAlign
	if caps.Zero {
		// Aligned middle natively; unaligned head and tail by writing.
		lo, hi := alignUp(off, align), alignDown(off+length, align)
		if align <= 1 {
			lo, hi = off, off+length
		}
		if lo < hi {
			err := n.impl.Zero(ctx, lo, hi-lo, f)
			if err == nil {
				if err := n.writeZeroes(ctx, off, lo-off, f); err != nil {
					return err
				}
				return n.writeZeroes(ctx, hi, off+length-hi, f)
			}
			if !errors.Is(err, ErrNotSupported) {
				return err
			}
		}
	}
	if f&FlagNoFallback != 0 {
		return fmt.Errorf("node '%s' cannot write zeroes quickly: %w", n.name, ErrNotSupported)
	}
	return n.writeZeroes(ctx, off, length, f)
}

func (n *Node) writeZeroes(ctx context.Context, off, length int64, f Flags) error {
	f &^= FlagMayUnmap | FlagNoFallback | FlagCompressed
	for length > 0 {
		k := min(length, int64(len(zeroBuf)))
		if err := n.writeRaw(ctx, zeroBuf[:k], off, f); err != nil {
			return err
		}
		off += k
		length -= k
	}
	return nil
}

// Discard tells the node the range is no longer needed. It is advisory.
func (c *Child) Discard(ctx context.Context, off, length int64) error {
	n := c.Node()
	if err := c.checkIO(n, off, length, 0); err != nil {
		n.Stats.InvalidUnmap.Add(1)
		return err
	}
	if length == 0 || n.common.Discard != DiscardUnmap || !n.Caps().Discard {
		return nil
	}
	n.checkWriteThreshold(off, length)
	err := n.impl.Discard(ctx, off, length)
	n.markDirty(off, length)
	if err != nil && !errors.Is(err, ErrNotSupported) {
		n.Stats.FailedUnmap.Add(1)
		n.Stats.DiscardNbFailed.Add(1)
		return err
	}
	n.Stats.UnmapOps.Add(1)
	n.Stats.UnmapBytes.Add(length)
	n.Stats.DiscardNbOK.Add(1)
	n.Stats.DiscardBytesOK.Add(length)
	return nil
}

// Flush makes every write that completed before the call durable.
func (c *Child) Flush(ctx context.Context) error {
	n := c.Node()
	err := n.flushEvents(ctx)
	if err != nil {
		n.Stats.FailedFlush.Add(1)
		return err
	}
	n.Stats.FlushOps.Add(1)
	return nil
}

// Truncate resizes the node; the parent needs the resize permission.
func (c *Child) Truncate(ctx context.Context, size int64, exact bool) error {
	n := c.Node()
	if perm, _ := c.Perm(); perm&PermResize == 0 {
		return fmt.Errorf("%s may not resize node '%s': %w", c.parent.Describe(), n.name, ErrPermission)
	}
	if n.ReadOnly() {
		return Errorf(ErrReadOnly, "Block node '%s' is read-only", n.name)
	}
	if size < 0 {
		return Errorf(ErrInvalid, "Image size cannot be negative")
	}
	if err := n.impl.Truncate(ctx, size, exact); err != nil {
		return err
	}
	if err := n.RefreshSize(ctx); err != nil {
		return err
	}
	n.resizeDirtyBitmaps()
	return nil
}

// BlockStatus describes the node's own status of the range starting at
// off (at most length bytes, at least one). Nodes without block status
// report everything as allocated data.
func (c *Child) BlockStatus(ctx context.Context, off, length int64) (Extent, error) {
	return c.Node().blockStatus(ctx, off, length)
}

func (n *Node) blockStatus(ctx context.Context, off, length int64) (Extent, error) {
	if err := checkRange(off, length); err != nil {
		return Extent{}, err
	}
	size := n.Size()
	if off >= size || length == 0 {
		return Extent{}, Errorf(ErrOutOfRange, "block status at offset %d is beyond the end of node '%s'", off, n.name)
	}
	length = min(length, size-off)
	if !n.Caps().BlockStatus {
		return Extent{Len: length, Status: StatusData | StatusAllocated}, nil
	}
	e, err := n.impl.BlockStatus(ctx, off, length)
	if err != nil {
		return Extent{}, err
	}
	if e.Len <= 0 {
		return Extent{}, fmt.Errorf("node '%s' reported an empty extent at offset %d: %w", n.name, off, ErrInternal)
	}
	e.Len = min(e.Len, length)
	return e, nil
}
