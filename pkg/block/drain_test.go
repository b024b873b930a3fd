package block_test

import (
	"context"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/blockd/blockd/pkg/block"
	"github.com/blockd/blockd/pkg/block/blocktest"
)

// drainGraph is mem "m" under probe "p", which root r uses.
func drainGraph(t *testing.T) (g *block.Graph, p *block.Node, pr *probe, r *block.Root, ev *events) {
	t.Helper()
	g = blocktest.NewGraph()
	ev = newEvents()
	blocktest.Open(t, g, `{"driver":"blocktest-mem","node-name":"m","size":65536}`)
	p, pr = openProbe(t, g, "p", "m", ev)
	r = blocktest.NewRoot(t, p, block.PermAll, block.PermAll)
	return g, p, pr, r, ev
}

// TestDrainWaitsForInFlight: a drain returns only once the requests
// already inside the drained nodes have left.
func TestDrainWaitsForInFlight(t *testing.T) {
	g, p, pr, r, ev := drainGraph(t)
	pr.gate = make(chan struct{})
	read := make(chan error, 1)
	go func() { read <- r.ReadAt(context.Background(), make([]byte, 512), 0, 0) }()
	ev.waitEvent(t, "p:read")

	drained, end := make(chan struct{}), make(chan struct{})
	go func() {
		tx := g.Begin()
		tx.Drain(p)
		ev.add("drained")
		close(drained)
		<-end
		tx.Abort()
		ev.add("ended")
	}()
	// The drain has begun (the probe heard of it) while the read is
	// held inside: it must not have returned.
	ev.waitEvent(t, "p:drain-begin")
	select {
	case <-drained:
		t.Fatal("the drain returned with a read in flight")
	default:
	}
	close(pr.gate)
	if err := <-read; err != nil {
		t.Fatal(err)
	}
	<-drained
	close(end)
	ev.waitEvent(t, "ended")
	list := ev.snapshot()
	before(t, list, "p:read-done", "drained")
	before(t, list, "drained", "p:drain-end")
}

// TestDrainHoldsNewRequests: every kind of request that comes in through
// a root while a change drains its node waits until the change ends.
func TestDrainHoldsNewRequests(t *testing.T) {
	kinds := []struct {
		name, event string
		do          func(r *block.Root) error
	}{
		{"read", "p:read", func(r *block.Root) error { return r.ReadAt(context.Background(), make([]byte, 512), 0, 0) }},
		{"write", "p:write", func(r *block.Root) error { return r.WriteAt(context.Background(), make([]byte, 512), 0, 0) }},
		{"zero", "p:zero", func(r *block.Root) error { return r.Zero(context.Background(), 0, 512, 0) }},
		{"discard", "p:discard", func(r *block.Root) error { return r.Discard(context.Background(), 0, 512) }},
		{"flush", "p:flush", func(r *block.Root) error { return r.Flush(context.Background()) }},
		{"do", "p:read", func(r *block.Root) error {
			return r.Do(func(c *block.Child) error { return c.ReadAt(context.Background(), make([]byte, 512), 0, 0) })
		}},
	}
	for _, k := range kinds {
		t.Run(k.name, func(t *testing.T) {
			g, p, _, r, ev := drainGraph(t)
			tx := g.Begin()
			tx.Drain(p)
			done := make(chan error, 1)
			go func() {
				ev.add("sent")
				done <- k.do(r)
			}()
			ev.waitEvent(t, "sent")
			// Give the request every chance to slip in; it must not.
			for range 1000 {
				runtime.Gosched()
			}
			if slices.Contains(ev.snapshot(), k.event) {
				t.Errorf("the %s went in during the drain", k.name)
			}
			ev.add("end")
			tx.Abort()
			if err := <-done; err != nil {
				t.Fatal(err)
			}
			list := ev.snapshot()
			before(t, list, "end", "p:drain-end")
			before(t, list, "p:drain-end", k.event)
		})
	}
}

