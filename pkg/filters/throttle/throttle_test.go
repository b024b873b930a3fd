package throttle_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/blockd/blockd/pkg/block"
	"github.com/blockd/blockd/pkg/block/blocktest"
	"github.com/blockd/blockd/pkg/filters/internal/filtertest"
	"github.com/blockd/blockd/pkg/filters/throttle"
)

// addGroup adds a throttle group object to g.
func addGroup(t testing.TB, g *block.Graph, id string, l throttle.Limits, clk throttle.Clock) *throttle.Group {
	t.Helper()
	grp, err := throttle.NewGroupClock(id, l, clk)
	if err != nil {
		t.Fatal(err)
	}
	g.Lock()
	defer g.Unlock()
	if err := g.AddObject(id, grp); err != nil {
		t.Fatal(err)
	}
	return grp
}

type otherObject struct{}

func (otherObject) QOMType() string { return "iothread" }
func (otherObject) InUse() bool     { return false }

func build(t testing.TB, g *block.Graph, mem string) (*block.Node, []*block.Node) {
	addGroup(t, g, "tg0", throttle.Limits{}, blocktest.NewFakeClock())
	g.Lock()
	if err := g.AddObject("io0", otherObject{}); err != nil {
		t.Fatal(err)
	}
	g.Unlock()
	base := blocktest.Open(t, g, fmt.Sprintf(`{"node-name":"base",%s`, mem[1:]))
	flt := blocktest.Open(t, g, `{"driver":"throttle","node-name":"flt","discard":"unmap","throttle-group":"tg0","file":"base"}`)
	return flt, []*block.Node{base}
}

func TestConformance(t *testing.T) {
	filtertest.Run(t, filtertest.Config{
		Build: build,
		Hold: func(t testing.TB, flt *block.Node) func() int {
			f, _ := throttle.Of(flt)
			if err := f.Group().SetLimits(throttle.Limits{IopsTotal: i64(1)}); err != nil {
				t.Fatal(err)
			}
			throttle.Saturate(f.Group())
			return func() int { return throttle.Queued(f.Group()) }
		},
		BadOptions: []filtertest.BadOption{
			filtertest.Bad("no such group", `{"driver":"throttle","node-name":"t1","throttle-group":"nosuch","file":{"driver":"blocktest-mem","size":4096}}`,
				"Throttle group 'nosuch' does not exist"),
			filtertest.Bad("object of another type", `{"driver":"throttle","node-name":"t1","throttle-group":"io0","file":"base"}`,
				"Throttle group 'io0' does not exist"),
			filtertest.Bad("no group", `{"driver":"throttle","node-name":"t1","file":"base"}`, "Parameter 'throttle-group' is missing"),
			filtertest.Bad("no such file", `{"driver":"throttle","node-name":"t1","throttle-group":"tg0","file":"nosuch"}`,
				"Cannot find device='nosuch' nor node-name='nosuch'"),
			filtertest.Bad("duplicate name", `{"driver":"throttle","node-name":"flt","throttle-group":"tg0","file":"base"}`,
				"Duplicate nodes with node-name='flt'"),
		},
	})
}

