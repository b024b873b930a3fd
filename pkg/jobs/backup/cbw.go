package backup

import (
	"context"
	"fmt"
	"sync"
	"syscall"
	"time"

	"github.com/blockd/blockd/pkg/block"
)

// CBWOptions are the copy-before-write filter's options (QEMU 7.2's
// BlockdevOptionsCbw).
type CBWOptions struct {
	File   block.NodeRef `json:"file"`
	Target block.NodeRef `json:"target"`
	// Bitmap, if set, limits what the filter saves (and what its
	// snapshot view holds) to the clusters dirty in it when the filter
	// opens: an incremental pull backup needs only those.
	Bitmap     *BitmapRef  `json:"bitmap,omitempty"`
	OnCBWError *OnCBWError `json:"on-cbw-error,omitempty"`
	// CBWTimeout, in seconds, bounds one copy before a write (0: none).
	CBWTimeout *uint32 `json:"cbw-timeout,omitempty"`
}

// BitmapRef names a dirty bitmap (QMP's BlockDirtyBitmap).
type BitmapRef struct {
	Node string `json:"node"`
	Name string `json:"name"`
}

// OnCBWError is what a failed copy before a write breaks.
type OnCBWError string

const (
	// BreakGuestWrite fails the write (the default): the snapshot stays
	// whole.
	BreakGuestWrite OnCBWError = "break-guest-write"
	// BreakSnapshot lets the write through and the snapshot view fail
	// from then on: the guest never sees a backup's trouble.
	BreakSnapshot OnCBWError = "break-snapshot"
)

// EnumValues implements qmp.Enum.
func (OnCBWError) EnumValues() []string {
	return []string{string(BreakGuestWrite), string(BreakSnapshot)}
}

// cbw is the copy-before-write filter: reads pass through; a write,
// write-zeroes or discard first copies the clusters it touches that are
// still to be copied from the filtered node ("file") to "target", so
// that the target keeps the data as it was when the filter was made.
//
// The filter also serves that point-in-time view (block.SnapshotAccess,
// read by a snapshot-access node): a cluster the filter has saved reads
// from the target, any other from the source, and a write waits for the
// view's reads of the source that overlap it before it goes down. The
// view holds only what was to be copied at the start (everything, or a
// bitmap's clusters), less what the reader discarded.
type cbw struct {
	block.Forward
	bc      *blockCopy
	target  *block.Child
	onErr   OnCBWError
	timeout time.Duration
	// copies counts copies a timeout left running; Close waits for them.
	copies sync.WaitGroup

	mu sync.Mutex
	// access: the view's readable clusters; done: the clusters the
	// filter's own copies saved on the target.
	access, done *block.DirtyBitmap
	// broken is the copy failure that broke the view (break-snapshot).
	broken error
	// reading are the view's reads of the source in flight.
	reading []*viewRead
}

// viewRead is a read of the view from the source, which writes to its
// range must wait for.
type viewRead struct {
	lo, hi int64
	done   chan struct{}
}

func openCBW(ctx context.Context, o *block.Opener, opts *CBWOptions) (block.Impl, error) {
	file, err := o.Attach(ctx, "file", opts.File, block.RoleFilter)
	if err != nil {
		return nil, err
	}
	target, err := o.Attach(ctx, "target", opts.Target, block.RoleData)
	if err != nil {
		return nil, err
	}
	var from *block.DirtyBitmap
	if opts.Bitmap != nil {
		// compat(qsd-7.2): block_dirty_bitmap_lookup's messages.
		n := o.Txn().Graph().Lookup(opts.Bitmap.Node)
		if n == nil {
			return nil, fmt.Errorf("Node '%s' not found", opts.Bitmap.Node)
		}
		if from = n.FindDirtyBitmap(opts.Bitmap.Name); from == nil {
			return nil, fmt.Errorf("Dirty bitmap '%s' not found", opts.Bitmap.Name)
		}
	}
	bc, err := newBlockCopy(file, target)
	if err != nil {
		return nil, err
	}
	if from != nil {
		if err := bc.startFrom(from); err != nil {
			return nil, fmt.Errorf("Cannot create block-copy-state: Failed to merge bitmap '%s' to internal copy-bitmap: %w", from.Name(), err)
		}
	}
	f := &cbw{Forward: block.Forward{C: file}, bc: bc, target: target, onErr: BreakGuestWrite}
	if opts.OnCBWError != nil {
		f.onErr = *opts.OnCBWError
	}
	if opts.CBWTimeout != nil {
		f.timeout = time.Duration(*opts.CBWTimeout) * time.Second
	}
	f.access = bc.bitmap.Copy()
	if f.done, err = block.NewDirtyBitmap(bc.cluster, bc.size); err != nil {
		return nil, err
	}
	return f, nil
}

