package block

import "time"

// Clock is the daemon's time source: throttle groups and job rate limits
// read it, and tests inject a fake one (blocktest.FakeClock) so that rates
// are checked over simulated seconds without sleeping (tailscale's
// tstime.Clock is the model).
type Clock interface {
	Now() time.Time
	// AfterFunc calls f in its own goroutine once d has passed. f must
	// not be called from within AfterFunc itself.
	AfterFunc(d time.Duration, f func()) Timer
}

// Timer is a pending AfterFunc call.
type Timer interface {
	// Stop prevents the call if it has not started; it reports whether
	// it did.
	Stop() bool
}

type realClock struct{}

func (realClock) Now() time.Time { return time.Now() }

func (realClock) AfterFunc(d time.Duration, f func()) Timer { return time.AfterFunc(d, f) }

// RealClock is the wall clock.
func RealClock() Clock { return realClock{} }
