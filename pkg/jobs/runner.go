package jobs

import (
	"context"
	"fmt"
	"slices"
	"sync"

	"github.com/sirupsen/logrus"

	"github.com/blockd/blockd/pkg/block"
)

// Runner owns every job.
type Runner struct {
	emit  Emitter
	log   logrus.FieldLogger
	g     *block.Graph // for the jobs' graph steps
	clock block.Clock

	mu   sync.Mutex
	jobs []*Job // creation order; guarded by mu
	wg   sync.WaitGroup
}

// NewRunner returns a runner for jobs on graph g that emits events
// through emit; clock nil is the wall clock.
func NewRunner(g *block.Graph, emit Emitter, log logrus.FieldLogger, clock block.Clock) *Runner {
	if log == nil {
		l := logrus.New()
		l.SetLevel(logrus.PanicLevel)
		log = l
	}
	if clock == nil {
		clock = block.RealClock()
	}
	return &Runner{emit: emit, log: log, g: g, clock: clock}
}

// Find returns the job with id, or nil.
func (r *Runner) Find(id string) *Job {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, j := range r.jobs {
		if j.ID == id {
			return j
		}
	}
	return nil
}

// Jobs lists the jobs in creation order.
func (r *Runner) Jobs() []*Job {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.jobs)
}

func (r *Runner) remove(j *Job) {
	r.mu.Lock()
	r.jobs = slices.DeleteFunc(r.jobs, func(x *Job) bool { return x == j })
	r.mu.Unlock()
}

// Start creates a job and starts its body (see the package doc): Check
// inside a graph change, "created", the speed check, Setup, the change
// committed, "running", and the body's goroutine, whose first Yield (or
// end) Start waits for.
func (r *Runner) Start(ctx context.Context, id, typ string, body Body, opts Options) (*Job, error) {
	tx := r.g.Begin()
	defer tx.Abort()
	j, err := r.Prepare(ctx, tx, id, typ, body, opts)
	if err != nil {
		return nil, err
	}
	if err := tx.Commit(); err != nil {
		return nil, err
	}
	return j, nil
}

// Prepare creates a job inside the caller's graph change tx, as a
// transaction action does: Check, "created", the speed check and Setup
// run now; the job starts ("running", the body's goroutine) when tx
// commits, and goes (to "null") when tx is aborted. On error the job is
// gone already.
func (r *Runner) Prepare(ctx context.Context, tx *block.Txn, id, typ string, body Body, opts Options) (*Job, error) {
	j := newJob(r, id, typ, body, opts)
	if c, ok := body.(Checker); ok {
		if err := c.Check(ctx, tx, j); err != nil {
			return nil, err
		}
	}
	if !block.ValidID(id) {
		// compat(qsd-7.2): a block job without job-id has the device's
		// name, which is "" in qsd.
		return nil, fmt.Errorf("Invalid job ID '%s'", id)
	}
	r.mu.Lock()
	if slices.ContainsFunc(r.jobs, func(x *Job) bool { return x.ID == id }) {
		r.mu.Unlock()
		return nil, fmt.Errorf("Job ID '%s' already in use", id)
	}
	r.jobs = append(r.jobs, j)
	r.mu.Unlock()

	j.mu.Lock()
	j.moveLocked(Created)
	j.mu.Unlock()
	// Setup and the commit run without the job's lock: a drain in them
	// may reach the job's own roots.
	err := error(nil)
	if opts.Speed < 0 {
		err = errSpeed
	}
	if s, ok := body.(Setupper); ok && err == nil {
		err = s.Setup(ctx, tx, j)
	}
	if err != nil {
		r.abandon(j)
		return nil, err
	}
	if opts.Group != nil {
		opts.Group.add(j)
	}
	tx.OnUndo(func() { r.takeBack(j) })
	tx.OnStarted(func() { r.launch(j) })
	return j, nil
}

// abandon ends a job that was created but never started.
func (r *Runner) abandon(j *Job) {
	j.mu.Lock()
	if j.status == Null {
		j.mu.Unlock()
		return
	}
	j.roots = nil
	j.moveLocked(Null)
	j.mu.Unlock()
	r.remove(j)
}

// takeBack ends a created job whose transaction failed after it was
// made: qsd cancels it, so it passes through aborting and concluded.
func (r *Runner) takeBack(j *Job) {
	if g := j.opts.Group; g != nil {
		g.remove(j)
	}
	j.mu.Lock()
	j.roots = nil
	j.moveLocked(Aborting)
	j.moveLocked(Concluded)
	j.moveLocked(Null)
	j.mu.Unlock()
	r.remove(j)
}

// launch starts a created job's body once its graph change committed.
func (r *Runner) launch(j *Job) {
	j.mu.Lock()
	j.moveLocked(Running)
	j.running = true
	j.beginStartDrainLocked()
	j.mu.Unlock()
	r.wg.Add(1)
	go j.run()
	<-j.started
	j.endStartDrain()
}

// Close cancels every job that has not ended (pending ones included:
// their abort runs) and waits for their goroutines (daemon shutdown).
func (r *Runner) Close() {
	for _, j := range r.Jobs() {
		j.mu.Lock()
		if !j.endedLocked() && j.status != Aborting {
			j.requestCancelLocked(true)
		}
		j.mu.Unlock()
	}
	r.wg.Wait()
}
