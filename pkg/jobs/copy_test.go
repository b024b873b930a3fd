package jobs

import (
	"bytes"
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/blockd/blockd/pkg/block"
	"github.com/blockd/blockd/pkg/block/blocktest"
)

// copyBody copies src into dst with jobs.Copy, skipping what src does not
// allocate; fail, if set, decides whether a chunk's copy fails.
type copyBody struct {
	src, dst *block.Root
	parallel int
	fail     func(off int64) error

	mu          sync.Mutex
	inflight    int
	maxInflight int
}

func (b *copyBody) Run(ctx context.Context, j *Job) error {
	size := b.src.Size()
	j.SetTotal(size)
	c := Copy{Job: j, End: size, Chunk: 64 << 10, Parallel: b.parallel,
		Extent: func(ctx context.Context, off, max int64) (int64, bool, error) {
			e, err := block.ResolveStatus(ctx, b.src.Node(), off, max)
			return e.Len, e.Status&block.StatusData != 0, err
		},
		Do: func(ctx context.Context, off int64, buf []byte) error {
			b.mu.Lock()
			b.inflight++
			b.maxInflight = max(b.maxInflight, b.inflight)
			b.mu.Unlock()
			defer func() {
				b.mu.Lock()
				b.inflight--
				b.mu.Unlock()
			}()
			if b.fail != nil {
				if err := b.fail(off); err != nil {
					return err
				}
			}
			if err := b.src.ReadAt(ctx, buf, off, 0); err != nil {
				return err
			}
			if err := b.dst.WriteAt(ctx, buf, off, 0); err != nil {
				return WriteError(err)
			}
			return nil
		}}
	return c.Run(ctx)
}

// copySetup opens a 4 MiB source with data in two places and an empty
// target, and roots on both.
func copySetup(t *testing.T) (*Runner, *recorder, *copyBody) {
	t.Helper()
	r, rec, _ := newRunner()
	g := r.g
	src := blocktest.Open(t, g, `{"driver":"blocktest-mem","node-name":"src","size":4194304}`)
	dst := blocktest.Open(t, g, `{"driver":"blocktest-mem","node-name":"dst","size":4194304}`)
	b := &copyBody{parallel: 4}
	b.src = blocktest.NewRoot(t, src, block.PermConsistentRead|block.PermWrite, block.PermAll)
	b.dst = blocktest.NewRoot(t, dst, block.PermConsistentRead|block.PermWrite, block.PermAll)
	ctx := context.Background()
	for _, w := range []struct {
		off, n int64
		p      byte
	}{{0, 1 << 20, 0x11}, {3 << 20, 512 << 10, 0x22}} {
		if err := b.src.WriteAt(ctx, bytes.Repeat([]byte{w.p}, int(w.n)), w.off, 0); err != nil {
			t.Fatal(err)
		}
	}
	return r, rec, b
}

func sameData(t *testing.T, b *copyBody) {
	t.Helper()
	ctx := context.Background()
	a, c := make([]byte, b.src.Size()), make([]byte, b.src.Size())
	if err := b.src.ReadAt(ctx, a, 0, 0); err != nil {
		t.Fatal(err)
	}
	if err := b.dst.ReadAt(ctx, c, 0, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a, c) {
		t.Error("target differs from source")
	}
}

// TestCopy copies with several chunks in flight, never more than asked,
// skipping what the source does not allocate, and counts progress.
func TestCopy(t *testing.T) {
	r, rec, b := copySetup(t)
	opts := blockOpts
	opts.Speed = 0
	j, err := r.Start(context.Background(), "j", "test", b, opts)
	mustOK(t, err)
	j.Wait()
	r.Close()
	sameData(t, b)
	if b.maxInflight < 2 || b.maxInflight > b.parallel {
		t.Errorf("at most %d chunks in flight, want 2..%d", b.maxInflight, b.parallel)
	}
	if c := rec.last("BLOCK_JOB_COMPLETED"); c["offset"] != int64(4<<20) || c["len"] != int64(4<<20) || c["error"] != nil {
		t.Errorf("BLOCK_JOB_COMPLETED %v", c)
	}
}

// TestCopyOnErrorStop: a chunk that fails pauses the job (stop); after
// resume it is copied again and the job ends with nothing missing.
func TestCopyOnErrorStop(t *testing.T) {
	r, rec, b := copySetup(t)
	var failed atomic.Bool
	b.fail = func(off int64) error {
		if off == 3<<20 && failed.CompareAndSwap(false, true) {
			return syscall.EIO
		}
		return nil
	}
	opts := blockOpts
	opts.OnError, opts.Speed = OnErrorStop, 0
	j, err := r.Start(context.Background(), "j", "test", b, opts)
	mustOK(t, err)
	waitStatus(t, j, Paused)
	if i := j.BlockInfo(); i.IOStatus != IOStatusFailed {
		t.Errorf("io-status %s", i.IOStatus)
	}
	mustOK(t, j.Resume())
	j.Wait()
	r.Close()
	sameData(t, b)
	if e := rec.last("BLOCK_JOB_ERROR"); e["action"] != "stop" || e["operation"] != "read" {
		t.Errorf("BLOCK_JOB_ERROR %v", e)
	}
	if c := rec.last("BLOCK_JOB_COMPLETED"); c["error"] != nil || c["offset"] != int64(4<<20) {
		t.Errorf("BLOCK_JOB_COMPLETED %v", c)
	}
}

// TestCopyOnErrorReportIgnore: report ends the job with the error;
// ignore goes on to the end and still ends with it. A failed write is
// reported as a write.
func TestCopyOnErrorReportIgnore(t *testing.T) {
	for _, policy := range []OnError{OnErrorReport, OnErrorIgnore} {
		t.Run(string(policy), func(t *testing.T) {
			r, rec, b := copySetup(t)
			b.fail = func(off int64) error {
				if off == 0 {
					return WriteError(syscall.ENOSPC)
				}
				return nil
			}
			opts := blockOpts
			opts.OnError, opts.Speed = policy, 0
			j, err := r.Start(context.Background(), "j", "test", b, opts)
			mustOK(t, err)
			j.Wait()
			r.Close()
			if e := rec.last("BLOCK_JOB_ERROR"); e["action"] != string(policy) || e["operation"] != "write" {
				t.Errorf("BLOCK_JOB_ERROR %v", e)
			}
			c := rec.last("BLOCK_JOB_COMPLETED")
			if c["error"] != "No space left on device" {
				t.Errorf("BLOCK_JOB_COMPLETED %v", c)
			}
			if policy == OnErrorIgnore && c["offset"] != c["len"] {
				t.Errorf("an ignored error stopped the copy: %v", c)
			}
			if !errors.Is(j.Err(), syscall.ENOSPC) {
				t.Errorf("job error %v", j.Err())
			}
		})
	}
}
