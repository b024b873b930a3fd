package jobs

import (
	"context"
	"errors"
	"sync"

	"github.com/blockd/blockd/pkg/block"
)

// Copy is the loop every copying job shares (stream now; commit, mirror
// and backup next): it walks [0, End) extent by extent, skips what need
// not be copied, and copies the rest in chunks of at most Chunk bytes
// with up to Parallel of them in flight, yielding (rate limit, pause,
// cancel) before each chunk. Progress counts skipped and copied bytes;
// the rate limit counts copied ones. Failed chunks go through the job's
// on-error policy: reported, ignored (the job still ends with the error),
// or retried once the user resumes the job. Memory is bounded by
// Parallel × Chunk.
type Copy struct {
	Job      *Job
	End      int64
	Chunk    int64
	Parallel int

	// Extent describes the range that starts at off (at most max bytes,
	// at least one): its length and whether it must be copied. Errors
	// are treated as failed reads.
	Extent func(ctx context.Context, off, max int64) (n int64, copy bool, err error)
	// Do copies [off, off+len(buf)) using buf as it likes. Wrap an error
	// with WriteError when the write side failed (BLOCK_JOB_ERROR's
	// operation); anything else is a failed read.
	Do func(ctx context.Context, off int64, buf []byte) error
	// Target is the node Do writes to, if any: its storage writes behind
	// while the copy runs (see block.WriteBehinder).
	Target *block.Node
	// OwnProgress: the body counts progress itself (a backup counts only
	// what it copies, by its job or by a guest write's copy-before-write,
	// and its length is what it has to copy, not the disk): the loop adds
	// none, neither for skipped ranges nor for copied or ignored chunks.
	OwnProgress bool
}

func (c *Copy) progress(n int64) {
	if !c.OwnProgress {
		c.Job.AddProgress(n)
	}
}

// WriteError marks err as the failure of a write (see Copy.Do).
func WriteError(err error) error { return &writeError{err} }

type writeError struct{ error }

func (e *writeError) Unwrap() error { return e.error }

func isRead(err error) bool {
	var w *writeError
	return !errors.As(err, &w)
}

// copyState is what the dispatcher and the copies of one Run share.
type copyState struct {
	pool    *Pool
	mu      sync.Mutex
	retry   []chunk // failed chunks to copy again (on-error stop); mu
	fatal   error   // a reported error: stop; mu
	ignored error   // the first ignored error; mu
	// stopped: a failed chunk paused the job (on-error stop); until the
	// loop goes on, other chunks that fail wait in retry without an
	// event of their own, as QEMU's jobs, with one request in flight,
	// report one error at a time. mu
	stopped bool
	erring  bool // a chunk's error is being handled; mu
}

type chunk struct{ off, n int64 }

// Run copies; it returns the error the job must end with (nil, a
// reported or ignored error, or ErrCancelled), after every chunk in
// flight has finished.
func (c *Copy) Run(ctx context.Context) error {
	if c.Target != nil {
		defer block.WriteBehind(c.Target)()
	}
	st := &copyState{pool: NewPool(c.Job, c.Parallel, c.Chunk)}
	err := c.dispatch(ctx, st)
	st.pool.Close()
	st.mu.Lock()
	defer st.mu.Unlock()
	switch {
	case err != nil:
		return err
	case st.fatal != nil:
		return st.fatal
	}
	return st.ignored
}

// dispatch walks the range and starts the copies.
func (c *Copy) dispatch(ctx context.Context, st *copyState) error {
	j := c.Job
	var pending []chunk // the parts of the current extent not yet started
	off := int64(0)
	for {
		if err := j.Yield(ctx); err != nil {
			return err
		}
		st.mu.Lock()
		if st.fatal != nil {
			st.mu.Unlock()
			return nil
		}
		if len(st.retry) > 0 {
			pending = append(st.retry, pending...)
			st.retry = nil
		}
		st.stopped = false
		st.mu.Unlock()
		if len(pending) == 0 {
			if off >= c.End {
				st.pool.WaitIdle()
				st.mu.Lock()
				again := len(st.retry) > 0
				st.mu.Unlock()
				if again {
					continue
				}
				return nil
			}
			n, copy, err := c.Extent(ctx, off, c.End-off)
			if err != nil {
				switch j.IOError(err, true) {
				case ActionReport:
					st.fail(err)
					return nil
				case ActionIgnore:
					st.ignore(err)
					n = min(c.Chunk, c.End-off)
					c.progress(n)
					off += n
				}
				continue // stop: the next Yield parks, then ask again
			}
			if !copy {
				c.progress(n)
				off += n
				continue
			}
			for o := off; o < off+n; o += c.Chunk {
				pending = append(pending, chunk{o, min(c.Chunk, off+n-o)})
			}
			off += n
		}
		ch := pending[0]
		pending = pending[1:]
		j.Processed(ch.n)
		st.pool.Go(func(buf []byte) { c.copyChunk(ctx, st, ch, buf) })
	}
}

// copyChunk copies one chunk and applies the on-error policy.
func (c *Copy) copyChunk(ctx context.Context, st *copyState, ch chunk, buf []byte) {
	err := c.Do(ctx, ch.off, buf[:ch.n])
	if err == nil {
		c.progress(ch.n)
		return
	}
	// One error event at a time: while another chunk's error is being
	// handled, this one is retried after it (or dropped if the job ends).
	st.mu.Lock()
	if st.fatal != nil || st.stopped || st.erring {
		st.retry = append(st.retry, ch)
		st.mu.Unlock()
		return
	}
	st.erring = true
	st.mu.Unlock()
	action := c.Job.IOError(err, isRead(err))
	st.mu.Lock()
	st.erring = false
	switch action {
	case ActionReport:
		if st.fatal == nil {
			st.fatal = err
		}
	case ActionIgnore:
		if st.ignored == nil {
			st.ignored = err
		}
	case ActionStop:
		st.stopped = true
		st.retry = append(st.retry, ch)
	}
	st.mu.Unlock()
	if action == ActionIgnore {
		c.progress(ch.n)
	}
}

func (st *copyState) fail(err error) {
	st.mu.Lock()
	if st.fatal == nil {
		st.fatal = err
	}
	st.mu.Unlock()
}

func (st *copyState) ignore(err error) {
	st.mu.Lock()
	if st.ignored == nil {
		st.ignored = err
	}
	st.mu.Unlock()
}
