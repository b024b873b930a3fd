// Package jobs runs long operations on the block graph as QMP jobs: the
// state machine, the verbs each state accepts, and the events
// (JOB_STATUS_CHANGE, BLOCK_JOB_*). A job's body runs in its own goroutine;
// graph changes happen only in its Finisher steps, under the graph lock.
package jobs

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/sirupsen/logrus"

	"github.com/blockd/blockd/pkg/block"
)

// Emitter publishes events; pkg/qmp implements it.
type Emitter interface{ Emit(name string, data any) }

// Body is the part of a job that differs between job types.
type Body interface {
	// Run does the work. Between chunks it calls j.Yield, which parks
	// while the job is paused and returns an error once it is cancelled.
	// Run must not change the graph.
	Run(ctx context.Context, j *Job) error
}

// Finisher is implemented by bodies that change the graph when they end.
// The runner calls Prepare inside a graph change it then commits (or
// aborts, when Prepare or the permission check fails); Commit follows a
// committed change and must not fail; Abort undoes or cleans up after an
// error, in a graph change of its own. None of them runs under the job's
// own lock, so they may take the graph lock and ask the job for its state.
type Finisher interface {
	Prepare(tx *block.Txn) error
	Commit()
	Abort(tx *block.Txn)
}

// Options are how a job was asked to behave.
type Options struct {
	AutoFinalize bool
	AutoDismiss  bool
	// BlockJob: the job is a block job (emits BLOCK_JOB_* events and shows
	// in query-block-jobs); create jobs are not.
	BlockJob bool
}

// ErrCancelled is what Yield returns once the job is cancelled.
var ErrCancelled = errors.New("job cancelled")

// Job is one running or finished job.
type Job struct {
	ID, Type string
	body     Body
	opts     Options
	r        *Runner

	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{}

	mu        sync.Mutex
	cond      sync.Cond
	status    Status // guarded by mu
	paused    bool   // job-pause asked the job to stop at its next Yield; guarded by mu
	cancelled bool   // guarded by mu
	force     bool   // guarded by mu
	err       error  // the first error; guarded by mu
	progress  int64  // guarded by mu
	total     int64  // guarded by mu
	speed     int64  // guarded by mu
	busy      bool   // guarded by mu
}

// Runner owns every job.
type Runner struct {
	emit Emitter
	log  logrus.FieldLogger
	g    *block.Graph // for the jobs' graph steps

	mu   sync.Mutex
	jobs []*Job // creation order; guarded by mu
	wg   sync.WaitGroup
}

// NewRunner returns a runner for jobs on graph g that emits events
// through emit.
func NewRunner(g *block.Graph, emit Emitter, log logrus.FieldLogger) *Runner {
	if log == nil {
		l := logrus.New()
		l.SetLevel(logrus.PanicLevel)
		log = l
	}
	return &Runner{emit: emit, log: log, g: g}
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
	return append([]*Job(nil), r.jobs...)
}

// Start creates a job and starts its body. It emits "created" and
// "running" before it returns, as qsd does before the command's reply.
func (r *Runner) Start(id, typ string, body Body, opts Options) (*Job, error) {
	r.mu.Lock()
	for _, j := range r.jobs {
		if j.ID == id {
			r.mu.Unlock()
			return nil, fmt.Errorf("Job ID '%s' already in use", id)
		}
	}
	j := &Job{ID: id, Type: typ, body: body, opts: opts, r: r, status: Undefined, done: make(chan struct{})}
	j.cond.L = &j.mu
	j.ctx, j.cancel = context.WithCancel(context.Background())
	r.jobs = append(r.jobs, j)
	r.mu.Unlock()

	j.mu.Lock()
	j.moveLocked(Created)
	j.moveLocked(Running)
	j.busy = true
	j.mu.Unlock()
	r.wg.Add(1)
	go j.run()
	return j, nil
}

// Close cancels every job and waits for their goroutines.
func (r *Runner) Close() {
	for _, j := range r.Jobs() {
		j.mu.Lock()
		if j.status != Concluded && j.status != Null {
			j.cancelled, j.force = true, true
			j.cancel()
			j.cond.Broadcast()
		}
		j.mu.Unlock()
	}
	r.wg.Wait()
}

