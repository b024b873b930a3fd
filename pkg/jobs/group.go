package jobs

import "sync"

// Group is a set of jobs that succeed or fail together (a transaction's
// completion-mode "grouped", QEMU's job transaction): a job whose Run
// succeeded waits ("waiting") until every job of the group has; if any
// fails or is cancelled, the others are cancelled and every job of the
// group aborts. Only then do the jobs go on to pending and finalize,
// each on its own.
type Group struct {
	mu       sync.Mutex
	cond     sync.Cond
	jobs     []*Job
	done     int  // jobs whose Run succeeded
	aborting bool // one failed: the rest are cancelled
}

// NewGroup returns an empty group; Options.Group puts jobs in it.
func NewGroup() *Group {
	g := &Group{}
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

// succeeded is told by a job whose Run succeeded; it waits for the rest
// of the group and reports whether the job may finalize (false: another
// job failed, and this one must abort).
func (g *Group) succeeded() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.done++
	g.cond.Broadcast()
	for !g.aborting && g.done < len(g.jobs) {
		g.cond.Wait()
	}
	return !g.aborting
}

// failed is told by a job whose Run failed or was cancelled: the group
// aborts and every other job of it is cancelled hard (the ones waiting
// in succeeded wake up to abort).
func (g *Group) failed(j *Job) {
	g.mu.Lock()
	if g.aborting {
		g.mu.Unlock()
		return
	}
	g.aborting = true
	others := make([]*Job, 0, len(g.jobs))
	for _, x := range g.jobs {
		if x != j {
			others = append(others, x)
		}
	}
	g.cond.Broadcast()
	g.mu.Unlock()
	for _, x := range others {
		x.mu.Lock()
		if !x.endedLocked() {
			x.requestCancelLocked(true)
		}
		x.mu.Unlock()
	}
}
