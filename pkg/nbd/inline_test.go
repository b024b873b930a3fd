package nbd_test

import (
	"bytes"
	"context"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/blockd/blockd/pkg/nbd"
	"github.com/blockd/blockd/pkg/nbd/nbdtest"
)

// noWaitMem is a Mem that also answers reads that must not wait: blocks
// at odd 4 KiB indexes "would wait" (they go to a worker), and one
// offset fails.
type noWaitMem struct {
	*nbdtest.Mem
	failAt int64
	calls  atomic.Int64
	served atomic.Int64
}

func (m *noWaitMem) ReadNoWait(ctx context.Context, p []byte, off int64) error {
	m.calls.Add(1)
	if off == m.failAt {
		return syscall.EIO
	}
	if (off/4096)%2 == 1 {
		return nbd.ErrWouldBlock
	}
	m.served.Add(1)
	return m.ReadAt(ctx, p, off)
}

// TestInlineReads sends bursts of small reads that the reader answers
// itself, mixed with reads that would wait and go to the workers, and
// checks every reply (data, errors) and that the inline answers are not
// held back behind a worker stuck on the disk.
func TestInlineReads(t *testing.T) {
	s := startServer(t, nbd.ServerOptions{})
	ctx := context.Background()
	mem := nbdtest.NewMem(MiB, 0)
	data := make([]byte, MiB)
	for i := range data {
		data[i] = byte(i*31 + i>>12)
	}
	mem.WriteAt(ctx, data, 0, false)
	stuck := make(chan struct{})
	mem.Hook = func(ctx context.Context, op string, off, n int64) error {
		if op == "read" && off == 4096*99 { // odd: a worker read
			<-stuck
		}
		return nil
	}
	b := &noWaitMem{Mem: mem, failAt: 4096 * 10}
	addExport(t, s, b, nbd.ExportOptions{Name: "e", Writable: true})

	for _, structured := range []bool{false, true} {
		c, _ := s.connect(t, "e", structured)
		b.served.Store(0)
		// A burst: 64 reads of 4 KiB, then one of 64 KiB (too big to
		// answer inline), all sent before any reply is read.
		const burst = 64
		for i := 0; i < burst; i++ {
			c.send(cmdRead, 0, uint64(i), uint64(i)*4096, 4096, nil)
		}
		c.send(cmdRead, 0, burst, 128<<10, 64<<10, nil)
		got := map[uint64]bool{}
		for len(got) < burst+1 {
			res, h := c.collectAny(t)
			got[h] = true
			off, n := h*4096, uint64(4096)
			if h == burst {
				off, n = 128<<10, 64<<10
			}
			if off == uint64(b.failAt) {
				if res.errno != 5 {
					t.Fatalf("handle %d: errno %d, want EIO", h, res.errno)
				}
				continue
			}
			if res.errno != 0 || !bytes.Equal(res.data, data[off:off+n]) {
				t.Fatalf("structured=%v handle %d: errno %d, data differs", structured, h, res.errno)
			}
		}
		if b.served.Load() < burst/2-1 {
			t.Errorf("structured=%v: %d reads answered inline, want about %d", structured, b.served.Load(), burst/2)
		}

		// A worker stuck on the disk does not hold back inline answers.
		c.send(cmdRead, 0, 1000, 4096*99, 4096, nil)
		c.send(cmdRead, 0, 1001, 0, 4096, nil)
		res, h := c.collectAny(t)
		if h != 1001 || res.errno != 0 || !bytes.Equal(res.data, data[:4096]) {
			t.Fatalf("handle %d errno %d: the inline read waited for the stuck one", h, res.errno)
		}
		stuck <- struct{}{}
		if res, h = c.collectAny(t); h != 1000 || !bytes.Equal(res.data, data[4096*99:4096*100]) {
			t.Fatalf("stuck read: handle %d", h)
		}
	}
	if b.calls.Load() == 0 {
		t.Fatal("ReadNoWait was never called")
	}
}