// moveLocked moves j to s and emits JOB_STATUS_CHANGE. A move the state
// machine does not allow is a bug: it is logged loudly and not made.
func (j *Job) moveLocked(s Status) {
	if !canMove(j.status, s) {
		j.r.log.WithFields(logrus.Fields{"job": j.ID, "from": j.status, "to": s}).Error("jobs: internal error: illegal transition")
		return
	}
	j.status = s
	j.r.emit.Emit("JOB_STATUS_CHANGE", map[string]any{"status": string(s), "id": j.ID})
}

func (j *Job) run() {
	defer j.r.wg.Done()
	defer close(j.done)
	err := j.body.Run(j.ctx, j)
	j.mu.Lock()
	j.busy = false
	if err == nil && j.cancelled {
		err = ErrCancelled
	}
	if err != nil && j.err == nil && !errors.Is(err, ErrCancelled) {
		j.err = err
	}
	if err != nil {
		j.mu.Unlock()
		j.abort()
		return
	}
	j.moveLocked(Waiting)
	j.moveLocked(Pending)
	if !j.opts.AutoFinalize {
		if j.opts.BlockJob {
			j.r.emit.Emit("BLOCK_JOB_PENDING", map[string]any{"type": j.Type, "id": j.ID})
		}
		j.mu.Unlock()
		return
	}
	j.mu.Unlock()
	j.finalize()
}

// finalize runs the graph steps of a pending job and concludes it.
func (j *Job) finalize() {
	if fin, ok := j.body.(Finisher); ok {
		tx := j.r.g.Begin()
		err := fin.Prepare(tx)
		if err == nil {
			err = tx.Commit()
		} else {
			tx.Abort()
		}
		if err != nil {
			j.mu.Lock()
			j.err = err
			j.mu.Unlock()
			j.abort()
			return
		}
		fin.Commit()
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	j.completedEventLocked()
	j.concludeLocked()
}

// abort ends a job that failed or was cancelled.
func (j *Job) abort() {
	j.mu.Lock()
	j.moveLocked(Aborting)
	j.mu.Unlock()
	if fin, ok := j.body.(Finisher); ok {
		tx := j.r.g.Begin()
		fin.Abort(tx)
		if err := tx.Commit(); err != nil {
			j.r.log.WithError(err).WithField("job", j.ID).Error("jobs: undoing a job's graph changes")
		}
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.opts.BlockJob {
		if j.cancelled && j.err == nil {
			j.r.emit.Emit("BLOCK_JOB_CANCELLED", j.blockEventLocked())
		} else {
			j.completedEventLocked()
		}
	}
	j.concludeLocked()
}

func (j *Job) completedEventLocked() {
	if !j.opts.BlockJob {
		return
	}
	d := j.blockEventLocked()
	if j.err != nil {
		d["error"] = j.err.Error()
	}
	j.r.emit.Emit("BLOCK_JOB_COMPLETED", d)
}

func (j *Job) blockEventLocked() map[string]any {
	return map[string]any{"device": j.ID, "len": j.total, "offset": j.progress, "speed": j.speed, "type": j.Type}
}

func (j *Job) concludeLocked() {
	j.moveLocked(Concluded)
	if j.opts.AutoDismiss {
		j.dismissLocked()
	}
}

func (j *Job) dismissLocked() {
	j.moveLocked(Null)
	j.r.mu.Lock()
	for i, x := range j.r.jobs {
		if x == j {
			j.r.jobs = append(j.r.jobs[:i], j.r.jobs[i+1:]...)
			break
		}
	}
	j.r.mu.Unlock()
}

func (j *Job) verbErrorLocked(v Verb) error {
	return fmt.Errorf("Job '%s' in state '%s' cannot accept command verb '%s'", j.ID, j.status, v)
}

// Dismiss removes a concluded job.
func (j *Job) Dismiss() error {
	j.mu.Lock()
	defer j.mu.Unlock()
	if !accepts(VerbDismiss, j.status) {
		return j.verbErrorLocked(VerbDismiss)
	}
	j.dismissLocked()
	return nil
}

// Finalize runs the graph steps of a pending job (auto-finalize off).
func (j *Job) Finalize() error {
	j.mu.Lock()
	if !accepts(VerbFinalize, j.status) {
		defer j.mu.Unlock()
		return j.verbErrorLocked(VerbFinalize)
	}
	j.mu.Unlock()
	j.finalize()
	return nil
}

// Cancel asks the job to stop. A pending job is aborted at once.
func (j *Job) Cancel(force bool) error {
	j.mu.Lock()
	if !accepts(VerbCancel, j.status) {
		defer j.mu.Unlock()
		return j.verbErrorLocked(VerbCancel)
	}
	j.cancelled = true
	j.force = j.force || force
	if j.status == Pending {
		j.mu.Unlock()
		j.abort()
		return nil
	}
	j.cancel()
	j.cond.Broadcast()
	j.mu.Unlock()
	return nil
}

// Pause asks the job to stop at its next pause point (Yield); it shows
// as paused only once it has stopped there, as in QEMU.
func (j *Job) Pause() error {
	j.mu.Lock()
	defer j.mu.Unlock()
	if !accepts(VerbPause, j.status) {
		return j.verbErrorLocked(VerbPause)
	}
	if j.paused {
		return fmt.Errorf("Job is already paused")
	}
	j.paused = true
	return nil
}

// Resume lets a paused job go on.
func (j *Job) Resume() error {
	j.mu.Lock()
	defer j.mu.Unlock()
	if !j.paused {
		return fmt.Errorf("Can't resume a job that was not paused")
	}
	if !accepts(VerbResume, j.status) {
		return j.verbErrorLocked(VerbResume)
	}
	j.paused = false
	j.cond.Broadcast()
	return nil
}

// UserPaused reports whether job-pause is in effect.
func (j *Job) UserPaused() bool {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.paused
}

// SetSpeed changes the rate limit (bytes per second, 0 = none).
func (j *Job) SetSpeed(speed int64) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	if !accepts(VerbSetSpeed, j.status) {
		return j.verbErrorLocked(VerbSetSpeed)
	}
	if speed < 0 {
		return fmt.Errorf("Parameter 'speed' expects a non-negative value")
	}
	j.speed = speed
	j.cond.Broadcast()
	return nil
}

// Yield is the job body's only pause point: while job-pause is in
// effect the job moves to paused and waits here; it returns ErrCancelled
// once the job is cancelled.
func (j *Job) Yield(ctx context.Context) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.paused && !j.cancelled {
		j.moveLocked(Paused)
		j.busy = false
		for j.paused && !j.cancelled {
			j.cond.Wait()
		}
		j.moveLocked(Running)
		j.busy = true
	}
	if j.cancelled {
		return ErrCancelled
	}
	return nil
}

