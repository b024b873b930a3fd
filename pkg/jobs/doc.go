// Package jobs runs long operations on the block graph as QMP jobs: the
// state machine, the verbs each state accepts, the rate limit, on-error
// policies and the events (JOB_STATUS_CHANGE, BLOCK_JOB_*). It keeps what
// every job has (this file's Job and Runner) apart from what block jobs
// add (blockjob.go: the nodes they hold, io-status, BLOCK_JOB_* events)
// and from the copy loop that copying jobs share (copy.go). The jobs
// themselves live one per folder below (stream, ...), each a Body.
//
// # Lifecycle
//
//	created ─▶ running ⇄ paused
//	              │ ▲
//	              │ └──────┐
//	              ▼        │ (Ready: jobs that wait for job-complete)
//	            ready ⇄ standby
//	              │
//	              ▼
//	           waiting ─▶ pending ─▶ concluded ─▶ null
//	   (any of the above) ─▶ aborting ─▶ concluded ─▶ null
//
// Runner.Start runs in the QMP command that starts the job. It opens a
// graph change and calls the body's Setup (if any) inside it: Setup
// validates, freezes links, inserts filters and takes the job's nodes
// (Job.NewRoot, Job.Hold). A Setup error ends the command with nothing
// changed and no event. Then the job is "created", its speed checked
// (a negative one: "null" and the error, as qsd), the change committed
// and the job "running". The body's Run starts in its own goroutine, and
// Start returns only once Run reached its first Yield or the job has
// already ended: a job with nothing to do sends all its events before the
// command's reply, as in qsd.
//
// Run does the work. Between steps it calls Job.Yield, its only pause
// point: Yield sleeps for the rate limit, parks while the job is paused
// (after the body's Quiesce hook has let its requests in flight finish)
// and returns ErrCancelled once the job is cancelled hard. Run must not
// change the graph; it may read it (block status, sizes) only between
// two Yields, because a graph change drains the job first (see below).
//
// When Run returns nil, the job moves to waiting and pending; with
// auto-finalize off it stays pending (BLOCK_JOB_PENDING) until
// job-finalize or a cancel. Finalizing calls the body's hooks, each under
// the graph lock inside a graph change of its own:
//
//   - Prepare(tx) makes the job's graph change; it may fail, and then
//     the change is undone and the job aborts with that error.
//   - Commit() follows a committed Prepare; it must not fail.
//   - Abort(tx) undoes what the job did, when it failed or was cancelled
//     (Run returned an error, or Prepare failed).
//
// The jobs of a Group prepare inside one graph change, which is
// committed only when every Prepare succeeded; if one fails, the change
// is undone, so a body's Prepare must record through the Txn (OnUndo)
// whatever it changes outside the graph, and every job aborts.
//   - Clean(tx) always runs last, on both paths: it removes the job's
//     filters, unfreezes links and reopens nodes read-only again. After
//     it the runner detaches the job's roots, so the nodes it held are
//     released.
//
// Then comes BLOCK_JOB_COMPLETED (with "error" if the job failed) or
// BLOCK_JOB_CANCELLED, "concluded", and with auto-dismiss "null".
//
// # Verbs
//
// Each verb is accepted in the states of QEMU 7.2's table (state.go)
// and refused otherwise with qsd's message. Pause asks the job to stop
// at its next pause point; if Run is already in Yield (sleeping for the
// rate limit), the job moves to paused before the verb returns. Resume,
// and the end of a drain, move it back at once. Cancel (force, or on a
// body without a Canceler) makes the next Yield return ErrCancelled and
// waits for the job to end, so its events come before the reply, as in
// qsd; a body with a Canceler may take a soft cancel instead (mirror in
// READY completes without pivoting). Complete calls the body's Complete
// outside the job's lock. Finalize and a cancel of a pending job are
// carried out by the job's own goroutine, which is the only one that
// moves a job out of pending, so the two cannot race.
//
// # Drain
//
// A job's roots carry the job as their block.DrainHooks. A graph change
// that drains a node the job uses asks the job to pause (a "paused" event
// if it was running) and waits until it is parked at a pause point with
// nothing in flight; when the change ends the job goes on ("running").
// That is why Run must be able to reach Yield without the graph lock.
//
// # Block jobs
//
// A block job (Options.BlockJob) also has a rate limit (speed, in bytes
// per second, enforced by Yield on the runner's Clock over 100 ms slices
// like QEMU's), an on-error policy applied by Job.IOError (report,
// ignore, stop, enospc/auto: stop on ENOSPC), an io-status, and the
// BLOCK_JOB_* events. query-block-jobs lists only block jobs.
package jobs
