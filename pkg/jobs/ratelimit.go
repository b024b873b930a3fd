package jobs

import "time"

// sliceTime is the accounting period of the rate limit: QEMU's
// BLOCK_JOB_SLICE_TIME, so that a job at a given speed moves in steps of
// the same size as under qsd.
const sliceTime = 100 * time.Millisecond

// rateLimit lets a job move speed×sliceTime bytes per slice. Bytes are
// accounted when they are dispatched; once a slice's quota is spent, the
// job waits until the slices those bytes cover have passed, then a new
// slice starts. Guarded by the job's lock.
type rateLimit struct {
	speed      int64 // bytes per second; 0: no limit
	quota      int64 // bytes per slice
	start, end time.Time
	dispatched int64
}

func (l *rateLimit) setSpeed(speed int64) {
	l.speed = speed
	l.quota = max(speed*int64(sliceTime)/int64(time.Second), 1)
}

// delay accounts n more bytes at now and returns how long the job must
// wait before it dispatches more (0: not at all). n == 0 only asks.
func (l *rateLimit) delay(now time.Time, n int64) time.Duration {
	if l.speed == 0 {
		return 0
	}
	if l.end.Before(now) {
		// The previous slice (possibly stretched) is over.
		l.start, l.end, l.dispatched = now, now.Add(sliceTime), 0
	}
	l.dispatched += n
	if l.dispatched < l.quota {
		return 0
	}
	// Bytes beyond what a day at this speed moves wait a day: the
	// duration must not overflow.
	wait := min(float64(l.dispatched)/float64(l.quota)*float64(sliceTime), float64(24*time.Hour))
	l.end = l.start.Add(time.Duration(wait))
	return l.end.Sub(now)
}