// SetProgress records how far the job got.
func (j *Job) SetProgress(done, total int64) {
	j.mu.Lock()
	j.progress, j.total = done, total
	j.mu.Unlock()
}

// Wait blocks until the job's body has returned.
func (j *Job) Wait() { <-j.done }

// Info is a query-jobs entry.
type Info struct {
	ID              string `json:"id"`
	Type            string `json:"type"`
	Status          string `json:"status"`
	CurrentProgress int64  `json:"current-progress"`
	TotalProgress   int64  `json:"total-progress"`
	Error           string `json:"error,omitempty"`
}

// BlockInfo is what query-block-jobs says beyond Info.
type BlockInfo struct {
	Busy, Paused              bool
	Speed                     int64
	AutoFinalize, AutoDismiss bool
}

// BlockInfo describes the job for query-block-jobs.
func (j *Job) BlockInfo() BlockInfo {
	j.mu.Lock()
	defer j.mu.Unlock()
	return BlockInfo{Busy: j.busy, Paused: j.paused, Speed: j.speed, AutoFinalize: j.opts.AutoFinalize, AutoDismiss: j.opts.AutoDismiss}
}

// Info describes the job for query-jobs.
func (j *Job) Info() Info {
	j.mu.Lock()
	defer j.mu.Unlock()
	i := Info{ID: j.ID, Type: j.Type, Status: string(j.status), CurrentProgress: j.progress, TotalProgress: j.total}
	if j.err != nil {
		i.Error = j.err.Error()
	} else if j.cancelled && (j.status == Aborting || j.status == Concluded) {
		i.Error = "Operation canceled"
	}
	return i
}

// Status is the job's current status.
func (j *Job) Status() Status {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.status
}

// IsBlockJob reports whether the job is a block job.
func (j *Job) IsBlockJob() bool { return j.opts.BlockJob }

// Completer is implemented by bodies that wait in "ready" for
// job-complete (mirror, active commit).
type Completer interface{ Complete() error }

// Complete asks a ready job to finish.
func (j *Job) Complete() error {
	j.mu.Lock()
	defer j.mu.Unlock()
	if !accepts(VerbComplete, j.status) {
		return j.verbErrorLocked(VerbComplete)
	}
	c, ok := j.body.(Completer)
	if !ok {
		return fmt.Errorf("The active block job '%s' cannot be completed", j.ID)
	}
	return c.Complete()
}
