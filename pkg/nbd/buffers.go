package nbd

import (
	"errors"
	"math/bits"
	"sync"
	"syscall"
)

// Payload buffers are pooled by power-of-two size class, from 4 KiB
// (class 0) up to 32 MiB; larger ones are allocated and dropped.
const (
	minClassShift = 12
	maxClassShift = 25
)

type buffer struct {
	b     []byte // len is the class size
	class int    // -1: not pooled
}

var bufferPools [maxClassShift - minClassShift + 1]sync.Pool

func getBuffer(n int) *buffer {
	shift := minClassShift
	if n > 1<<minClassShift {
		shift = bits.Len(uint(n - 1))
	}
	if shift > maxClassShift {
		return &buffer{b: make([]byte, n), class: -1}
	}
	class := shift - minClassShift
	if v := bufferPools[class].Get(); v != nil {
		return v.(*buffer)
	}
	return &buffer{b: make([]byte, 1<<shift), class: class}
}

func putBuffer(b *buffer) {
	if b == nil || b.class < 0 {
		return
	}
	bufferPools[b.class].Put(b)
}

// budget bounds the payload bytes a connection holds. The reader acquires
// before it reads a WRITE payload or dispatches a READ; the writer releases
// once the reply went out.
type budget struct {
	mu     sync.Mutex
	cond   sync.Cond // L is &mu
	avail  int64     // guarded by mu
	closed bool      // guarded by mu
}

var errBudgetClosed = errors.New("connection closing")

func (b *budget) init(n int64) {
	b.cond.L = &b.mu
	b.avail = n
}

// acquire takes n bytes, waiting until they are free. n never exceeds the
// total (the caller rejects larger requests first).
func (b *budget) acquire(n int64) error {
	if n == 0 {
		return nil
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	for b.avail < n && !b.closed {
		b.cond.Wait()
	}
	if b.closed {
		return errBudgetClosed
	}
	b.avail -= n
	return nil
}

func (b *budget) release(n int64) {
	if n == 0 {
		return
	}
	b.mu.Lock()
	b.avail += n
	b.mu.Unlock()
	b.cond.Broadcast()
}

func (b *budget) close() {
	b.mu.Lock()
	b.closed = true
	b.mu.Unlock()
	b.cond.Broadcast()
}

// isTemporaryAcceptError reports accept errors worth retrying.
func isTemporaryAcceptError(err error) bool {
	var en syscall.Errno
	if !errors.As(err, &en) {
		return false
	}
	switch en {
	case syscall.EMFILE, syscall.ENFILE, syscall.ENOBUFS, syscall.ENOMEM, syscall.ECONNABORTED, syscall.EINTR:
		return true
	}
	return false
}
