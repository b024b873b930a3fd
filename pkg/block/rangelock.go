package block

import (
	"context"
	"sync"
)

// RangeLock serialises work on overlapping byte ranges; work on disjoint
// ranges does not wait. The copy-on-read filter holds it across a
// copy-up and the writes through it, and a mirror across each copy, so
// that old data read before a write can never land after it. The zero
// value is ready to use.
type RangeLock struct {
	mu   sync.Mutex
	held []*LockedRange // guarded by mu
}

// LockedRange is a range held by a RangeLock.
type LockedRange struct {
	lo, hi int64
	// done is closed on unlock; made only once someone waits. Guarded
	// by the lock's mu.
	done chan struct{}
}

// Lock waits until no held range overlaps [lo, hi), then holds it and
// returns the handle to unlock. It gives up with ctx's error.
func (l *RangeLock) Lock(ctx context.Context, lo, hi int64) (*LockedRange, error) {
	for {
		l.mu.Lock()
		var busy *LockedRange
		for _, r := range l.held {
			if r.lo < hi && lo < r.hi {
				busy = r
				break
			}
		}
		if busy == nil {
			r := &LockedRange{lo: lo, hi: hi}
			l.held = append(l.held, r)
			l.mu.Unlock()
			return r, nil
		}
		if busy.done == nil {
			busy.done = make(chan struct{})
		}
		done := busy.done
		l.mu.Unlock()
		select {
		case <-done:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// Unlock releases a range that Lock returned.
func (l *RangeLock) Unlock(r *LockedRange) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for i, x := range l.held {
		if x == r {
			l.held = append(l.held[:i], l.held[i+1:]...)
			break
		}
	}
	if r.done != nil {
		close(r.done)
	}
}