func TestNewGroupErrors(t *testing.T) {
	tests := []struct {
		name string
		l    throttle.Limits
		err  string
	}{
		{"negative", throttle.Limits{BpsTotal: i64(-5)}, "bps/iops/max values must be within [0, 1000000000000000]"},
		{"too big", throttle.Limits{IopsRead: i64(1000000000000001)}, "bps/iops/max values must be within [0, 1000000000000000]"},
		{"total and read", throttle.Limits{BpsTotal: i64(1), BpsRead: i64(1)}, "bps/iops/max total values and read/write values cannot be used at the same time"},
		{"total and write max", throttle.Limits{IopsTotalMax: i64(10), IopsTotal: i64(1), IopsWrite: i64(1), IopsWriteMax: i64(5)},
			"bps/iops/max total values and read/write values cannot be used at the same time"},
		{"iops-size alone", throttle.Limits{IopsSize: i64(4096), BpsTotal: i64(1)}, "iops size requires an iops value to be set"},
		{"zero length", throttle.Limits{IopsTotal: i64(1), IopsTotalMax: i64(2), IopsTotalMaxLength: i64(0)}, "the burst length cannot be 0"},
		{"length without max", throttle.Limits{IopsTotal: i64(1), IopsTotalMaxLength: i64(2)}, "burst length set without burst rate"},
		{"negative length", throttle.Limits{IopsTotal: i64(1), IopsTotalMaxLength: i64(-1)}, "burst length set without burst rate"},
		{"length too long", throttle.Limits{BpsWriteMaxLength: i64(1 << 32)}, "bps-write-max-length value must be in the range [0, 4294967295]"},
		{"length too high for rate", throttle.Limits{BpsTotal: i64(1), BpsTotalMax: i64(1000000000000000), BpsTotalMaxLength: i64(2)},
			"burst length too high for this burst rate"},
		{"max without avg", throttle.Limits{BpsReadMax: i64(5)}, "bps_max/iops_max require corresponding bps/iops values"},
		{"max below avg", throttle.Limits{BpsRead: i64(10), BpsReadMax: i64(5)}, "bps_max/iops_max cannot be lower than bps/iops"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := throttle.NewGroup("tg", tt.l)
			if err == nil || err.Error() != tt.err {
				t.Fatalf("NewGroup: %v, want %q", err, tt.err)
			}
		})
	}
	t.Run("legacy properties", func(t *testing.T) {
		for _, tt := range []struct {
			p   throttle.Properties
			err string
		}{
			{throttle.Properties{XBpsTotal: i64(-1)}, "Property values cannot be negative"},
			{throttle.Properties{XIopsReadMaxLength: i64(1 << 33)}, "x-iops-read-max-length value must be in therange [0, 4294967295]"},
			{throttle.Properties{XIopsTotal: i64(1), XIopsRead: i64(1)}, "bps/iops/max total values and read/write values cannot be used at the same time"},
		} {
			if _, err := throttle.NewGroupFromProperties("tg", tt.p, nil); err == nil || err.Error() != tt.err {
				t.Errorf("%+v: %v, want %q", tt.p, err, tt.err)
			}
		}
		g, err := throttle.NewGroupFromProperties("tg", throttle.Properties{XIopsTotal: i64(7), Limits: &throttle.Limits{BpsTotal: i64(9)}}, nil)
		if err != nil {
			t.Fatal(err)
		}
		if v, ok := g.LegacyProperty("x-iops-total"); !ok || v != 7 {
			t.Errorf("x-iops-total = %d, %v", v, ok)
		}
		if l := g.Limits(); *l.BpsTotal != 9 || *l.IopsTotal != 7 {
			t.Errorf("limits %d %d, want bps 9 iops 7", *l.BpsTotal, *l.IopsTotal)
		}
		if err := g.SetLegacyProperty("x-iops-total", 1); err == nil || err.Error() != "Property cannot be set after initialization" {
			t.Errorf("qom-set x-iops-total: %v", err)
		}
	})
}

// TestLimitsReadBack pins what qom-get of "limits" shows (transcript f).
func TestLimitsReadBack(t *testing.T) {
	g, err := throttle.NewGroup("tg0", throttle.Limits{BpsTotal: i64(104857600)})
	if err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(g.Limits())
	if err != nil {
		t.Fatal(err)
	}
	var got map[string]int64
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	want := map[string]int64{"bps-read-max-length": 1, "iops-read-max-length": 1, "bps-read-max": 0, "bps-total": 104857600,
		"iops-total-max-length": 1, "iops-total": 0, "iops-write-max": 0, "bps-write": 0, "bps-total-max": 0, "bps-write-max": 0,
		"iops-size": 0, "iops-read": 0, "iops-write-max-length": 1, "iops-write": 0, "bps-total-max-length": 1, "iops-read-max": 0,
		"bps-read": 0, "bps-write-max-length": 1, "iops-total-max": 0}
	if len(got) != len(want) {
		t.Fatalf("got %d members, want %d: %s", len(got), len(want), b)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %d, want %d", k, got[k], v)
		}
	}
	// qom-set merges: members not given stay.
	if err := g.SetLimits(throttle.Limits{IopsTotal: i64(5)}); err != nil {
		t.Fatal(err)
	}
	if l := g.Limits(); *l.BpsTotal != 104857600 || *l.IopsTotal != 5 {
		t.Errorf("after qom-set: bps-total %d iops-total %d", *l.BpsTotal, *l.IopsTotal)
	}
}

