package throttle_test

import (
	"math"
	"testing"
	"time"

	"github.com/blockd/blockd/pkg/block/blocktest"
	"github.com/blockd/blockd/pkg/filters/throttle"
)

func i64(v int64) *int64 { return &v }

// stream is a client that keeps depth requests of one kind queued.
type stream struct {
	m     *throttle.Member
	write bool
	size  int64
	depth int

	out  []*throttle.Waiter
	done int // requests let through so far
}

// sim drives streams against a group on a fake clock, in one goroutine:
// no sleeps, no scheduling noise.
type sim struct {
	clk     *blocktest.FakeClock
	streams []*stream
}

// topUp refills every stream to its depth and collects what was let go.
func (s *sim) topUp(t *testing.T) {
	for _, st := range s.streams {
		kept := st.out[:0]
		for _, w := range st.out {
			if w.Released() {
				st.done++
			} else {
				kept = append(kept, w)
			}
		}
		st.out = kept
		for n := 0; len(st.out) < st.depth; n++ {
			if n > 1e6 {
				t.Fatal("stream is never throttled")
			}
			if w := throttle.Admit(st.m, st.write, st.size); w != nil {
				st.out = append(st.out, w)
			} else {
				st.done++
			}
		}
	}
}

// run lets d pass in 1 ms steps and returns how many requests each
// stream got through during it.
func (s *sim) run(t *testing.T, d time.Duration) []int {
	start := make([]int, len(s.streams))
	for i, st := range s.streams {
		start[i] = st.done
	}
	const step = time.Millisecond
	for el := time.Duration(0); el < d; el += step {
		s.topUp(t)
		s.clk.Advance(step)
	}
	s.topUp(t)
	got := make([]int, len(s.streams))
	for i, st := range s.streams {
		got[i] = st.done - start[i]
	}
	return got
}

func within5(t *testing.T, what string, got, want float64) {
	t.Helper()
	if math.Abs(got-want) > 0.05*want {
		t.Errorf("%s: %.1f, want %.1f ± 5%%", what, got, want)
	}
}

func newGroup(t *testing.T, l throttle.Limits) (*throttle.Group, *blocktest.FakeClock) {
	t.Helper()
	clk := blocktest.NewFakeClock()
	g, err := throttle.NewGroupClock("tg0", l, clk)
	if err != nil {
		t.Fatalf("NewGroup: %v", err)
	}
	return g, clk
}

func TestRates(t *testing.T) {
	const kib, mib = 1 << 10, 1 << 20
	type sdef struct {
		member int
		write  bool
		size   int64
	}
	tests := []struct {
		name    string
		limits  throttle.Limits
		streams []sdef
		// want is the rate per stream: requests per second, or bytes
		// per second when bytes is set.
		want  []float64
		bytes bool
	}{
		{"iops-total read", throttle.Limits{IopsTotal: i64(100)}, []sdef{{0, false, 4 * kib}}, []float64{100}, false},
		{"iops-total write", throttle.Limits{IopsTotal: i64(250)}, []sdef{{0, true, 4 * kib}}, []float64{250}, false},
		{"iops-total shared by reads and writes", throttle.Limits{IopsTotal: i64(100)},
			[]sdef{{0, false, 4 * kib}, {0, true, 4 * kib}}, []float64{50, 50}, false},
		{"iops-read and iops-write", throttle.Limits{IopsRead: i64(50), IopsWrite: i64(200)},
			[]sdef{{0, false, 4 * kib}, {0, true, 4 * kib}}, []float64{50, 200}, false},
		{"bps-total", throttle.Limits{BpsTotal: i64(mib)}, []sdef{{0, false, 64 * kib}}, []float64{mib}, true},
		{"bps-read and bps-write", throttle.Limits{BpsRead: i64(512 * kib), BpsWrite: i64(2 * mib)},
			[]sdef{{0, false, 64 * kib}, {0, true, 64 * kib}}, []float64{512 * kib, 2 * mib}, true},
		{"bps and iops together", throttle.Limits{BpsTotal: i64(mib), IopsTotal: i64(1000)},
			[]sdef{{0, false, 64 * kib}}, []float64{mib}, true},
		{"iops-size counts big requests as several", throttle.Limits{IopsTotal: i64(100), IopsSize: i64(4096)},
			[]sdef{{0, false, 8 * kib}}, []float64{50}, false},
		{"iops-size leaves small requests at one", throttle.Limits{IopsTotal: i64(100), IopsSize: i64(4096)},
			[]sdef{{0, false, 512}}, []float64{100}, false},
		{"two members share the budget fairly", throttle.Limits{IopsTotal: i64(100)},
			[]sdef{{0, false, 4 * kib}, {1, false, 4 * kib}}, []float64{50, 50}, false},
		{"two members, one reading one writing", throttle.Limits{BpsTotal: i64(2 * mib)},
			[]sdef{{0, false, 64 * kib}, {1, true, 64 * kib}}, []float64{mib, mib}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			g, clk := newGroup(t, tt.limits)
			ms := []*throttle.Member{throttle.Join(g, "a"), throttle.Join(g, "b")}
			s := &sim{clk: clk}
			for _, d := range tt.streams {
				s.streams = append(s.streams, &stream{m: ms[d.member], write: d.write, size: d.size, depth: 4})
			}
			got := s.run(t, 10*time.Second)
			for i, n := range got {
				rate := float64(n) / 10
				if tt.bytes {
					rate *= float64(tt.streams[i].size)
				}
				within5(t, "stream rate", rate, tt.want[i])
			}
		})
	}
}

