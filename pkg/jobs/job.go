package jobs

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/blockd/blockd/pkg/block"
)

// Emitter publishes events; pkg/qmp implements it.
type Emitter interface{ Emit(name string, data any) }

// Body is the part of a job that differs between job types.
type Body interface {
	// Run does the work (see the package doc): it calls j.Yield between
	// steps and must not change the graph.
	Run(ctx context.Context, j *Job) error
}

// Checker is implemented by bodies that validate and change the graph
// before the job exists: Check runs inside the graph change Runner.Start
// opens, before "created"; an error ends the command with no event and
// nothing changed.
type Checker interface {
	Check(ctx context.Context, tx *block.Txn, j *Job) error
}

// Setupper is implemented by bodies that change the graph as the job
// starts: Setup runs in the same graph change after "created" (and after
// Check); an error ends the job at once ("null") and undoes the change.
// Which steps go where follows qsd's order, so that a client sees the
// same events for the same failure.
type Setupper interface {
	Setup(ctx context.Context, tx *block.Txn, j *Job) error
}

// Finisher is implemented by bodies that change the graph when they end.
// Each hook runs under the graph lock, in a graph change of its own that
// the runner commits; see the package doc for when each is called.
type Finisher interface {
	Prepare(ctx context.Context, tx *block.Txn) error
	Commit()
	Abort(ctx context.Context, tx *block.Txn)
}

// Cleaner is implemented by bodies with something to undo however the
// job ended; Clean runs last, after Commit or Abort.
type Cleaner interface {
	Clean(ctx context.Context, tx *block.Txn)
}

// Completer is implemented by bodies that wait in "ready" for
// job-complete (mirror, active commit). Complete is called without the
// job's lock held.
type Completer interface{ Complete() error }

// Canceler is implemented by bodies that can be cancelled softly: Cancel
// is told whether the user forced the cancel and answers whether the job
// must stop at once (hard). A soft cancel leaves it to the body to notice
// (Job.CancelRequested) and finish on its own terms.
type Canceler interface{ Cancel(force bool) (hard bool) }

// Options are how a job was asked to behave.
type Options struct {
	AutoFinalize bool
	AutoDismiss  bool
	// BlockJob: the job is a block job (emits BLOCK_JOB_* events, has a
	// rate limit and an on-error policy, shows in query-block-jobs);
	// create jobs are not.
	BlockJob bool
	Speed    int64 // bytes per second; 0: unlimited
	OnError  OnError
	// OnTargetError, if set, is the policy for failed writes (a mirror's
	// on-target-error); OnError then covers reads only.
	OnTargetError OnError
	// Group, if set, makes the job succeed or fail with the other jobs
	// of the group (a transaction's completion-mode "grouped").
	Group *Group
	// StartDrained starts the job inside a drained section, as qsd starts
	// a job that a transaction creates (blockdev-backup): it is paused at
	// its first pause point and resumed before Start returns, so that
	// "paused" and "running" follow "created" and "running" (start.go).
	StartDrained bool
}

// ErrCancelled is what Yield returns once the job is cancelled.
var ErrCancelled = errors.New("Operation canceled")

// maxVerbWait bounds how long a verb waits for the job to act on it
// before the reply goes out anyway (a job stuck in I/O must not hang the
// monitor); its events then follow the reply.
const maxVerbWait = 10 * time.Second

// Job is one running or finished job.
type Job struct {
	ID, Type string
	body     Body
	opts     Options
	r        *Runner

	ctx     context.Context // for the body; never cancelled: a cancel stops the job at Yield, not its I/O midway
	done    chan struct{}   // closed when the job's goroutine has ended
	started chan struct{}   // closed at Run's first Yield, or when the job stopped short of it

	// mu guards every field below. Events are emitted with it held, so
	// that they leave in the order the state changed.
	mu          sync.Mutex
	cond        sync.Cond
	status      Status
	pauses      int  // pause requests in force: user, drain, error
	userPaused  bool // one of them is the user's (or on-error stop's)
	running     bool // Run has been started and has not returned
	inYield     bool // Run is inside Yield (QEMU's !busy)
	parked      bool // ... and parked at a pause point, quiesced
	cancelled   bool // a cancel was asked for
	force       bool // ... and it is hard
	aborted     bool // the job ended through abort
	finalizeReq bool // job-finalize was asked for
	kicks       int  // verbs the body must look at (complete, a soft cancel)
	startedDone bool // started is closed
	err         error
	progress    int64
	total       int64
	limit       rateLimit
	ioStatus    IOStatus
	quiesce     func()
	roots       []*block.Root
}

