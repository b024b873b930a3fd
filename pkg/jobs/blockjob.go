package jobs

import (
	"errors"
	"slices"
	"syscall"

	"github.com/blockd/blockd/pkg/block"
)

// OnError is BlockdevOnError: what a block job does when a request fails.
type OnError string

const (
	OnErrorReport OnError = "report" // end the job with the error (the default)
	OnErrorIgnore OnError = "ignore" // go on; the job still ends with the error
	OnErrorEnospc OnError = "enospc" // stop on ENOSPC, report anything else
	OnErrorStop   OnError = "stop"   // pause the job until the user resumes it
	OnErrorAuto   OnError = "auto"   // as enospc, for jobs
)

// EnumValues implements qmp.Enum.
func (OnError) EnumValues() []string { return []string{"report", "ignore", "enospc", "stop", "auto"} }

// Action is what a job does about one failed request (BLOCK_JOB_ERROR's
// "action").
type Action string

const (
	ActionReport Action = "report"
	ActionIgnore Action = "ignore"
	ActionStop   Action = "stop"
)

// IOStatus is a block job's io-status in query-block-jobs.
type IOStatus string

const (
	IOStatusOK      IOStatus = "ok"
	IOStatusFailed  IOStatus = "failed"
	IOStatusNoSpace IOStatus = "nospace"
)

func isNoSpace(err error) bool {
	return errors.Is(err, syscall.ENOSPC) || errors.Is(err, block.ErrNoSpace)
}

// IOError applies the job's on-error policy to a failed request and says
// what the body must do: ActionReport, end with err; ActionIgnore, go on
// and end with err; ActionStop, the job is paused (its next Yield parks
// it until the user resumes it) and the body retries the request then.
// read says whether a read or a write failed. A cancelled job always
// reports.
func (j *Job) IOError(err error, read bool) Action {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.cancelled && j.force {
		return ActionReport
	}
	action := ActionReport
	policy := j.opts.OnError
	if !read && j.opts.OnTargetError != "" {
		policy = j.opts.OnTargetError
	}
	switch policy {
	case OnErrorIgnore:
		action = ActionIgnore
	case OnErrorStop:
		action = ActionStop
	case OnErrorEnospc, OnErrorAuto:
		if isNoSpace(err) {
			action = ActionStop
		}
	}
	op := "write"
	if read {
		op = "read"
	}
	j.r.emit.Emit("BLOCK_JOB_ERROR", map[string]any{"device": j.ID, "operation": op, "action": string(action)})
	if action == ActionStop {
		if !j.userPaused {
			j.userPaused = true
			j.pauseLocked()
		}
		j.ioStatus = IOStatusFailed
		if isNoSpace(err) {
			j.ioStatus = IOStatusNoSpace
		}
	}
	return action
}

func (j *Job) blockEventLocked() map[string]any {
	return map[string]any{"device": j.ID, "len": j.total, "offset": j.progress, "speed": j.limit.speed, "type": j.Type}
}

func (j *Job) completedEventLocked() {
	if !j.opts.BlockJob {
		return
	}
	d := j.blockEventLocked()
	if j.err != nil {
		d["error"] = errorText(j.err)
	}
	j.r.emit.Emit("BLOCK_JOB_COMPLETED", d)
}

func (j *Job) cancelledEventLocked() {
	if j.opts.BlockJob {
		j.r.emit.Emit("BLOCK_JOB_CANCELLED", j.blockEventLocked())
	}
}

// BlockInfo is what query-block-jobs says beyond Info.
type BlockInfo struct {
	Busy, Paused, Ready       bool
	Speed                     int64
	AutoFinalize, AutoDismiss bool
	IOStatus                  IOStatus
}

