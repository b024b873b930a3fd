package block

import (
	"context"
	"errors"
	"io"
	"time"
)

// A Splicer is a driver that can move a range of its data into a pipe
// without copying it through user memory: the file driver splices its
// page cache pages, raw passes the range on to its file. A server that
// sends the pipe on to a socket (the NBD export) then moves a read reply
// with no copy in blockd at all, where ReadAt costs two (into a buffer,
// out of it into the socket).
//
// Only drivers whose data is the plain bytes of their child implement it:
// a filter that must see reads (throttle, copy-on-read, blkdebug) does
// not, and a read through it takes the ReadAt path as before.
type Splicer interface {
	// SpliceRead moves exactly n bytes at off into the pipe whose write
	// end is the file descriptor pipe, and returns how many it moved.
	// A short count or an error leaves the pipe holding the bytes moved;
	// the caller discards them and reads with ReadAt. ErrNoSplice says
	// (part of) the range cannot be spliced: a format whose range mixes
	// plain clusters with compressed or zero ones finds that out part way.
	SpliceRead(ctx context.Context, pipe int, off int64, n int) (int, error)
}

// ErrNoSplice is returned by SpliceRead when a range cannot be spliced
// (a driver without the path, an unaligned or out-of-bounds range): the
// caller reads it with ReadAt.
var ErrNoSplice = errors.New("range cannot be spliced")

// SpliceRead moves n bytes at off of the child's node into a pipe, as
// Splicer says. The range must lie inside the node.
func (c *Child) SpliceRead(ctx context.Context, pipe int, off int64, n int) (int, error) {
	nd := c.Node()
	s, ok := nd.impl.(Splicer)
	if !ok || !nd.plainRange(off, int64(n)) {
		return 0, ErrNoSplice
	}
	moved, err := s.SpliceRead(ctx, pipe, off, n)
	switch {
	case errors.Is(err, ErrNoSplice):
		return moved, err
	case err != nil || moved != n:
		nd.Stats.FailedRd.Add(1)
		return moved, err
	}
	nd.Stats.RdOps.Add(1)
	nd.Stats.RdBytes.Add(int64(n))
	return n, nil
}

// plainRange says whether a fast path (splice, a read that must not
// wait) may hand [off, off+n) straight to the driver: inside the node
// (past the end a node reads zeroes, which no file holds) and of a shape
// the generic layer would pass on as it is (plainShape).
func (nd *Node) plainRange(off, n int64) bool {
	return nd.plainShape(off, n) && off+n <= nd.Size()
}

// plainShape says whether the generic layer would neither pad nor split
// a request for [off, off+n): aligned, and no larger than the driver
// takes at once. A write past the end may still be refused (checkIO).
func (nd *Node) plainShape(off, n int64) bool {
	if n <= 0 || checkRange(off, n) != nil {
		return false
	}
	l := nd.caps.Load().Limits
	if a := l.RequestAlign; a > 1 && (off%a != 0 || n%a != 0) {
		return false
	}
	return l.MaxTransfer <= 0 || n <= l.MaxTransfer
}

// SpliceRead moves n bytes at off into a pipe through the root, as
// Splicer says; ErrNoSplice when the chain below cannot.
func (r *Root) SpliceRead(ctx context.Context, pipe int, off int64, n int) (int, error) {
	if err := r.check(off, int64(n)); err != nil {
		return 0, err
	}
	r.enter()
	defer r.exit()
	start := time.Now()
	moved, err := r.child.SpliceRead(ctx, pipe, off, n)
	if !errors.Is(err, ErrNoSplice) {
		st := &r.child.Node().Stats
		timed(&st.RdTimeNs, &st.RdLatency, start)
		failed := err
		if moved != n && failed == nil {
			failed = io.ErrUnexpectedEOF // counted as a failed read, as the node counts it
		}
		r.Stats.account(acctRead, int64(n), start, failed)
	}
	return moved, err
}

// A SpliceWriter is a driver that can take a write's data straight from
// a pipe: the NBD client splices it into its socket, the file driver into
// its page cache, a format (raw, qcow2) into its file where the data goes.
// A job copying between such nodes (a mirror's or a migration's copy)
// moves the source's page cache pages by reference, where ReadAt and
// WriteAt copy every byte twice in blockd (into a buffer, out of it).
type SpliceWriter interface {
	// SpliceWritable says whether writes can take the pipe path at all
	// as the node is open now: a file opened with O_DIRECT cannot, nor a
	// format whose file cannot. A caller asks (through CanSpliceWrite)
	// before it fills a pipe.
	SpliceWritable() bool
	// SpliceWrite writes n bytes at off, taken from the pipe whose read
	// end is the file descriptor pipe (which holds at least n bytes). On
	// an error the pipe may still hold some of them: the caller discards
	// it. ErrNoSplice says the write was not acknowledged and is to be
	// made again with WriteAt (the NBD client lost its connection after
	// it had read the pipe, and resends only from memory; a format met a
	// part of its file that cannot splice).
	SpliceWrite(ctx context.Context, pipe int, off int64, n int, f Flags) error
}