func newJob(r *Runner, id, typ string, body Body, opts Options) *Job {
	j := &Job{ID: id, Type: typ, body: body, opts: opts, r: r, status: Undefined,
		done: make(chan struct{}), started: make(chan struct{}), ioStatus: IOStatusOK}
	j.cond.L = &j.mu
	j.ctx = context.Background()
	j.limit.setSpeed(opts.Speed)
	return j
}

// moveLocked moves j to s and emits JOB_STATUS_CHANGE. A move the state
// machine does not allow is a bug: it is logged loudly and not made.
func (j *Job) moveLocked(s Status) {
	if !canMove(j.status, s) {
		if invariants {
			panic(fmt.Sprintf("jobs: job %s: illegal transition %s -> %s", j.ID, j.status, s))
		}
		j.r.log.WithFields(logrus.Fields{"job": j.ID, "from": j.status, "to": s}).Error("jobs: internal error: illegal transition")
		return
	}
	j.status = s
	j.r.emit.Emit("JOB_STATUS_CHANGE", map[string]any{"status": string(s), "id": j.ID})
	j.cond.Broadcast()
}

func (j *Job) signalStartedLocked() {
	if !j.startedDone {
		j.startedDone = true
		close(j.started)
	}
}

// waitLocked waits, with j.mu held, until ok holds or maxVerbWait has
// passed on the runner's clock.
func (j *Job) waitLocked(ok func() bool) {
	if ok() {
		return
	}
	expired := false
	t := j.r.clock.AfterFunc(maxVerbWait, func() {
		j.mu.Lock()
		expired = true
		j.cond.Broadcast()
		j.mu.Unlock()
	})
	defer t.Stop()
	for !ok() && !expired {
		j.cond.Wait()
	}
}

func (j *Job) endedLocked() bool { return j.status == Concluded || j.status == Null }

// run is the job's goroutine: the body, then finalizing or aborting.
func (j *Job) run() {
	defer j.r.wg.Done()
	defer close(j.done)
	err := j.body.Run(j.ctx, j)
	j.mu.Lock()
	j.running = false
	j.quiesce = nil
	j.cond.Broadcast()
	if err == nil && j.cancelled && j.force {
		err = ErrCancelled
	}
	if g := j.opts.Group; g != nil {
		// The group takes it from here: pending and finalizing with
		// the rest, or aborting with them. A job that stopped shows
		// aborting at once, as in QEMU, though the group may end
		// others first.
		if err == nil {
			j.moveLocked(Waiting)
			j.signalStartedLocked()
		} else {
			j.moveLocked(Aborting)
		}
		j.mu.Unlock()
		g.ended(j, err)
		return
	}
	if err != nil {
		j.failLocked(err)
		j.mu.Unlock()
		j.abort()
		return
	}
	j.moveLocked(Waiting)
	j.pendingLocked()
	if j.opts.AutoFinalize && j.cancelled && j.force {
		// Cancelled between the end of Run and finalizing: still aborts.
		j.mu.Unlock()
		j.abort()
		return
	}
	if !j.opts.AutoFinalize {
		j.signalStartedLocked()
		for !j.finalizeReq && !j.cancelled {
			j.cond.Wait()
		}
		if j.cancelled {
			j.failLocked(ErrCancelled)
			j.mu.Unlock()
			j.abort()
			return
		}
	}
	j.mu.Unlock()
	j.finalize()
}

// failLocked records why the job ends without success: the first error
// counts; a cancel leaves no error of its own in the events.
func (j *Job) failLocked(err error) {
	if j.err == nil && !errors.Is(err, ErrCancelled) {
		j.err = err
	}
}

// change runs fn inside a graph change and commits it.
func (j *Job) change(fn func(tx *block.Txn) error) error {
	tx := j.r.g.Begin()
	if err := fn(tx); err != nil {
		tx.Abort()
		return err
	}
	return tx.Commit()
}

// finalize makes the graph change of a job that succeeded and concludes
// it; if the change fails, the job aborts instead.
func (j *Job) finalize() {
	if err := j.change(j.prepare); err != nil {
		j.mu.Lock()
		j.failLocked(err)
		j.mu.Unlock()
		j.abort()
		return
	}
	j.commit()
}

// prepare makes the graph change of a job that succeeded, inside tx.
func (j *Job) prepare(tx *block.Txn) error {
	if fin, ok := j.body.(Finisher); ok {
		return fin.Prepare(j.ctx, tx)
	}
	return nil
}