// BlockInfo describes the job for query-block-jobs.
func (j *Job) BlockInfo() BlockInfo {
	j.mu.Lock()
	defer j.mu.Unlock()
	return BlockInfo{
		// A job is busy while its body works, not while it sleeps or
		// waits for a verb.
		Busy:         j.running && !j.inYield,
		Paused:       j.pauses > 0,
		Ready:        j.status == Ready || j.status == Standby,
		Speed:        j.limit.speed,
		AutoFinalize: j.opts.AutoFinalize,
		AutoDismiss:  j.opts.AutoDismiss,
		IOStatus:     j.ioStatus,
	}
}

// Describe implements block.Parent's naming for permission messages: the
// job is the user of the nodes it holds.
func (j *Job) describe() string { return j.Type + " job '" + j.ID + "'" }

// NewRoot attaches the job to n as a user that does I/O through an edge
// called name ("main node", "base"), taking perm and sharing shared,
// blocking every other operation on n, and taking part in drains through
// the job (see DrainHooks). Call it from Setup. The runner detaches it
// when the job ends, unless the body released it before (ReleaseRoot).
func (j *Job) NewRoot(tx *block.Txn, n *block.Node, name string, perm, shared block.Perm) (*block.Root, error) {
	r, err := tx.NewRoot(n, block.RootOptions{Name: name, Desc: j.describe(), Kind: "block-job", ID: j.ID,
		Perm: perm, Shared: shared, Hooks: (*drainHooks)(j)})
	if err != nil {
		return nil, err
	}
	tx.SetBlocker(r.Child(), j.blockerReason(), block.OpNone)
	j.roots = append(j.roots, r)
	return r, nil
}

// ReleaseRoot detaches one of the job's roots in the graph change tx,
// before the job ends (a commit lets go of its base before it relinks the
// chain); an abort of tx gives it back.
func (j *Job) ReleaseRoot(tx *block.Txn, r *block.Root) {
	j.mu.Lock()
	defer j.mu.Unlock()
	i := slices.Index(j.roots, r)
	if i < 0 {
		return
	}
	j.roots = slices.Delete(j.roots, i, i+1)
	tx.Detach(r)
	tx.OnUndo(func() {
		j.mu.Lock()
		j.roots = slices.Insert(j.roots, min(i, len(j.roots)), r) // where it was
		j.mu.Unlock()
	})
}

// Owns reports whether edge c is one of the job's own (a root's, or one
// its roots hold): a pivot moves everyone else's.
func (j *Job) Owns(c *block.Child) bool {
	j.mu.Lock()
	defer j.mu.Unlock()
	for _, r := range j.roots {
		if slices.Contains(r.Edges(), c) {
			return true
		}
	}
	return false
}

// Hold makes the job a user of n too ("active node", "intermediate
// node"): it takes perm, shares shared, and blocks every operation on n
// while the job exists. root is one of the job's roots.
func (j *Job) Hold(tx *block.Txn, root *block.Root, n *block.Node, name string, perm, shared block.Perm) error {
	c, err := tx.Hold(root, n, name, perm, shared)
	if err != nil {
		return err
	}
	tx.SetBlocker(c, j.blockerReason(), block.OpNone)
	return nil
}

// compat(qsd-7.2): "Node 'mid' is busy: block device is in use by block job: stream".
func (j *Job) blockerReason() string { return "block device is in use by block job: " + j.Type }

// drainHooks is the job seen as a drain participant by its roots: a drain
// pauses it at its next pause point (QEMU's child_job drain callbacks).
type drainHooks Job

func (h *drainHooks) DrainBegin() {
	j := (*Job)(h)
	j.mu.Lock()
	j.pauseLocked()
	j.mu.Unlock()
}

// DrainWait waits until the body is parked with nothing in flight, or
// is not running at all.
func (h *drainHooks) DrainWait() {
	j := (*Job)(h)
	j.mu.Lock()
	for j.running && !j.parked {
		j.cond.Wait()
	}
	j.mu.Unlock()
}

func (h *drainHooks) DrainEnd() {
	j := (*Job)(h)
	j.mu.Lock()
	j.unpauseLocked()
	j.mu.Unlock()
}
