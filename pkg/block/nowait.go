package block

import (
	"context"
	"errors"
	"time"
)

// A NoWaitReader is a driver that can try a read that must not block:
// the file driver asks the kernel for the page cache only (RWF_NOWAIT),
// raw passes the range on to its file. A server whose reader goroutine
// tries such a read first (the NBD export) answers a cached read on the
// spot, with no hand-off to a worker, and only sends reads that would
// wait for the disk to its workers.
//
// Like Splicer, only drivers that add nothing a read must pass through
// implement it; through any other node the read would block, and
// ReadNoWait says so.
type NoWaitReader interface {
	// ReadNoWait fills p from off if it can do so without waiting for
	// I/O, and returns ErrWouldBlock (with p undefined) if it cannot.
	ReadNoWait(ctx context.Context, p []byte, off int64) error
}

// ErrWouldBlock is returned by ReadNoWait when the read would wait (data
// not in the page cache, a driver without the path, a drained root): the
// caller reads with ReadAt where waiting is fine.
var ErrWouldBlock = errors.New("read would block")

// ReadNoWait reads len(p) bytes at off of the child's node if that needs
// no waiting, as NoWaitReader says.
func (c *Child) ReadNoWait(ctx context.Context, p []byte, off int64) error {
	nd := c.Node()
	r, ok := nd.impl.(NoWaitReader)
	if !ok || !nd.plainRange(off, int64(len(p))) {
		return ErrWouldBlock
	}
	if err := r.ReadNoWait(ctx, p, off); err != nil {
		if !errors.Is(err, ErrWouldBlock) {
			nd.Stats.FailedRd.Add(1)
		}
		return err
	}
	nd.Stats.RdOps.Add(1)
	nd.Stats.RdBytes.Add(int64(len(p)))
	return nil
}

// ReadNoWait reads through the root without waiting, as NoWaitReader
// says; a root being drained answers ErrWouldBlock rather than wait.
func (r *Root) ReadNoWait(ctx context.Context, p []byte, off int64) error {
	if err := r.check(off, int64(len(p))); err != nil {
		return err
	}
	if !r.tryEnter() {
		return ErrWouldBlock
	}
	defer r.exit()
	start := time.Now()
	err := r.child.ReadNoWait(ctx, p, off)
	if !errors.Is(err, ErrWouldBlock) {
		st := &r.child.Node().Stats
		timed(&st.RdTimeNs, &st.RdLatency, start)
		r.Stats.account(acctRead, int64(len(p)), start, err)
	}
	return err
}