// commit concludes a job whose prepared graph change was committed.
func (j *Job) commit() {
	if fin, ok := j.body.(Finisher); ok {
		fin.Commit()
	}
	j.clean()
	j.mu.Lock()
	defer j.mu.Unlock()
	j.completedEventLocked()
	j.concludeLocked()
}

// pendingLocked moves the job to pending; one that waits for
// job-finalize says so with BLOCK_JOB_PENDING.
func (j *Job) pendingLocked() {
	j.moveLocked(Pending)
	if !j.opts.AutoFinalize && j.opts.BlockJob {
		j.r.emit.Emit("BLOCK_JOB_PENDING", map[string]any{"type": j.Type, "id": j.ID})
	}
}

// abortWith aborts a job of a group that is aborting, whose Run ended
// with err: with that error if it failed, else (it succeeded, or was
// cancelled) as cancelled.
func (j *Job) abortWith(err error) {
	j.mu.Lock()
	if err == nil || errors.Is(err, ErrCancelled) {
		j.cancelled, j.force = true, true
	} else {
		j.failLocked(err)
	}
	j.mu.Unlock()
	j.abort()
}

// abort ends a job that failed or was cancelled.
func (j *Job) abort() {
	j.mu.Lock()
	j.aborted = true
	if j.status != Aborting {
		j.moveLocked(Aborting)
	}
	j.mu.Unlock()
	if fin, ok := j.body.(Finisher); ok {
		if err := j.change(func(tx *block.Txn) error { fin.Abort(j.ctx, tx); return nil }); err != nil {
			j.r.log.WithError(err).WithField("job", j.ID).Error("jobs: undoing a job's graph changes")
		}
	}
	j.clean()
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.cancelled && j.force && j.err == nil {
		j.cancelledEventLocked()
	} else {
		j.completedEventLocked()
	}
	j.concludeLocked()
}

// clean runs the body's Clean and releases the nodes the job held.
func (j *Job) clean() {
	c, _ := j.body.(Cleaner)
	j.mu.Lock()
	roots := j.roots
	j.roots = nil
	j.mu.Unlock()
	if c == nil && len(roots) == 0 {
		return
	}
	err := j.change(func(tx *block.Txn) error {
		if c != nil {
			c.Clean(j.ctx, tx)
		}
		for _, r := range roots {
			tx.Detach(r)
		}
		return nil
	})
	if err != nil {
		j.r.log.WithError(err).WithField("job", j.ID).Error("jobs: cleaning up after a job")
	}
}

func (j *Job) concludeLocked() {
	j.moveLocked(Concluded)
	if j.opts.AutoDismiss {
		j.dismissLocked()
	}
	j.signalStartedLocked()
}

func (j *Job) dismissLocked() {
	j.moveLocked(Null)
	j.r.remove(j)
}