// TestDrainNested: draining the same nodes again within a change, or
// nodes above and below them, nests: drivers and job hooks hear one
// begin and one end per change, the end when the change ends, and the
// nodes stay drained until then.
func TestDrainNested(t *testing.T) {
	g, p, _, _, ev := drainGraph(t)
	q, _ := openProbe(t, g, "q", "p", ev)
	newFakeJob(t, q, "j", ev) // not started: it parks at once
	m := func() *block.Node { g.Lock(); defer g.Unlock(); return g.Lookup("m") }()
	for round := 1; round <= 2; round++ {
		tx := g.Begin()
		tx.Drain(p)
		tx.Drain(q)
		tx.Drain(m, p)
		list := ev.snapshot()
		for _, s := range []string{"p:drain-begin", "q:drain-begin", "j:pause"} {
			if count(list, s) != round {
				t.Errorf("round %d: %s heard %d times, want %d", round, s, count(list, s), round)
			}
		}
		for _, s := range []string{"p:drain-end", "q:drain-end", "j:resume"} {
			if count(list, s) != round-1 {
				t.Errorf("round %d: %s before the change ended", round, s)
			}
		}
		for _, n := range []*block.Node{m, p, q} {
			if !n.Drained() {
				t.Errorf("round %d: %s not drained", round, n.Name())
			}
		}
		ev.add("commit")
		if err := tx.Commit(); err != nil {
			t.Fatal(err)
		}
		list = ev.snapshot()
		for _, s := range []string{"p:drain-end", "q:drain-end", "j:resume"} {
			if count(list, s) != round {
				t.Errorf("round %d: %s heard %d times, want %d", round, s, count(list, s), round)
			}
		}
		for _, n := range []*block.Node{m, p, q} {
			if n.Drained() {
				t.Errorf("round %d: %s still drained after commit", round, n.Name())
			}
		}
	}
}

// TestDrainPausesJobs: a drain asks every job that uses the drained
// nodes to pause before it waits for any of them; it waits until each
// has reached its pause point with no request in flight (a job's request
// already inside finishes first); the jobs issue nothing until the change
// ends, and then each resumes once.
func TestDrainPausesJobs(t *testing.T) {
	g, p, pr, _, ev := drainGraph(t)
	q, _ := openProbe(t, g, "q", "p", ev)
	j1 := newFakeJob(t, p, "j1", ev)
	j2 := newFakeJob(t, q, "j2", ev)
	pr.gate = make(chan struct{}) // the first read stays inside
	stop := make(chan struct{})
	errs := make(chan error, 2)
	j1.start(stop, errs)
	j2.start(stop, errs)
	ev.waitFor(t, "both jobs reading", func(l []string) bool { return count(l, "p:read") == 2 })

	drained, end := make(chan struct{}), make(chan struct{})
	go func() {
		tx := g.Begin()
		tx.Drain(p)
		ev.add("drained")
		close(drained)
		<-end
		ev.add("end")
		tx.Abort()
	}()
	ev.waitEvent(t, "p:drain-begin")
	select {
	case <-drained:
		t.Fatal("the drain returned while the jobs' reads were in flight")
	default:
	}
	close(pr.gate)
	<-drained
	during := ev.snapshot()
	close(end)
	for _, j := range []string{"j1", "j2"} {
		ev.waitFor(t, j+" reading again", func(l []string) bool {
			return count(l, j+":read-done") > count(during, j+":read-done")
		})
	}
	close(stop)
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	checkJobDrain(t, ev.snapshot(), during, "j1", "j2")
}

