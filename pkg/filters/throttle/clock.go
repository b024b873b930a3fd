package throttle

import "github.com/blockd/blockd/pkg/block"

// Clock is the time source of a group (the daemon's block.Clock). Tests
// inject blocktest.FakeClock so that rates can be checked over simulated
// seconds without sleeping.
type Clock = block.Clock

// Timer is a pending AfterFunc call.
type Timer = block.Timer

// RealClock is the wall clock.
func RealClock() Clock { return block.RealClock() }