// spliceWritable is the node's half of CanSpliceWrite, whatever the
// range: the driver takes writes from a pipe now, and nothing in the
// generic layer needs to see the data (detect-zeroes, blkdebug's events).
func (nd *Node) spliceWritable() bool {
	s, ok := nd.impl.(SpliceWriter)
	if !ok || !s.SpliceWritable() {
		return false
	}
	if _, ok := nd.impl.(DebugEventer); ok {
		return false
	}
	dz := nd.common.DetectZeroes
	return dz == "" || dz == DetectZeroesOff
}

// SpliceWritable says whether the child's node takes writes from a pipe
// as it is open now (see SpliceWriter); a format asks it of its file.
func (c *Child) SpliceWritable() bool { return c.Node().spliceWritable() }

// CanSpliceWrite reports whether SpliceWrite can write n bytes at off
// through the root: the node under it takes writes from a pipe, and
// nothing between the root and the driver needs to see the data (see
// spliceWritable, and no alignment or size the generic layer would fix
// up). A caller asks before it fills a pipe.
func (r *Root) CanSpliceWrite(off int64, n int) bool {
	nd := r.child.Node()
	return nd.spliceWritable() && nd.plainRange(off, int64(n))
}

// SpliceWrite writes n bytes at off, taken from a pipe, through the root
// (see SpliceWriter); ErrNoSplice, before the pipe is touched, when
// CanSpliceWrite says no.
func (r *Root) SpliceWrite(ctx context.Context, pipe int, off int64, n int, f Flags) error {
	if err := r.check(off, int64(n)); err != nil {
		r.Stats.invalid(acctWrite)
		return err
	}
	if !r.CanSpliceWrite(off, n) {
		return ErrNoSplice
	}
	r.enter()
	defer r.exit()
	start := time.Now()
	err := r.child.spliceWrite(ctx, pipe, off, n, f)
	if !errors.Is(err, ErrNoSplice) {
		st := &r.child.Node().Stats
		timed(&st.WrTimeNs, &st.WrLatency, start)
		r.Stats.account(acctWrite, int64(n), start, err)
	}
	return err
}

// SpliceWrite writes n bytes at off of the child's node, taken from a
// pipe, as SpliceWriter says: a format writes its data into its file
// with it, and may grow the file as WriteAt does. ErrNoSplice, before
// the pipe is touched, when the node cannot (see SpliceWritable) or the
// range is not one the driver takes as it is.
func (c *Child) SpliceWrite(ctx context.Context, pipe int, off int64, n int, f Flags) error {
	nd := c.Node()
	if !nd.spliceWritable() || !nd.plainShape(off, int64(n)) {
		return ErrNoSplice
	}
	return c.spliceWrite(ctx, pipe, off, n, f)
}

// spliceWrite is Child.WriteAt for data in a pipe: the same checks,
// bitmaps and counters; the caller checked the node as CanSpliceWrite
// does.
func (c *Child) spliceWrite(ctx context.Context, pipe int, off int64, n int, f Flags) error {
	nd := c.Node()
	length := int64(n)
	if err := c.checkIO(nd, off, length, f); err != nil {
		nd.Stats.InvalidWr.Add(1)
		return err
	}
	nd.checkWriteThreshold(off, length)
	caps := nd.caps.Load()
	fua := f&FlagFUA != 0 && !caps.FUA
	if fua {
		f &^= FlagFUA
	}
	err := nd.impl.(SpliceWriter).SpliceWrite(ctx, pipe, off, n, f)
	if err == nil && fua {
		err = nd.impl.Flush(ctx)
	}
	if errors.Is(err, ErrNoSplice) {
		return err
	}
	if err != nil {
		nd.markDirty(off, length) // part of it may have been written
		nd.Stats.FailedWr.Add(1)
		return err
	}
	nd.noteWrite(off, length)
	nd.Stats.WrOps.Add(1)
	nd.Stats.WrBytes.Add(length)
	return nil
}
