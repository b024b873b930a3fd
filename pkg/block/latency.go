package block

import (
	"math/bits"
	"sync/atomic"
	"time"
)

// LatencyBuckets is the number of buckets of a Latency histogram: bucket
// i < LatencyBuckets-1 counts requests that took less than
// LatencyBound(i); the last counts the rest.
const LatencyBuckets = 20

// latencyBase is the bound of the first bucket; each next one doubles.
const latencyBase = 16 * time.Microsecond

// Latency is a histogram of request times: doubling buckets from 16 µs to
// about 4 s. Observing is one atomic add, cheap enough to keep always on
// the paths that already read the clock (a root's requests), so that a
// metrics endpoint can show latency as histograms without a switch.
type Latency struct {
	counts [LatencyBuckets]atomic.Int64
}

// Observe records one request that took d.
func (l *Latency) Observe(d time.Duration) {
	i := bits.Len64(uint64(d / latencyBase))
	l.counts[min(i, LatencyBuckets-1)].Add(1)
}

// Counts returns each bucket's count (not cumulative).
func (l *Latency) Counts() [LatencyBuckets]int64 {
	var c [LatencyBuckets]int64
	for i := range c {
		c[i] = l.counts[i].Load()
	}
	return c
}

// LatencyBound is the exclusive upper bound of bucket i (the last bucket
// has none).
func LatencyBound(i int) time.Duration { return latencyBase << i }