// copyOf returns the copy state of the filter on node n, if it is one.
func copyOf(n *block.Node) (*blockCopy, bool) {
	f, ok := n.Impl().(*cbw)
	if !ok {
		return nil, false
	}
	return f.bc, true
}

// before copies what [off, off+n) would overwrite, then waits until no
// read of the view from the source overlaps the clusters: from then on
// the view reads them from the target.
func (f *cbw) before(ctx context.Context, off, n int64, fl block.Flags) error {
	if fl&block.FlagWriteUnchanged != 0 {
		return nil // the data stays what the view holds
	}
	f.mu.Lock()
	broken := f.broken != nil
	f.mu.Unlock()
	if broken {
		return nil
	}
	lo := off / f.bc.cluster * f.bc.cluster
	hi := min((off+n+f.bc.cluster-1)/f.bc.cluster*f.bc.cluster, f.bc.size)
	if lo >= hi {
		return nil
	}
	err := f.copy(ctx, lo, hi)
	if err != nil && f.onErr == BreakGuestWrite {
		return err
	}
	f.mu.Lock()
	if err != nil {
		if f.broken == nil {
			f.broken = err
		}
	} else {
		f.done.Set(lo, hi-lo)
	}
	var wait []chan struct{}
	for _, r := range f.reading {
		if r.lo < hi && lo < r.hi {
			wait = append(wait, r.done)
		}
	}
	f.mu.Unlock()
	for _, ch := range wait {
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// copy saves [lo, hi) to the target, giving up after the filter's
// timeout: the copy then goes on in the background (a request cannot be
// taken back from a driver) and Close waits for it.
func (f *cbw) copy(ctx context.Context, lo, hi int64) error {
	buf := make([]byte, min((hi-lo+f.bc.cluster-1)/f.bc.cluster*f.bc.cluster, maxCopy))
	if f.timeout == 0 {
		return f.bc.copyRange(ctx, lo, hi-lo, buf)
	}
	done := make(chan error, 1)
	f.copies.Add(1)
	go func() {
		defer f.copies.Done()
		done <- f.bc.copyRange(context.WithoutCancel(ctx), lo, hi-lo, buf)
	}()
	t := time.NewTimer(f.timeout)
	defer t.Stop()
	select {
	case err := <-done:
		return err
	case <-t.C:
		return block.ErrnoError(syscall.ETIMEDOUT)
	case <-ctx.Done():
		return ctx.Err()
	}
}

// WriteAt implements block.Impl.
func (f *cbw) WriteAt(ctx context.Context, p []byte, off int64, fl block.Flags) error {
	if err := f.before(ctx, off, int64(len(p)), fl); err != nil {
		return err
	}
	return f.C.WriteAt(ctx, p, off, fl)
}

// Zero implements block.Impl.
func (f *cbw) Zero(ctx context.Context, off, n int64, fl block.Flags) error {
	if err := f.before(ctx, off, n, fl); err != nil {
		return err
	}
	return f.C.Zero(ctx, off, n, fl)
}

// Discard implements block.Impl.
func (f *cbw) Discard(ctx context.Context, off, n int64) error {
	if err := f.before(ctx, off, n, 0); err != nil {
		return err
	}
	return f.C.Discard(ctx, off, n)
}

// Close implements block.Impl: copies a timeout gave up on finish first.
func (f *cbw) Close() error {
	f.copies.Wait()
	return nil
}

// errNoAccess is the view's answer for what it does not hold.
var errNoAccess = block.ErrnoError(syscall.EACCES)

// viewLock finds where the view's data at off lives, for at most n
// bytes: on the target (saved by a write) or on the source, in which
// case the read is registered so that writes there wait for it. It
// returns the child, the length and the function that ends the read.
func (f *cbw) viewLock(off, n int64) (*block.Child, int64, func(), error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.broken != nil {
		return nil, 0, nil, errNoAccess
	}
	if c := f.access.NextClean(off); c >= 0 && c < off+n {
		return nil, 0, nil, errNoAccess
	}
	if f.done.Get(off) {
		end := f.done.NextClean(off)
		if end < 0 || end > off+n {
			end = off + n
		}
		return f.target, end - off, func() {}, nil
	}
	if d, m := f.done.NextDirty(off, n); m > 0 && d < off+n {
		n = d - off
	}
	r := &viewRead{lo: off, hi: off + n, done: make(chan struct{})}
	f.reading = append(f.reading, r)
	return f.C, n, func() { f.endRead(r) }, nil
}

func (f *cbw) endRead(r *viewRead) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i, x := range f.reading {
		if x == r {
			f.reading = append(f.reading[:i], f.reading[i+1:]...)
			break
		}
	}
	close(r.done)
}

// SnapshotRead implements block.SnapshotAccess.
func (f *cbw) SnapshotRead(ctx context.Context, p []byte, off int64) error {
	for len(p) > 0 {
		c, n, end, err := f.viewLock(off, int64(len(p)))
		if err != nil {
			return err
		}
		err = c.ReadAt(ctx, p[:n], off, 0)
		end()
		if err != nil {
			return err
		}
		p, off = p[n:], off+n
	}
	return nil
}

// SnapshotBlockStatus implements block.SnapshotAccess: the view is
// always allocated (it has no backing to fall through to); whether a
// range is data or zeroes is where the data lives says.
func (f *cbw) SnapshotBlockStatus(ctx context.Context, off, n int64) (block.Extent, error) {
	c, n, end, err := f.viewLock(off, n)
	if err != nil {
		return block.Extent{}, err
	}
	defer end()
	st, err := block.StatusAbove(ctx, c.Node(), nil, off, n)
	if err != nil {
		return block.Extent{}, err
	}
	e := block.Extent{Len: st.Len, Status: block.StatusAllocated}
	switch {
	case st.Zero:
		e.Status |= block.StatusZero
	default:
		e.Status |= block.StatusData
	}
	return e, nil
}

// SnapshotDiscard implements block.SnapshotAccess: the whole clusters
// inside the range leave the view, are no longer saved before writes,
// and are discarded on the target.
func (f *cbw) SnapshotDiscard(ctx context.Context, off, n int64) error {
	lo := (off + f.bc.cluster - 1) / f.bc.cluster * f.bc.cluster
	hi := (off + n) / f.bc.cluster * f.bc.cluster
	if off+n == f.bc.size {
		hi = f.bc.size // the last, short cluster
	}
	if hi <= lo {
		return nil
	}
	f.mu.Lock()
	f.access.Reset(lo, hi-lo)
	f.mu.Unlock()
	f.bc.bitmap.Reset(lo, hi-lo)
	return f.target.Discard(ctx, lo, hi-lo)
}

// ChildPerm implements block.ChildPermer: the filter reads its file for
// the copies and lets nobody resize it (the copy bitmap covers its size;
// its users all write through the filter, which took them over); it
// writes the target, which others may read and write (a fleecing
// export), but not resize.
func (f *cbw) ChildPerm(c *block.Child, perm, shared block.Perm) (block.Perm, block.Perm) {
	if c.Role()&block.RoleFiltered == 0 {
		return block.PermWrite, block.PermAll &^ block.PermResize
	}
	return perm | block.PermConsistentRead, shared &^ block.PermResize
}

func init() {
	block.Register("copy-before-write", block.KindFilter, openCBW)
}
