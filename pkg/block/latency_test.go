package block

import (
	"testing"
	"time"
)

func TestLatencyBuckets(t *testing.T) {
	tests := []struct {
		d      time.Duration
		bucket int
	}{
		{0, 0},
		{15 * time.Microsecond, 0},
		{16 * time.Microsecond, 1},
		{31 * time.Microsecond, 1},
		{32 * time.Microsecond, 2},
		{time.Millisecond, 6}, // 1000/16 = 62: [512 µs, 1024 µs)
		{LatencyBound(LatencyBuckets-2) - 1, LatencyBuckets - 2},
		{LatencyBound(LatencyBuckets - 2), LatencyBuckets - 1},
		{time.Hour, LatencyBuckets - 1},
	}
	for _, tc := range tests {
		var l Latency
		l.Observe(tc.d)
		c := l.Counts()
		if c[tc.bucket] != 1 {
			t.Errorf("Observe(%v): counts %v, want 1 in bucket %d", tc.d, c, tc.bucket)
		}
		if tc.bucket < LatencyBuckets-1 && tc.d >= LatencyBound(tc.bucket) {
			t.Errorf("%v is not below bucket %d's bound %v", tc.d, tc.bucket, LatencyBound(tc.bucket))
		}
	}
}
