package commit

import (
	"context"
	"encoding/json"

	"github.com/blockd/blockd/pkg/block"
	"github.com/blockd/blockd/pkg/jobs"
	"github.com/blockd/blockd/pkg/jobs/mirror"
)

// granularity of an active commit's dirty bitmap: QEMU's default for a
// mirror whose target has no cluster size of its own to suggest.
const granularity = 64 << 10

// Active is the body of an active commit: a mirror of top into base
// (the mirror engine), READY once base holds everything above it, and on
// job-complete every user of top moves to base. A cancel before that (or
// a soft one in READY) leaves top as it was.
type Active struct {
	a Args
	t target

	// Set by Setup; read by Run and by the graph steps.
	job       *jobs.Job
	filter    *block.Node // mirror_top, above top
	overlay   *block.Node // the lowest image above base
	frozen    []*block.Child
	engine    *mirror.Engine
	baseWasRO bool
	pivoted   bool
}

// Setup implements jobs.Setupper.
func (c *Active) Setup(ctx context.Context, tx *block.Txn, j *jobs.Job) error {
	top, base := c.t.top, c.t.base
	const cr, w, wu, resize = block.PermConsistentRead, block.PermWrite, block.PermWriteUnchanged, block.PermResize
	c.job = j
	if base.ReadOnly() {
		if err := tx.ReopenReadOnly(ctx, base, false); err != nil {
			return err
		}
		c.baseWasRO = true
	}
	opts := map[string]any{"driver": "mirror_top", "backing": top.Name(), "x-commit": true}
	if c.a.FilterNodeName != nil {
		opts["node-name"] = *c.a.FilterNodeName
	}
	raw, err := json.Marshal(opts)
	if err != nil {
		return err
	}
	if c.filter, err = tx.InsertFilter(ctx, top, raw, c.a.FilterNodeName == nil); err != nil {
		return err
	}
	source, err := j.NewRoot(tx, c.filter, "main node", cr, cr|wu|w)
	if err != nil {
		return err
	}
	// The images below top leave the chain on complete: nobody else may
	// write them, nor read them consistently but through filters of base.
	c.overlay = block.FindOverlay(top, base)
	filteredBase := block.COWChild(c.overlay).Node()
	shared := wu | w
	for n := next(top); n != base; n = next(n) {
		if n == filteredBase {
			shared |= cr
		}
		if err := j.Hold(tx, source, n, "intermediate node", 0, shared); err != nil {
			return err
		}
	}
	if c.frozen, err = tx.FreezeChain(c.filter, base); err != nil {
		return err
	}
	targetPerm := w
	if base.Size() < top.Size() {
		targetPerm |= resize
	}
	target, err := j.NewRoot(tx, base, "target", targetPerm, wu|cr|w)
	if err != nil {
		return err
	}
	bm, err := top.AddDirtyBitmap("", granularity)
	if err != nil {
		return err
	}
	tx.OnUndo(func() { top.RemoveDirtyBitmap(bm) })
	c.engine = &mirror.Engine{Job: j, Source: source, Target: target, Bitmap: bm,
		Chunk: chunkSize, Parallel: parallel, Unmap: true}
	return nil
}

// Run implements jobs.Body: everything allocated from top down to base's
// overlay is copied, then what is written.
func (c *Active) Run(ctx context.Context, j *jobs.Job) error {
	e := c.engine
	if size := e.Source.Size(); e.Target.Size() < size {
		if err := e.Target.Truncate(ctx, size, false); err != nil {
			return err
		}
	}
	err := e.Init(ctx, func(ctx context.Context, off, max int64) (int64, bool, error) {
		alloc, n, err := block.IsAllocatedAbove(ctx, c.t.top, c.overlay, true, off, max)
		return n, alloc, err
	})
	if err != nil {
		return err
	}
	return e.Run(ctx)
}

// Complete implements jobs.Completer.
func (c *Active) Complete() error {
	c.engine.Complete()
	return nil
}

// Cancel implements jobs.Canceler.
func (c *Active) Cancel(force bool) bool { return c.engine.Cancel(force) }

// Prepare implements jobs.Finisher: with the source drained, the last
// writes are copied; on job-complete every user of top then uses base.
func (c *Active) Prepare(ctx context.Context, tx *block.Txn) error {
	top, base := c.t.top, c.t.base
	tx.Drain(c.filter, base)
	if err := c.engine.FinalSync(ctx); err != nil {
		return jobs.WriteError(err)
	}
	tx.Unfreeze(c.frozen...)
	frozen := c.frozen
	c.frozen = nil
	tx.OnUndo(func() { c.frozen = frozen })
	if !c.engine.Completing() {
		// A soft cancel in READY: base is in sync, nothing moves.
		return c.dropFilter(tx)
	}
	for _, p := range top.Parents() {
		if p.ParentNode() == nil {
			continue // the job's own edges go with it
		}
		if err := tx.Replace(p, base); err != nil {
			return err
		}
	}
	// The filter now filters base: its users (exports...) move to base.
	if err := c.dropFilter(tx); err != nil {
		return err
	}
	c.pivoted = true
	tx.OnUndo(func() { c.pivoted = false })
	return nil
}

// Commit implements jobs.Finisher.
func (c *Active) Commit() {}

// Abort implements jobs.Finisher: the filter goes, top's users get it
// back.
func (c *Active) Abort(ctx context.Context, tx *block.Txn) {
	tx.Unfreeze(c.frozen...)
	c.frozen = nil
	if err := c.dropFilter(tx); err != nil {
		tx.Graph().Logger().WithError(err).Error("commit: removing the mirror_top filter")
	}
}

// dropFilter removes the filter, its users going to what it filters, and
// then the job's edges to the images below top (which, not shared for
// consistent read, would stand in the way of top's users). Permissions
// are checked on the result, at the end of the change.
func (c *Active) dropFilter(tx *block.Txn) error {
	if err := tx.RemoveFilter(c.filter); err != nil {
		return err
	}
	c.job.ReleaseRoot(tx, c.engine.Source)
	c.job.ReleaseRoot(tx, c.engine.Target) // base's users may write it now
	return nil
}

// Clean implements jobs.Cleaner: a base that was read-only and did not
// become the active layer is read-only again.
func (c *Active) Clean(ctx context.Context, tx *block.Txn) {
	if c.engine != nil {
		c.t.top.RemoveDirtyBitmap(c.engine.Bitmap)
		c.job.ReleaseRoot(tx, c.engine.Target)
	}
	if !c.baseWasRO || c.pivoted {
		return
	}
	err := tx.Graph().RefreshPerms()
	if err == nil {
		err = tx.ReopenReadOnly(ctx, c.t.base, true)
	}
	if err != nil {
		tx.Graph().Logger().WithError(err).Warn("commit: reopening base read-only again")
	}
}