func TestGroupInUse(t *testing.T) {
	g := blocktest.NewGraph()
	grp := addGroup(t, g, "tg0", throttle.Limits{}, nil)
	blocktest.Open(t, g, `{"driver":"blocktest-mem","node-name":"base","size":65536}`)
	// A failed open does not leave the group in use.
	if _, err := blocktest.TryOpen(g, `{"driver":"throttle","node-name":"flt","throttle-group":"tg0","file":"nosuch"}`); err == nil {
		t.Fatal("open over a missing node succeeded")
	}
	if grp.InUse() {
		t.Fatal("group in use after a failed open")
	}
	// Nor does a throttle node opened inside a parent that then fails.
	if _, err := blocktest.TryOpen(g, `{"driver":"blocktest-cow","node-name":"x","file":{"driver":"throttle","throttle-group":"tg0","file":"base"},"backing":"nosuch"}`); err == nil {
		t.Fatal("open with a missing backing succeeded")
	}
	if grp.InUse() {
		t.Fatal("group in use after a failed parent open")
	}
	blocktest.Open(t, g, `{"driver":"throttle","node-name":"flt","throttle-group":"tg0","file":"base"}`)
	blocktest.Open(t, g, `{"driver":"throttle","node-name":"flt2","throttle-group":"tg0","file":"base"}`)
	if got := grp.Members(); len(got) != 2 || got[0] != "flt" || got[1] != "flt2" {
		t.Errorf("members %v", got)
	}
	g.Lock()
	err := g.DelObject("tg0")
	g.Unlock()
	if err == nil || err.Error() != "object 'tg0' is in use, can not be deleted" {
		t.Fatalf("object-del of a group in use: %v", err)
	}
	for _, name := range []string{"flt", "flt2"} {
		tx := g.Begin()
		if err := tx.Delete(name); err != nil {
			tx.Abort()
			t.Fatal(err)
		}
		if err := tx.Commit(); err != nil {
			t.Fatal(err)
		}
	}
	g.Lock()
	defer g.Unlock()
	if err := g.DelObject("tg0"); err != nil {
		t.Fatalf("object-del of an unused group: %v", err)
	}
	if f, ok := g.Lookup("base").Impl().(*throttle.Filter); ok {
		t.Errorf("base is a throttle node: %v", f)
	}
}

// waitQueued spins until grp holds n requests.
func waitQueued(t *testing.T, grp *throttle.Group, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for throttle.Queued(grp) != n {
		if time.Now().After(deadline) {
			t.Fatalf("%d requests queued, want %d", throttle.Queued(grp), n)
		}
		runtime.Gosched()
	}
}