func (j *Job) verbErrorLocked(v Verb) error {
	// compat(qsd-7.2)
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

// Finalize asks a pending job (auto-finalize off) to make its graph
// change, and waits until it has concluded.
func (j *Job) Finalize() error {
	j.mu.Lock()
	defer j.mu.Unlock()
	if !accepts(VerbFinalize, j.status) {
		return j.verbErrorLocked(VerbFinalize)
	}
	j.finalizeReq = true
	j.cond.Broadcast()
	if g := j.opts.Group; g != nil {
		j.mu.Unlock()
		g.finalize()
		j.mu.Lock()
	}
	j.waitLocked(j.endedLocked)
	return nil
}

// Cancel asks the job to stop. A user pause is lifted first (the job
// shows "running" again, as in qsd). A hard cancel (force, or a body
// that has no soft one) ends the job; Cancel waits for that, so the
// job's events come before the reply.
func (j *Job) Cancel(force bool) error {
	j.mu.Lock()
	if !accepts(VerbCancel, j.status) {
		defer j.mu.Unlock()
		return j.verbErrorLocked(VerbCancel)
	}
	hard := true
	if c, ok := j.body.(Canceler); ok && j.running {
		j.mu.Unlock()
		hard = c.Cancel(force)
		j.mu.Lock()
	}
	j.requestCancelLocked(hard)
	if g := j.opts.Group; g != nil && (j.status == Waiting || j.status == Pending) {
		// Waiting or pending: the job is the group's now, and its
		// cancel aborts the group (QEMU aborts the transaction).
		j.mu.Unlock()
		g.cancel(j)
		j.mu.Lock()
	}
	j.waitLocked(j.endedLocked)
	j.mu.Unlock()
	return nil
}

func (j *Job) requestCancelLocked(hard bool) {
	if j.userPaused {
		j.userPaused = false
		j.ioStatus = IOStatusOK
		j.unpauseLocked()
	}
	j.cancelled = true
	j.force = j.force || hard
	j.kicks++
	j.cond.Broadcast()
}

// CancelRequested reports whether a cancel (soft or hard) was asked for.
func (j *Job) CancelRequested() bool {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.cancelled
}

// Pause asks the job to stop at its next pause point. If Run is waiting in
// Yield the job is paused before Pause returns; if it is busy with I/O it
// pauses when that is done, as in QEMU.
func (j *Job) Pause() error {
	j.mu.Lock()
	defer j.mu.Unlock()
	if !accepts(VerbPause, j.status) {
		return j.verbErrorLocked(VerbPause)
	}
	if j.userPaused {
		return errors.New("Job is already paused")
	}
	j.userPaused = true
	j.pauseLocked()
	j.waitLocked(func() bool { return !j.inYield || j.parked || !j.running })
	return nil
}

// Resume lets a paused job go on; it shows "running" (or "ready") again
// before Resume returns.
func (j *Job) Resume() error {
	j.mu.Lock()
	defer j.mu.Unlock()
	if !j.userPaused {
		return errors.New("Can't resume a job that was not paused")
	}
	if !accepts(VerbResume, j.status) {
		return j.verbErrorLocked(VerbResume)
	}
	j.userPaused = false
	j.ioStatus = IOStatusOK
	j.unpauseLocked()
	return nil
}

func (j *Job) pauseLocked() {
	j.pauses++
	j.cond.Broadcast()
}

// unpauseLocked drops one pause request; the last one moves a parked job
// back at once, so that its event comes before the verb's reply.
func (j *Job) unpauseLocked() {
	j.pauses--
	if j.pauses == 0 && j.parked {
		j.parked = false
		switch j.status {
		case Paused:
			j.moveLocked(Running)
		case Standby:
			j.moveLocked(Ready)
		}
	}
	j.cond.Broadcast()
}

// UserPaused reports whether job-pause (or an on-error stop) is in effect.
func (j *Job) UserPaused() bool {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.userPaused
}

// SetSpeed changes the rate limit (bytes per second, 0 = none); a
// sleeping job recomputes its wait at once.
func (j *Job) SetSpeed(speed int64) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	if !accepts(VerbSetSpeed, j.status) {
		return j.verbErrorLocked(VerbSetSpeed)
	}
	if speed < 0 {
		return errSpeed
	}
	j.limit.setSpeed(speed)
	j.cond.Broadcast()
	return nil
}

// compat(qsd-7.2)
var errSpeed = errors.New("Parameter 'speed' expects a non-negative value")

// Complete asks a ready job to finish.
func (j *Job) Complete() error {
	j.mu.Lock()
	if !accepts(VerbComplete, j.status) {
		defer j.mu.Unlock()
		return j.verbErrorLocked(VerbComplete)
	}
	c, ok := j.body.(Completer)
	if !ok || j.cancelled {
		defer j.mu.Unlock()
		return fmt.Errorf("The active block job '%s' cannot be completed", j.ID)
	}
	j.mu.Unlock()
	if err := c.Complete(); err != nil {
		return err
	}
	j.mu.Lock()
	j.kicks++ // a sleeping body wakes up to notice
	j.cond.Broadcast()
	j.mu.Unlock()
	return nil
}

// SetQuiesce sets what Yield calls before it parks the job: the body's
// way to let its requests in flight finish (nil: nothing to wait for).
func (j *Job) SetQuiesce(fn func()) {
	j.mu.Lock()
	j.quiesce = fn
	j.mu.Unlock()
}

// Yield is the body's pause point: it sleeps for the rate limit, parks
// while the job is paused, and returns ErrCancelled once the job is
// cancelled hard. A job-complete or a soft cancel ends a sleep early, so
// that the body can act on it (CancelRequested). See the package doc.
func (j *Job) Yield(ctx context.Context) error { return j.yield(ctx, 0) }

// Sleep is Yield that also waits at least d on the runner's clock (a
// mirror with nothing to copy polls for new writes so), unless a verb
// wakes the job first.
func (j *Job) Sleep(ctx context.Context, d time.Duration) error { return j.yield(ctx, d) }

func (j *Job) yield(ctx context.Context, least time.Duration) error {
	until := j.r.clock.Now().Add(least)
	j.mu.Lock()
	defer j.mu.Unlock()
	j.signalStartedLocked()
	j.inYield = true
	j.cond.Broadcast()
	defer func() {
		j.inYield = false
		j.parked = false
	}()
	kicks := j.kicks
	for {
		if j.cancelled && j.force {
			return ErrCancelled
		}
		if j.kicks != kicks {
			return nil // job-complete or a soft cancel: the body decides
		}
		if j.pauses > 0 {
			j.parkLocked()
			continue
		}
		now := j.r.clock.Now()
		d := max(j.limit.delay(now, 0), until.Sub(now))
		if d <= 0 {
			return nil
		}
		j.sleepLocked(d)
	}
}

