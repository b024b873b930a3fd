package mirror

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/blockd/blockd/pkg/block"
	"github.com/blockd/blockd/pkg/jobs"
)

// pollInterval is how often a job in sync looks for new writes (QEMU's
// mirror sleeps a block-job slice, 100 ms, when it has nothing to do).
const pollInterval = 100 * time.Millisecond

// Engine copies a source into a target and then keeps the target in sync
// with the source's writes until the job completes or is cancelled: the
// part blockdev-mirror and an active block-commit share (QEMU's mirror.c
// serves both too).
//
// What must be copied is kept in a dirty bitmap on the source, whose
// users all write through the mirror_top filter above it: Init marks the
// first copy, their writes mark the rest. Run copies
// dirty ranges, several at once (a range is never copied twice at the
// same time: the old copy could land after the new one), until nothing is
// dirty; then the job is READY and Run goes on copying what is written,
// until job-complete or a soft cancel, once in sync. The last writes are
// copied by FinalSync in the job's graph step, with the source drained, so
// that nothing can be written between the last copy and the pivot.
type Engine struct {
	Job      *jobs.Job
	Source   *block.Root        // reads the source through the filter
	Target   *block.Root        // writes the target
	Bitmap   *block.DirtyBitmap // the source's
	Chunk    int64              // largest copy: a multiple of the granularity
	Parallel int                // copies in flight
	Unmap    bool               // zeroes may deallocate the target

	inflight block.RangeLock
	splice   *jobs.SpliceCopier // Run's, while it runs; nil: copies go through buffers
	complete atomic.Bool
	ready    bool // Run only
	copying  atomic.Int64

	mu    sync.Mutex
	fatal error // a reported error; guarded by mu
}

// Init marks dirty every range of the source for which need answers
// true, walking it by extents (need returns their length), and yields
// between them.
func (e *Engine) Init(ctx context.Context, need func(ctx context.Context, off, max int64) (n int64, copy bool, err error)) error {
	size := e.Source.Size()
	for off := int64(0); off < size; {
		if err := e.Job.Yield(ctx); err != nil {
			return err
		}
		n, copy, err := need(ctx, off, size-off)
		if err != nil {
			if e.Job.IOError(err, true) == jobs.ActionReport {
				return err
			}
			continue // stop: parked by the Yield above, then asked again; ignore: the same
		}
		if copy {
			e.Bitmap.Set(off, n)
		}
		off += n
	}
	e.Job.SetRemaining(e.Bitmap.Count())
	return nil
}

// Complete asks a job in sync to finish (job-complete).
func (e *Engine) Complete() { e.complete.Store(true) }

// Completing reports whether job-complete was asked for.
func (e *Engine) Completing() bool { return e.complete.Load() }

// Ready reports whether the job reached READY.
func (e *Engine) Ready() bool {
	return e.Job.Status() == jobs.Ready || e.Job.Status() == jobs.Standby || e.ready
}

// Cancel answers jobs.Canceler: a cancel in READY that is not forced is
// soft, and leaves a target in sync (QEMU's mirror_cancel).
func (e *Engine) Cancel(force bool) bool { return force || !e.Ready() }

// Run copies until the job is in sync and asked to finish (nil), fails,
// or is cancelled hard (jobs.ErrCancelled).
func (e *Engine) Run(ctx context.Context) error {
	j := e.Job
	defer block.WriteBehind(e.Target.Node())()
	e.splice = jobs.NewSpliceCopier(e.Parallel)
	defer func() {
		e.splice.Close()
		e.splice = nil
	}()
	pool := jobs.NewPool(j, e.Parallel, e.Chunk)
	defer pool.Close()
	cursor := int64(0)
	for {
		if err := j.Yield(ctx); err != nil {
			return err
		}
		if err := e.failure(); err != nil {
			return err
		}
		off, n := e.Bitmap.NextDirty(cursor, e.Chunk)
		if off < 0 && cursor > 0 {
			cursor = 0
			off, n = e.Bitmap.NextDirty(0, e.Chunk)
		}
		if off < 0 {
			pool.WaitIdle()
			if err := e.failure(); err != nil {
				return err
			}
			if e.Bitmap.Count() > 0 {
				continue
			}
			if !e.ready {
				if err := e.Target.Flush(ctx); err != nil {
					if j.IOError(err, false) == jobs.ActionReport {
						return err
					}
					continue
				}
				e.ready = true
				j.Ready()
			}
			if e.complete.Load() || j.CancelRequested() {
				return nil
			}
			if err := j.Sleep(ctx, pollInterval); err != nil {
				return err
			}
			continue
		}
		cursor = off + n
		lk, err := e.inflight.Lock(ctx, off, off+n)
		if err != nil {
			return err
		}
		// Clean before the copy reads: a write from now on marks the
		// range again, and it is copied once more.
		e.Bitmap.Reset(off, n)
		e.copying.Add(n)
		e.remaining()
		j.Processed(n)
		pool.Go(func(buf []byte) {
			defer e.inflight.Unlock(lk)
			e.copyOne(ctx, off, buf[:n])
		})
	}
}