// TestThroughNode drives a throttle node from several goroutines on a
// fake clock: what is throttled, cancellation, and drain.
func TestThroughNode(t *testing.T) {
	ctx := context.Background()
	g := blocktest.NewGraph()
	clk := blocktest.NewFakeClock()
	grp := addGroup(t, g, "tg0", throttle.Limits{IopsTotal: i64(10)}, clk)
	blocktest.Open(t, g, `{"driver":"blocktest-mem","node-name":"base","size":1048576,"discard":"unmap"}`)
	flt := blocktest.Open(t, g, `{"driver":"throttle","node-name":"flt","discard":"unmap","throttle-group":"tg0","file":"base"}`)
	r := blocktest.NewRoot(t, flt, block.PermConsistentRead|block.PermWrite, block.PermAll)
	f, _ := throttle.Of(flt)
	if f.GroupName() != "tg0" || f.Group() != grp {
		t.Fatalf("group %q", f.GroupName())
	}

	// Flush and block status are never throttled.
	throttle.Saturate(grp)
	if err := r.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if err := r.Do(func(c *block.Child) error { _, err := c.BlockStatus(ctx, 0, 4096); return err }); err != nil {
		t.Fatal(err)
	}

	// Reads, writes, zeroes and discards are.
	reqs := []func() error{
		func() error { return r.ReadAt(ctx, make([]byte, 512), 0, 0) },
		func() error { return r.WriteAt(ctx, make([]byte, 512), 0, 0) },
		func() error { return r.Zero(ctx, 0, 512, 0) },
		func() error { return r.Discard(ctx, 0, 512) },
	}
	var wg sync.WaitGroup
	for _, req := range reqs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := req(); err != nil {
				t.Error(err)
			}
		}()
	}
	waitQueued(t, grp, len(reqs))
	// Lifting the limit lets them go.
	if err := grp.SetLimits(throttle.Limits{IopsTotal: i64(0)}); err != nil {
		t.Fatal(err)
	}
	wg.Wait()

	// A cancelled request leaves the queue with the context's error.
	if err := grp.SetLimits(throttle.Limits{IopsTotal: i64(10)}); err != nil {
		t.Fatal(err)
	}
	throttle.Saturate(grp)
	cctx, cancel := context.WithCancel(ctx)
	errc := make(chan error, 1)
	go func() { errc <- r.ReadAt(cctx, make([]byte, 512), 0, 0) }()
	waitQueued(t, grp, 1)
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled read: %v", err)
	}
	waitQueued(t, grp, 0)

	// While the node is drained its requests are not throttled.
	f.DrainBegin()
	if err := r.ReadAt(ctx, make([]byte, 512), 0, 0); err != nil {
		t.Fatal(err)
	}
	f.DrainEnd()
	go func() { errc <- r.ReadAt(ctx, make([]byte, 512), 0, 0) }()
	waitQueued(t, grp, 1)
	// The timer lets it go once the bucket has leaked: the saturated
	// level is far away, so lower it by changing the limits.
	if err := grp.SetLimits(throttle.Limits{IopsTotal: i64(10)}); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}

	// Queued requests go when their time comes on the clock.
	for range 3 {
		go func() { errc <- r.ReadAt(ctx, make([]byte, 512), 0, 0) }()
	}
	// The bucket (one op after the last release) admits one more at once
	// at most; the others wait for the clock.
	deadline := time.Now().Add(10 * time.Second)
	got := 0
	for got < 3 {
		select {
		case err := <-errc:
			if err != nil {
				t.Fatal(err)
			}
			got++
		default:
			if time.Now().After(deadline) {
				t.Fatalf("only %d of 3 reads done", got)
			}
			clk.Advance(10 * time.Millisecond)
			runtime.Gosched()
		}
	}
}

// TestRealClock runs a throttled node on the wall clock: requests beyond
// the bucket wait for real timers (about 10 ms each here) and all end.
func TestRealClock(t *testing.T) {
	ctx := context.Background()
	g := blocktest.NewGraph()
	grp := addGroup(t, g, "tg0", throttle.Limits{IopsTotal: i64(100)}, throttle.RealClock())
	blocktest.Open(t, g, `{"driver":"blocktest-mem","node-name":"base","size":65536}`)
	flt := blocktest.Open(t, g, `{"driver":"throttle","node-name":"flt","throttle-group":"tg0","file":"base"}`)
	r := blocktest.NewRoot(t, flt, block.PermConsistentRead, block.PermAll)
	const n = 15 // the bucket admits 11 at once; 4 wait
	start := time.Now()
	errc := make(chan error, n)
	for range n {
		go func() { errc <- r.ReadAt(ctx, make([]byte, 512), 0, 0) }()
	}
	for range n {
		select {
		case err := <-errc:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("throttled reads never finished (%d queued)", throttle.Queued(grp))
		}
	}
	if el := time.Since(start); el < 30*time.Millisecond {
		t.Errorf("%d reads at 100 IOPS took only %v", n, el)
	}
}