// parkLocked waits while the job is paused: first for the body's requests
// in flight (Quiesce), then parked, until the pause is lifted or the job
// is cancelled hard.
func (j *Job) parkLocked() {
	if q := j.quiesce; q != nil {
		j.mu.Unlock()
		q()
		j.mu.Lock()
		if j.pauses == 0 || j.cancelled && j.force {
			return
		}
	}
	for j.pauses > 0 && !(j.cancelled && j.force) {
		// Parked anew each time round: a resume clears the flag and moves
		// the job back at once, and a pause (a drain) may come before this
		// goroutine runs again; the drain waits for the flag.
		if !j.parked {
			j.parked = true
			switch j.status {
			case Running:
				j.moveLocked(Paused)
			case Ready:
				j.moveLocked(Standby)
			}
			j.cond.Broadcast()
		}
		j.cond.Wait()
	}
	// The last resume moved the job back already; a cancel did not.
	if j.parked {
		j.parked = false
		switch j.status {
		case Paused:
			j.moveLocked(Running)
		case Standby:
			j.moveLocked(Ready)
		}
	}
}

// sleepLocked waits for d on the runner's clock, or until something
// wakes the job (a verb, a drain).
// Any wake-up makes Yield recompute the delay, so a speed change or a
// verb takes effect at once.
func (j *Job) sleepLocked(d time.Duration) {
	t := j.r.clock.AfterFunc(d, func() {
		j.mu.Lock()
		j.cond.Broadcast()
		j.mu.Unlock()
	})
	j.cond.Wait()
	t.Stop()
}

// Ready moves a running job to ready (a mirror in sync); block jobs emit
// BLOCK_JOB_READY.
func (j *Job) Ready() {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.status != Running {
		return
	}
	j.moveLocked(Ready)
	if j.opts.BlockJob {
		j.r.emit.Emit("BLOCK_JOB_READY", j.blockEventLocked())
	}
}

// SetTotal sets the job's total progress (query-jobs' total-progress,
// the BLOCK_JOB_* "len").
func (j *Job) SetTotal(total int64) {
	j.mu.Lock()
	j.total = total
	j.mu.Unlock()
}

// AddProgress records n more bytes (or units) done.
func (j *Job) AddProgress(n int64) {
	j.mu.Lock()
	j.progress += n
	j.mu.Unlock()
}

// SetRemaining sets the total to what is done plus rem (QEMU's
// job_progress_set_remaining): a mirror's work grows as the source is
// written.
func (j *Job) SetRemaining(rem int64) {
	j.mu.Lock()
	j.total = j.progress + rem
	j.mu.Unlock()
}

// SetProgress records how far the job got.
func (j *Job) SetProgress(done, total int64) {
	j.mu.Lock()
	j.progress, j.total = done, total
	j.mu.Unlock()
}

// Processed accounts n bytes against the rate limit; the next Yield
// waits as long as the limit requires.
func (j *Job) Processed(n int64) {
	j.mu.Lock()
	j.limit.delay(j.r.clock.Now(), n)
	j.mu.Unlock()
}

// Wait blocks until the job's goroutine has ended.
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

// Info describes the job for query-jobs.
func (j *Job) Info() Info {
	j.mu.Lock()
	defer j.mu.Unlock()
	return Info{ID: j.ID, Type: j.Type, Status: string(j.status), CurrentProgress: j.progress, TotalProgress: j.total, Error: j.errorTextLocked()}
}

// errorTextLocked is the "error" member of queries: the job's error, or
// qsd's text for a job that was cancelled.
func (j *Job) errorTextLocked() string {
	switch {
	case j.err != nil:
		return errorText(j.err)
	case j.aborted && j.cancelled && j.force:
		return ErrCancelled.Error()
	}
	return ""
}

// errorText is how a job's error reads in events and queries: an I/O
// error as strerror's sentence ("Input/output error"), as QEMU reports
// it; anything else its own message.
func errorText(err error) string { return block.Strerror(err) }

// Status is the job's current status.
func (j *Job) Status() Status {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.status
}

// IsBlockJob reports whether the job is a block job.
func (j *Job) IsBlockJob() bool { return j.opts.BlockJob }

// Err is the error the job ended with, if any.
func (j *Job) Err() error {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.err
}
