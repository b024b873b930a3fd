// Package nbdtest provides an in-memory nbd.Backend for tests.
package nbdtest

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/blockd/blockd/pkg/nbd"
)

// Block states of the allocation map.
const (
	stateHole = iota // unallocated: reads from the backing or as zeroes
	stateData        // allocated with data
	stateZero        // allocated, reads as zeroes
)

// Mem is a memory backend with block-granular allocation tracking, so that
// BlockStatus is meaningful. It may have a backing Mem: unallocated blocks
// read from it, and their allocation depth is 2 (or deeper).
type Mem struct {
	// Hook, if set, runs before every operation with its name ("read",
	// "write", "zero", "trim", "flush", "cache", "status"); a non-nil
	// error fails the operation. It may block.
	Hook func(ctx context.Context, op string, off, n int64) error
	// NoFastZero makes Zero with fast set fail with nbd.ErrNotSupported.
	NoFastZero bool
	// NoZero makes every Zero fail with nbd.ErrNotSupported.
	NoZero bool
	// NoBlockStatus makes BlockStatus fail with nbd.ErrNotSupported.
	NoBlockStatus bool

	backing *Mem
	bs      int64 // block size

	mu     sync.RWMutex
	size   int64  // guarded by mu
	data   []byte // guarded by mu
	state  []byte // guarded by mu; one per block
	closed bool   // guarded by mu

	inFlight    atomic.Int64
	maxInFlight atomic.Int64
	calls       atomic.Int64
	flushes     atomic.Int64
}

// NewMem returns a zero-filled, fully unallocated backend of size bytes
// tracked in blocks of blockSize bytes (0: 4096).
func NewMem(size int64, blockSize int64) *Mem {
	if blockSize <= 0 {
		blockSize = 4096
	}
	nb := (size + blockSize - 1) / blockSize
	return &Mem{bs: blockSize, size: size, data: make([]byte, size), state: make([]byte, nb)}
}

// WithBacking sets the backing of m and returns m.
func (m *Mem) WithBacking(b *Mem) *Mem {
	m.backing = b
	return m
}

// Bytes returns a copy of the contents as a reader sees them.
func (m *Mem) Bytes() []byte {
	p := make([]byte, m.Size())
	if err := m.ReadAt(context.Background(), p, 0); err != nil {
		panic(err)
	}
	return p
}

// Close makes every later call fail with EIO, to catch calls after an
// export was removed.
func (m *Mem) Close() {
	m.mu.Lock()
	m.closed = true
	m.mu.Unlock()
}

// MaxInFlight returns the largest number of calls that ran at once.
func (m *Mem) MaxInFlight() int64 { return m.maxInFlight.Load() }

// InFlight returns the number of calls running now.
func (m *Mem) InFlight() int64 { return m.inFlight.Load() }

// Calls returns the number of calls made, Size excluded.
func (m *Mem) Calls() int64 { return m.calls.Load() }

// Flushes returns the number of Flush calls.
func (m *Mem) Flushes() int64 { return m.flushes.Load() }

func (m *Mem) begin(ctx context.Context, op string, off, n int64) error {
	m.calls.Add(1)
	v := m.inFlight.Add(1)
	for {
		old := m.maxInFlight.Load()
		if v <= old || m.maxInFlight.CompareAndSwap(old, v) {
			break
		}
	}
	if m.Hook != nil {
		if err := m.Hook(ctx, op, off, n); err != nil {
			m.inFlight.Add(-1)
			return err
		}
	}
	return nil
}

func (m *Mem) end() { m.inFlight.Add(-1) }

func (m *Mem) checkLocked(off, n int64) error {
	if m.closed {
		return fmt.Errorf("nbdtest: backend used after close: %w", syscall.EIO)
	}
	if off < 0 || n < 0 || off+n > m.size {
		return fmt.Errorf("nbdtest: range %d+%d outside size %d: %w", off, n, m.size, syscall.EINVAL)
	}
	return nil
}

// Size implements nbd.Backend.
func (m *Mem) Size() int64 {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.size
}

// ReadAt implements nbd.Backend.
func (m *Mem) ReadAt(ctx context.Context, p []byte, off int64) error {
	if err := m.begin(ctx, "read", off, int64(len(p))); err != nil {
		return err
	}
	defer m.end()
	m.mu.RLock()
	defer m.mu.RUnlock()
	if err := m.checkLocked(off, int64(len(p))); err != nil {
		return err
	}
	return m.readLocked(p, off)
}

func (m *Mem) readLocked(p []byte, off int64) error {
	for len(p) > 0 {
		blk := off / m.bs
		k := min(int64(len(p)), (blk+1)*m.bs-off)
		switch m.state[blk] {
		case stateData:
			copy(p[:k], m.data[off:off+k])
		case stateZero:
			clear(p[:k])
		default:
			if m.backing != nil && off < m.backing.Size() {
				kk := min(k, m.backing.Size()-off)
				if err := m.backing.ReadAt(context.Background(), p[:kk], off); err != nil {
					return err
				}
				clear(p[kk:k])
			} else {
				clear(p[:k])
			}
		}
		p = p[k:]
		off += k
	}
	return nil
}