func TestBursts(t *testing.T) {
	t.Run("burst rate, then the average", func(t *testing.T) {
		// The bucket holds 1000*2 ops and leaks 100/s; the burst itself
		// is held at 1000/s. It fills after about 2.2 s.
		g, clk := newGroup(t, throttle.Limits{IopsTotal: i64(100), IopsTotalMax: i64(1000), IopsTotalMaxLength: i64(2)})
		s := &sim{clk: clk, streams: []*stream{{m: throttle.Join(g, "a"), size: 4096, depth: 8}}}
		s.run(t, 500*time.Millisecond)
		within5(t, "ops/s during the burst", float64(s.run(t, time.Second)[0]), 1000)
		s.run(t, 3500*time.Millisecond)
		within5(t, "ops/s after the burst", float64(s.run(t, 5*time.Second)[0])/5, 100)
	})
	t.Run("one-second burst goes at once", func(t *testing.T) {
		// With a burst length of 1 there is no burst rate: the bucket of
		// 1000 ops may be used up at any speed.
		g, clk := newGroup(t, throttle.Limits{IopsTotal: i64(100), IopsTotalMax: i64(1000)})
		s := &sim{clk: clk, streams: []*stream{{m: throttle.Join(g, "a"), size: 4096, depth: 1100}}}
		first := s.run(t, time.Millisecond)[0]
		within5(t, "ops in the first millisecond", float64(first), 1000)
		within5(t, "ops/s afterwards", float64(s.run(t, 10*time.Second)[0])/10, 100)
	})
	t.Run("bursts come back after idling", func(t *testing.T) {
		g, clk := newGroup(t, throttle.Limits{BpsTotal: i64(1 << 20), BpsTotalMax: i64(4 << 20), BpsTotalMaxLength: i64(1)})
		m := throttle.Join(g, "a")
		s := &sim{clk: clk, streams: []*stream{{m: m, size: 1 << 20, depth: 8}}}
		s.run(t, 10*time.Second) // uses up the burst
		s.streams = nil
		clk.Advance(20 * time.Second) // idle: the queue goes, the bucket empties
		s.streams = []*stream{{m: m, size: 1 << 20, depth: 8}}
		within5(t, "MiB at once after idling", float64(s.run(t, time.Millisecond)[0]), 5)
	})
}

func TestSetLimitsAtRunTime(t *testing.T) {
	g, clk := newGroup(t, throttle.Limits{IopsTotal: i64(10)})
	s := &sim{clk: clk, streams: []*stream{{m: throttle.Join(g, "a"), size: 4096, depth: 64}}}
	within5(t, "ops/s at 10", float64(s.run(t, 10*time.Second)[0])/10, 10)

	// Raising the limit applies to the requests already queued.
	if err := g.SetLimits(throttle.Limits{IopsTotal: i64(1000)}); err != nil {
		t.Fatal(err)
	}
	within5(t, "ops/s at 1000", float64(s.run(t, 10*time.Second)[0])/10, 1000)

	// An invalid change changes nothing.
	if err := g.SetLimits(throttle.Limits{IopsRead: i64(5)}); err == nil {
		t.Fatal("conflicting total and read limits accepted")
	}
	if got := *g.Limits().IopsTotal; got != 1000 {
		t.Fatalf("iops-total %d after a refused change, want 1000", got)
	}

	// Lifting every limit lets everything queued go at once.
	s.topUp(t)
	if throttle.Queued(g) == 0 {
		t.Fatal("nothing queued")
	}
	if err := g.SetLimits(throttle.Limits{IopsTotal: i64(0)}); err != nil {
		t.Fatal(err)
	}
	if n := throttle.Queued(g); n != 0 {
		t.Fatalf("%d requests still queued without limits", n)
	}
	if n := clk.Pending(); n != 0 {
		t.Errorf("%d timers armed without limits", n)
	}
}
