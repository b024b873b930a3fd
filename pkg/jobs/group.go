package jobs

import (
	"slices"
	"sync"

	"github.com/blockd/blockd/pkg/block"
)

// Group is a set of jobs that succeed or fail together (a transaction's
// completion-mode "grouped", QEMU's job transaction): a job whose Run
// succeeded waits ("waiting") until every job of the group has. When all
// have, they go to pending together and finalize together, at once if
// none waits for job-finalize, else on the first job-finalize for any of
// them: every job's graph change is prepared first, and they conclude one
// after the other only when all could be made. If one fails or is
// cancelled instead,
// the others are cancelled hard and the group aborts: one goroutine
// aborts every job in turn, waiting for each to stop. As in QEMU, every
// step takes the jobs in the reverse of the order they were made (its
// transaction keeps them in a list it adds to at the head), so clients
// see qsd's order of events: every job pending before any completes, and
// one job's end after the other's.
type Group struct {
	mu          sync.Mutex
	cond        sync.Cond
	jobs        []*Job
	ran         map[*Job]error // jobs whose Run returned, and how
	done        int            // jobs whose Run succeeded
	aborting    bool           // one failed or was cancelled
	pending     bool           // all succeeded and are pending
	finalizeReq bool           // job-finalize named a job of the group
	finalizing  bool           // a goroutine finalizes the jobs
	finished    bool           // every job has ended
}

// NewGroup returns an empty group; Options.Group puts jobs in it.
func NewGroup() *Group {
	g := &Group{ran: map[*Job]error{}}
	g.cond.L = &g.mu
	return g
}

func (g *Group) add(j *Job) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.jobs = append(g.jobs, j)
}

// remove drops a job that was taken back before it started.
func (g *Group) remove(j *Job) {
	g.mu.Lock()
	defer g.mu.Unlock()
	for i, x := range g.jobs {
		if x == j {
			g.jobs = append(g.jobs[:i], g.jobs[i+1:]...)
			break
		}
	}
	g.cond.Broadcast()
}

// newestFirst is the group's jobs in QEMU's transaction order.
func (g *Group) newestFirst() []*Job {
	jobs := slices.Clone(g.jobs)
	slices.Reverse(jobs)
	return jobs
}

// ended is told, without its lock, by a job whose Run returned (err
// nil: it is waiting). A failure starts the group's abort; the last job
// to succeed moves them all to pending, and the goroutine that finds the
// group may finalize does it for every job. It returns once j has ended,
// whoever ended it.
func (g *Group) ended(j *Job, err error) {
	g.mu.Lock()
	g.ran[j] = err
	g.cond.Broadcast()
	if err != nil {
		g.mu.Unlock()
		g.abort(j)
		g.waitFinished()
		return
	}
	g.done++
	if !g.aborting && g.done == len(g.jobs) {
		jobs := g.newestFirst()
		g.mu.Unlock()
		for _, x := range jobs {
			x.mu.Lock()
			x.pendingLocked()
			x.mu.Unlock()
		}
		g.mu.Lock()
		g.pending = true
		g.cond.Broadcast()
	}
	for !g.finished {
		if g.pending && !g.aborting && !g.finalizing && (g.finalizeReq || !g.waitsLocked()) {
			g.finalizing = true
			jobs := g.newestFirst()
			g.mu.Unlock()
			g.finalizeAll(jobs)
			g.mu.Lock()
			g.finished = true
			g.cond.Broadcast()
			break
		}
		g.cond.Wait()
	}
	g.mu.Unlock()
}

// finalizeAll finalizes the jobs of a group that succeeded, as one: the
// graph changes of all are prepared in a single graph change, and only
// when every one could be made is it committed and does any job
// conclude. If one fails, nothing of them stays in the graph and every
// job aborts, that one with its error and the others as cancelled (a
// transaction is all or nothing, as QEMU's is).
func (g *Group) finalizeAll(jobs []*Job) {
	failed := jobs[0] // the job charged with the error: a failed commit's is the newest
	err := jobs[0].change(func(tx *block.Txn) error {
		for _, x := range jobs {
			if err := x.prepare(tx); err != nil {
				failed = x
				return err
			}
		}
		return nil
	})
	for _, x := range jobs {
		switch {
		case err == nil:
			x.commit()
		case x == failed:
			x.abortWith(err)
		default:
			x.abortWith(nil)
		}
	}
}

// abort aborts the group because first failed or was cancelled, unless
// it is aborting or finalizing already: the other jobs are cancelled
// hard, then each, newest first, is waited for and aborted (with its own
// error if it failed, else as cancelled). Called without any job's lock;
// the caller waits for the end with waitFinished (the abort may be
// another goroutine's).
func (g *Group) abort(first *Job) {
	g.mu.Lock()
	if g.aborting || g.finalizing {
		g.mu.Unlock()
		return
	}
	g.aborting = true
	jobs := g.newestFirst()
	g.cond.Broadcast()
	g.mu.Unlock()
	for _, x := range jobs {
		if x == first {
			continue
		}
		x.mu.Lock()
		if !x.endedLocked() {
			x.requestCancelLocked(true)
		}
		x.mu.Unlock()
	}
	for _, x := range jobs {
		g.mu.Lock()
		err, ok := g.ran[x]
		for !ok {
			g.cond.Wait()
			err, ok = g.ran[x]
		}
		g.mu.Unlock()
		x.abortWith(err)
	}
	g.mu.Lock()
	g.finished = true
	g.cond.Broadcast()
	g.mu.Unlock()
}

func (g *Group) waitFinished() {
	g.mu.Lock()
	defer g.mu.Unlock()
	for !g.finished {
		g.cond.Wait()
	}
}

// waitsLocked reports whether a job of the group waits for job-finalize.
func (g *Group) waitsLocked() bool {
	return slices.ContainsFunc(g.jobs, func(x *Job) bool { return !x.opts.AutoFinalize })
}

// finalize is job-finalize for a job of the group, called without the
// job's lock: every job of the group finalizes, and it returns when all
// have ended, so their events come before the reply (as in qsd).
func (g *Group) finalize() {
	g.mu.Lock()
	g.finalizeReq = true
	g.cond.Broadcast()
	g.mu.Unlock()
	g.waitFinished()
}

// cancel is job-cancel for a job of the group that has run (waiting or
// pending), called without the job's lock: the group aborts, as QEMU
// aborts the transaction, and it returns when every job has ended.
func (g *Group) cancel(j *Job) {
	g.abort(j)
	g.waitFinished()
}