// WriteAt implements nbd.Backend.
func (m *Mem) WriteAt(ctx context.Context, p []byte, off int64, fua bool) error {
	if err := m.begin(ctx, "write", off, int64(len(p))); err != nil {
		return err
	}
	defer m.end()
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.checkLocked(off, int64(len(p))); err != nil {
		return err
	}
	for len(p) > 0 {
		blk := off / m.bs
		k := min(int64(len(p)), (blk+1)*m.bs-off)
		m.allocLocked(blk)
		copy(m.data[off:off+k], p[:k])
		p = p[k:]
		off += k
	}
	return nil
}

// allocLocked makes block blk hold data, filling it as it read before.
func (m *Mem) allocLocked(blk int64) {
	if m.state[blk] == stateData {
		return
	}
	start := blk * m.bs
	end := min(start+m.bs, m.size)
	if m.state[blk] == stateHole {
		if err := m.readLocked(m.data[start:end], start); err != nil {
			clear(m.data[start:end])
		}
	} else {
		clear(m.data[start:end])
	}
	m.state[blk] = stateData
}

// Zero implements nbd.Backend.
func (m *Mem) Zero(ctx context.Context, off, n int64, mayTrim, fua, fast bool) error {
	if m.NoZero || (fast && m.NoFastZero) {
		return fmt.Errorf("nbdtest: zero: %w", nbd.ErrNotSupported)
	}
	if err := m.begin(ctx, "zero", off, n); err != nil {
		return err
	}
	defer m.end()
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.checkLocked(off, n); err != nil {
		return err
	}
	end := off + n
	for off < end {
		blk := off / m.bs
		bStart, bEnd := blk*m.bs, min((blk+1)*m.bs, m.size)
		k := min(end, bEnd) - off
		if off == bStart && off+k == bEnd {
			if mayTrim && m.backing == nil {
				m.state[blk] = stateHole
			} else {
				m.state[blk] = stateZero
			}
		} else {
			m.allocLocked(blk)
			clear(m.data[off : off+k])
		}
		off += k
	}
	return nil
}

// Trim implements nbd.Backend: whole blocks become holes.
func (m *Mem) Trim(ctx context.Context, off, n int64, fua bool) error {
	if err := m.begin(ctx, "trim", off, n); err != nil {
		return err
	}
	defer m.end()
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.checkLocked(off, n); err != nil {
		return err
	}
	first := (off + m.bs - 1) / m.bs
	last := (off + n) / m.bs // exclusive
	if off+n == m.size {
		last = int64(len(m.state))
	}
	for b := first; b < last; b++ {
		m.state[b] = stateHole
		clear(m.data[b*m.bs : min((b+1)*m.bs, m.size)])
	}
	return nil
}

// Flush implements nbd.Backend.
func (m *Mem) Flush(ctx context.Context) error {
	if err := m.begin(ctx, "flush", 0, 0); err != nil {
		return err
	}
	defer m.end()
	m.flushes.Add(1)
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.checkLocked(0, 0)
}

// Cache implements nbd.Backend.
func (m *Mem) Cache(ctx context.Context, off, n int64) error {
	if err := m.begin(ctx, "cache", off, n); err != nil {
		return err
	}
	defer m.end()
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.checkLocked(off, n)
}

// BlockStatus implements nbd.Backend.
func (m *Mem) BlockStatus(ctx context.Context, off, n int64) ([]nbd.Extent, error) {
	if m.NoBlockStatus {
		return nil, fmt.Errorf("nbdtest: block status: %w", nbd.ErrNotSupported)
	}
	if err := m.begin(ctx, "status", off, n); err != nil {
		return nil, err
	}
	defer m.end()
	m.mu.RLock()
	defer m.mu.RUnlock()
	if err := m.checkLocked(off, n); err != nil {
		return nil, err
	}
	var out []nbd.Extent
	end := off + n
	for off < end {
		blk := off / m.bs
		k := min(end, (blk+1)*m.bs) - off
		x := m.extentLocked(blk, off)
		x.Length = k
		if l := len(out); l > 0 && out[l-1].Hole == x.Hole && out[l-1].Zero == x.Zero && out[l-1].Depth == x.Depth {
			out[l-1].Length += k
		} else {
			out = append(out, x)
		}
		off += k
	}
	return out, nil
}

func (m *Mem) extentLocked(blk, off int64) nbd.Extent {
	switch m.state[blk] {
	case stateData:
		return nbd.Extent{Depth: 1}
	case stateZero:
		return nbd.Extent{Zero: true, Depth: 1}
	}
	if m.backing != nil && off < m.backing.Size() {
		m.backing.mu.RLock()
		x := m.backing.extentLocked(off/m.backing.bs, off)
		m.backing.mu.RUnlock()
		if x.Depth > 0 {
			x.Depth++
		}
		return x
	}
	return nbd.Extent{Hole: true, Zero: true}
}