// remaining tells the job how much is left: dirty and in flight.
func (e *Engine) remaining() { e.Job.SetRemaining(e.Bitmap.Count() + e.copying.Load()) }

// copyOne copies one range; a failure marks it dirty again and goes
// through the on-error policy.
func (e *Engine) copyOne(ctx context.Context, off int64, buf []byte) {
	n := int64(len(buf))
	defer func() {
		e.copying.Add(-n)
		e.remaining()
	}()
	read, err := e.copy(ctx, off, buf)
	if err == nil {
		e.Job.AddProgress(n)
		return
	}
	e.Bitmap.Set(off, n)
	if e.Job.IOError(err, read) == jobs.ActionReport {
		e.mu.Lock()
		if e.fatal == nil {
			e.fatal = err
		}
		e.mu.Unlock()
	}
	// stop: the job is paused and copies the range again after resume;
	// ignore: it stays dirty and is copied again (QEMU's behaviour too).
}

// copy reads [off, off+len(buf)) from the source and writes it to the
// target, zeroes as zeroes; read says which side failed.
func (e *Engine) copy(ctx context.Context, off int64, buf []byte) (read bool, err error) {
	if done, err := e.splice.Copy(ctx, e.Source, e.Target, off, len(buf)); done {
		return false, err
	}
	if err := e.Source.ReadAt(ctx, buf, off, 0); err != nil {
		return true, err
	}
	if block.IsZero(buf) {
		var f block.Flags
		if e.Unmap {
			f = block.FlagMayUnmap
		}
		return false, e.Target.Zero(ctx, off, int64(len(buf)), f)
	}
	return false, e.Target.WriteAt(ctx, buf, off, 0)
}

// activeWrite is a write of a user through the filter in write-blocking
// mode: with the range held against the job's copies (one of them could
// otherwise land old data after it), the write goes to the source, then
// to the target; the granules it covers whole are then in sync. A failed
// target write leaves them dirty for the job to copy: the user's write
// succeeded on the source.
func (e *Engine) activeWrite(ctx context.Context, off, n int64, source, target func() error) error {
	g := e.Bitmap.Granularity()
	lo, hi := off-off%g, (off+n+g-1)/g*g
	lk, err := e.inflight.Lock(ctx, lo, hi)
	if err != nil {
		return err
	}
	defer e.inflight.Unlock(lk)
	if err := source(); err != nil {
		return err
	}
	if target() == nil {
		e.Bitmap.Reset(off, n)
	}
	return nil
}

func (e *Engine) failure() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.fatal
}

// FinalSync copies what is still dirty and flushes the target. Call it
// from the job's Prepare with the source drained (nothing can write it),
// after Run returned (nothing is in flight).
func (e *Engine) FinalSync(ctx context.Context) error {
	buf := make([]byte, e.Chunk)
	for {
		off, n := e.Bitmap.NextDirty(0, e.Chunk)
		if off < 0 {
			break
		}
		e.Bitmap.Reset(off, n)
		if _, err := e.copy(ctx, off, buf[:n]); err != nil {
			e.Bitmap.Set(off, n)
			return err
		}
		e.Job.AddProgress(n)
	}
	e.remaining()
	return e.Target.Flush(ctx)
}
