package jobs

// Options.StartDrained: qsd creates a job that a transaction starts
// (blockdev-backup runs as a one-action transaction) while the
// transaction keeps its nodes drained, so the job parks at its first
// pause point and the end of the drain resumes it, before the command's
// reply. The runner plays that drain around the job's first Yield.

// beginStartDrainLocked takes the drain's pause before Run starts.
func (j *Job) beginStartDrainLocked() {
	if j.opts.StartDrained {
		j.pauseLocked()
	}
}

// endStartDrain waits until the job is parked at its first pause point
// (or has stopped short of it) and lifts the pause.
func (j *Job) endStartDrain() {
	if !j.opts.StartDrained {
		return
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	for j.running && !j.parked {
		j.cond.Wait()
	}
	j.unpauseLocked()
}