// TestDrainWaitsForPausePoint: a job that has nothing in flight but is
// midway through a step has not paused yet; the drain waits until it
// reaches its pause point.
func TestDrainWaitsForPausePoint(t *testing.T) {
	g, p, _, _, ev := drainGraph(t)
	j := newFakeJob(t, p, "j", ev)
	j.mid = make(chan struct{})
	stop := make(chan struct{})
	errs := make(chan error, 1)
	j.start(stop, errs)
	ev.waitEvent(t, "j:mid")

	drained, end := make(chan struct{}), make(chan struct{})
	go func() {
		tx := g.Begin()
		tx.Drain(p)
		ev.add("drained")
		close(drained)
		<-end
		ev.add("end")
		tx.Abort()
	}()
	ev.waitEvent(t, "j:pause")
	// Give a drain that does not wait for the pause point every chance
	// to return; then let the job finish its step.
	for range 1000 {
		runtime.Gosched()
	}
	close(j.mid)
	<-drained
	during := ev.snapshot()
	close(end)
	ev.waitEvent(t, "j:resume")
	close(stop)
	if err := <-errs; err != nil {
		t.Fatal(err)
	}
	checkJobDrain(t, ev.snapshot(), during, "j")
}

// checkJobDrain checks the order of a drain of jobs: every pause asked
// before any wait done, every job parked at its pause point with nothing
// in flight when the drain returns, nothing issued from then to the end
// of the change, one resume each after it.
func checkJobDrain(t *testing.T, list, during []string, jobs ...string) {
	t.Helper()
	for _, a := range jobs {
		for _, b := range jobs {
			before(t, list, a+":pause", b+":paused")
		}
		before(t, list, a+":parked", "drained")
		if n := count(during, a+":read") - count(during, a+":read-done"); n != 0 {
			t.Errorf("%s had %d reads in flight when the drain returned", a, n)
		}
		if count(list, a+":resume") != 1 {
			t.Errorf("%s resumed %d times, want 1", a, count(list, a+":resume"))
		}
		before(t, list, "end", a+":resume")
	}
	// From the drain's return to the end of the change, no job reads.
	during = list[index(list, "drained"):index(list, "end")]
	for _, s := range during {
		if strings.HasSuffix(s, ":read") {
			t.Errorf("%s during the drain: %s", s, strings.Join(during, " "))
		}
	}
}

// TestDrainNoEndAfterClose: a drained node that the change removes is
// closed when the change commits, and Close is the last call its driver
// hears: no DrainEnd after it.
func TestDrainNoEndAfterClose(t *testing.T) {
	probeAbove := func(t *testing.T, g *block.Graph, ev *events) {
		change(t, g, func(tx *block.Txn) error {
			_, err := tx.InsertFilter(txnCtx, tx.Graph().Lookup("m"), []byte(`{"driver":"draintest-probe","node-name":"p","file":"m"}`), true)
			if err == nil {
				tx.Graph().Lookup("p").Impl().(*probe).ev = ev
			}
			return err
		})
	}
	for _, tc := range []struct {
		name  string
		setup func(t *testing.T, g *block.Graph, ev *events)
		do    func(tx *block.Txn) error
	}{
		{"RemoveFilter", probeAbove, func(tx *block.Txn) error { return tx.RemoveFilter(tx.Graph().Lookup("p")) }},
		{"Delete", func(t *testing.T, g *block.Graph, ev *events) { openProbe(t, g, "p", "m", ev) },
			func(tx *block.Txn) error { return tx.Delete("p") }},
		{"CloseAll", probeAbove, func(tx *block.Txn) error { tx.CloseAll(); return nil }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g, ev := blocktest.NewGraph(), newEvents()
			m := blocktest.Open(t, g, `{"driver":"blocktest-mem","node-name":"m","size":65536}`)
			blocktest.NewRoot(t, m, permR, block.PermAll)
			tc.setup(t, g, ev)
			change(t, g, tc.do)
			list := ev.snapshot()
			if !slices.Contains(list, "p:close") {
				t.Fatalf("p not closed: %s", show(list))
			}
			if slices.Contains(list, "p:drain-end-after-close") {
				t.Errorf("DrainEnd after Close: %s", show(list))
			}
		})
	}
}
