package soak

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"
)

// gate lets the sampler stop the load between steps: every worker runs
// each step (a client's round of commands, a job cycle, a qemu-io run)
// through do, and pause waits for the steps in progress and holds new
// ones back, so that a sample sees the daemon in the same state each
// time: no job, no NBD connection, no client's node.
type gate struct {
	mu  sync.RWMutex
	ctx context.Context
}

// do runs step unless the run has ended meanwhile.
func (g *gate) do(step func() error) error {
	g.mu.RLock()
	defer g.mu.RUnlock()
	if g.ctx.Err() != nil {
		return nil
	}
	return step()
}

func (g *gate) pause()  { g.mu.Lock() }
func (g *gate) resume() { g.mu.Unlock() }

// pace runs step through g, at most once per period, until ctx ends.
func pace(ctx context.Context, g *gate, period time.Duration, step func() error) error {
	tick := time.NewTicker(period)
	defer tick.Stop()
	for ctx.Err() == nil {
		if err := g.do(step); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
		case <-tick.C:
		}
	}
	return nil
}

// guard keeps the clients' query-named-block-nodes apart from the jobs,
// when it is on: qemu-storage-daemon 7.2 crashes when the query meets
// them. It lists the nodes, then polls for each one's information, and
// meanwhile a node that a qcow2 blockdev-create job opens and closes as
// it runs, or one that a block job's end removes, goes away under it:
// an abort (qcow2.c:5222, qcow2_get_specific_info: Assertion `false'
// failed; one client looping on the query and another creating qcow2
// images kills qsd within ten creates) or a SIGSEGV in
// bdrv_refresh_filename, within seconds of this load. Holding the query
// back from the qcow2 create jobs and from job-finalize was not enough;
// holding it back while any job exists is. TestSoak runs both daemons
// with the guard, so that both get the same load, and reports how long
// the queries were held back; TestSoakUnguarded runs blockd without it.
type guard struct {
	on   bool
	mu   sync.RWMutex
	held time.Duration // time in exclusive, read once the load stopped
}

// shared runs f, a query, when no job runs.
func (g *guard) shared(f func() error) error {
	if g.on {
		g.mu.RLock()
		defer g.mu.RUnlock()
	}
	return f()
}

// exclusive runs f, a job's life, when no query runs.
func (g *guard) exclusive(f func() error) error {
	if !g.on {
		return f()
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	start := time.Now()
	defer func() { g.held += time.Since(start) }()
	return f()
}

// workload is everything that runs against one daemon.
type workload struct {
	guard    guard
	t        *testing.T
	d        *daemon
	n        counts
	clients  []*monitor
	jobMon   *monitor
	withJobs bool
	jobs     *jobDriver
	nbd      *nbdWriter
	errs     errList
}

func newWorkload(t *testing.T, cfg config, d *daemon) *workload {
	w := &workload{t: t, d: d, nbd: newNBDWriter(d.nbd), guard: guard{on: cfg.guarded}, withJobs: cfg.jobs}
	for i := range cfg.clients {
		m, err := dial(d.monitorFor(i), fmt.Sprintf("client %d", i), &w.n, false)
		if err != nil {
			t.Fatal(err)
		}
		w.clients = append(w.clients, m)
	}
	m, err := dial(d.monitorFor(cfg.clients), "job driver", &w.n, true)
	if err != nil {
		t.Fatal(err)
	}
	w.jobMon = m
	if w.jobs, err = newJobDriver(t, m, d.dir, &w.guard); err != nil {
		t.Fatal(err)
	}
	return w
}

// run puts the load on the daemon for dur, sampling it at 20% of dur and
// at the end, each time with the load paused; the figures count only
// the time under load.
func (w *workload) run(dur time.Duration) *result {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	g := &gate{ctx: ctx}
	var wg sync.WaitGroup
	worker := func(f func() error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := f(); err != nil {
				w.errs.add(err)
				cancel()
			}
		}()
	}
	for i, m := range w.clients {
		worker(func() error { return clientLoop(ctx, m, i, g, &w.guard) })
	}
	if w.withJobs {
		worker(func() error { return w.jobs.loop(ctx, g) })
	}
	worker(func() error { return w.nbd.loop(ctx, g) })
	go watchdog(ctx, append([]*monitor{w.jobMon}, w.clients...), &w.errs)

	r := &result{clients: len(w.clients)}
	m := newMeter(w.d.pid(), &w.n)
	sleep(ctx, dur/5)
	r.first = w.pausedSample(g, m)
	m.start()
	g.resume()
	sleep(ctx, dur-dur/5)
	r.last = w.pausedSample(g, m)
	cancel()
	g.resume()
	wg.Wait()
	r.meter = *m
	r.jobCycles, r.jobs, r.nbdRuns, r.guardHeld = w.jobs.cycles, w.jobs.jobs, w.nbd.runs, w.guard.held
	fail(w.t, w.errs.list())
	return r
}

// pausedSample pauses the load and the meter and samples the daemon; the
// caller resumes them.
func (w *workload) pausedSample(g *gate, m *meter) sample {
	g.pause()
	m.stop()
	return takeSample(w.t, w.d)
}

// stop disconnects every client and the job driver.
func (w *workload) stop() {
	for _, m := range append(w.clients, w.jobMon) {
		m.close()
	}
}

// verify checks the images the daemon left once it has exited.
func (w *workload) verify(t *testing.T) {
	w.jobs.verify(t)
	w.nbd.verify(t, w.d.path("disk.qcow2"))
}

func sleep(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}
