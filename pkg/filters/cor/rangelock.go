package cor

import (
	"context"
	"sync"
)

// rangeLock serialises requests on overlapping byte ranges. Requests on
// disjoint ranges do not wait for each other.
type rangeLock struct {
	mu   sync.Mutex
	held []*lockedRange // guarded by mu
}

type lockedRange struct {
	lo, hi int64
	// done is closed on unlock; made only once someone waits. Guarded
	// by the lock's mu.
	done chan struct{}
}

// lock waits until no held range overlaps [lo, hi), then holds it and
// returns the handle to unlock. It gives up with ctx's error.
func (l *rangeLock) lock(ctx context.Context, lo, hi int64) (*lockedRange, error) {
	for {
		l.mu.Lock()
		var busy *lockedRange
		for _, r := range l.held {
			if r.lo < hi && lo < r.hi {
				busy = r
				break
			}
		}
		if busy == nil {
			r := &lockedRange{lo: lo, hi: hi}
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

// unlock releases a range that lock returned.
func (l *rangeLock) unlock(r *lockedRange) {
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
