package commit

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"runtime"

	"github.com/blockd/blockd/pkg/block"
	"github.com/blockd/blockd/pkg/jobs"
)

// Args are block-commit's arguments that the job needs (the rest are
// jobs.Options). Nodes are named, and resolved in Check under the graph
// lock.
type Args struct {
	Device         string
	Top            *string // a file name in the chain
	TopNode        *string
	Base           *string // a file name in the chain
	BaseNode       *string
	BackingFile    *string
	FilterNodeName *string
}

// Copy sizes, as for stream (see pkg/jobs/stream).
const chunkSize = 1 << 20

var parallel = min(max(runtime.GOMAXPROCS(0), 2), 8)

var errNoBacking = errors.New("There is no backimg image") // compat(qsd-7.2): QEMU's spelling

// next is the next node of n's chain, or nil.
func next(n *block.Node) *block.Node {
	if c := block.FilteredOrCOWChild(n); c != nil {
		return c.Node()
	}
	return nil
}

// lookup finds a node named in top-node or base-node, with qsd's message.
func lookup(g *block.Graph, name string) (*block.Node, error) {
	if n := g.Lookup(name); n != nil {
		return n, nil
	}
	return nil, block.Errorf(block.ErrNotFound, "Cannot find device='' nor node-name='%s'", name)
}

// isRoot reports whether no node uses n: block-commit's device must be
// the top of a graph (QEMU's bdrv_is_root_node).
func isRoot(n *block.Node) bool {
	for _, c := range n.Parents() {
		if c.ParentNode() != nil {
			return false
		}
	}
	return true
}

// resolveTop finds the top image the arguments name (default: the
// device).
func resolveTop(g *block.Graph, a Args, dev *block.Node) (*block.Node, error) {
	top := dev
	switch {
	case a.TopNode != nil && a.Top != nil:
		return nil, errors.New("'top-node' and 'top' are mutually exclusive")
	case a.TopNode != nil:
		var err error
		if top, err = lookup(g, *a.TopNode); err != nil {
			return nil, err
		}
		if !block.InChain(dev, top) {
			return nil, fmt.Errorf("'%s' is not in this backing file chain", *a.TopNode)
		}
	case a.Top != nil && dev.Filename() != *a.Top:
		top = block.FindBackingImage(dev, *a.Top)
	}
	if top == nil {
		return nil, fmt.Errorf("Top image file %s not found", *a.Top)
	}
	return top, nil
}

// resolveBase finds the base the arguments name (default: the bottom of
// top's chain).
func resolveBase(g *block.Graph, a Args, top *block.Node) (*block.Node, error) {
	switch {
	case a.BaseNode != nil && a.Base != nil:
		return nil, errors.New("'base-node' and 'base' are mutually exclusive")
	case a.BaseNode != nil:
		base, err := lookup(g, *a.BaseNode)
		if err != nil {
			return nil, err
		}
		if !block.InChain(top, base) {
			return nil, fmt.Errorf("'%s' is not in this backing file chain", *a.BaseNode)
		}
		return base, nil
	case a.Base != nil:
		base := block.FindBackingImage(top, *a.Base)
		if base == nil {
			return nil, fmt.Errorf("Can't find '%s' in the backing chain", *a.Base)
		}
		return base, nil
	}
	if base := block.FindOverlay(top, nil); base != nil {
		return base, nil
	}
	return nil, errNoBacking
}

// target is what the arguments name, resolved and checked.
type target struct {
	device, top, base *block.Node
	active            bool
}

// resolve finds and checks the nodes with qsd's messages, in qsd's order.
func resolve(g *block.Graph, a Args) (target, error) {
	var t target
	dev := g.Lookup(a.Device)
	if dev == nil {
		// compat(qsd-7.2): DeviceNotFound; libvirt probes for commit
		// support with it.
		return t, block.Errorf(block.ErrNoDevice, "Device '%s' not found", a.Device)
	}
	if !isRoot(dev) {
		return t, errors.New("Need a root block node")
	}
	if err := dev.Blocked(block.OpCommitSource); err != nil {
		return t, err
	}
	top, err := resolveTop(g, a, dev)
	if err != nil {
		return t, err
	}
	base, err := resolveBase(g, a, top)
	if err != nil {
		return t, err
	}
	for n := top; n != nil; n = next(n) {
		if err := n.Blocked(block.OpCommitTarget); err != nil {
			return t, err
		}
		if n == base {
			break
		}
	}
	if top == base {
		return t, errors.New("cannot commit an image into itself")
	}
	// Someone writing top makes it the active layer, as does being the
	// device's own image (QEMU has always committed those actively).
	perm, _ := top.Perm()
	t = target{device: dev, top: top, base: base,
		active: perm&block.PermWrite != 0 || block.SkipFilters(top) == block.SkipFilters(dev)}
	if t.active && a.BackingFile != nil {
		if block.SkipFilters(top) == block.SkipFilters(dev) {
			return t, errors.New("'backing-file' specified, but 'top' is the active layer")
		}
		return t, errors.New("'backing-file' specified, but 'top' has a writer on it")
	}
	if !t.active {
		if err := block.FindOverlay(dev, top).Blocked(block.OpCommitTarget); err != nil {
			return t, err
		}
	}
	if block.SkipFilters(top) == block.SkipFilters(base) {
		return t, errors.New("Invalid files for merge: top and base are the same")
	}
	return t, nil
}

// Intermediate is the body of a commit of a top below the active layer.
type Intermediate struct {
	a Args
	t target

	// Set by Setup; read by Run between Yields and by the graph steps.
	job        *jobs.Job
	main       *block.Root // on the device; holds the committed images
	filter     *block.Node // commit_top, above top
	overlay    *block.Node // the lowest node above base that stays (base's COW overlay)
	frozen     []*block.Child
	topRoot    *block.Root // reads top
	baseRoot   *block.Root // writes base
	baseWasRO  bool
	baseResize bool
}

// Setup implements jobs.Setupper: the rest happens after qsd created the
// job (a base that cannot be reopened read-write shows 'created' and
// 'null').
func (c *Intermediate) Setup(ctx context.Context, tx *block.Txn, j *jobs.Job) error {
	top, base := c.t.top, c.t.base
	const cr, w, wu, resize = block.PermConsistentRead, block.PermWrite, block.PermWriteUnchanged, block.PermResize
	c.job = j
	main, err := j.NewRoot(tx, c.t.device, "main node", 0, block.PermAll)
	if err != nil {
		return err
	}
	c.main = main
	if base.ReadOnly() {
		if err := tx.ReopenReadOnly(ctx, base, false); err != nil {
			return err
		}
		c.baseWasRO = true
	}
	opts := map[string]any{"driver": "commit_top", "backing": top.Name()}
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
	// Every node from top down to base leaves the chain: nobody else may
	// write them, and none but filters of base may be read consistently
	// while base changes under them.
	c.overlay = block.FindOverlay(top, base)
	filteredBase := block.COWChild(c.overlay).Node()
	shared := wu | w
	for n := top; n != base; n = next(n) {
		if n == filteredBase {
			shared |= cr
		}
		if err := j.Hold(tx, main, n, "intermediate node", 0, shared); err != nil {
			return err
		}
	}
	if c.frozen, err = tx.FreezeChain(c.filter, base); err != nil {
		return err
	}
	basePerm := cr | w
	if base.Size() < top.Size() {
		basePerm |= resize
		c.baseResize = true
	}
	if c.baseRoot, err = j.NewRoot(tx, base, "base", basePerm, cr|wu); err != nil {
		return err
	}
	c.topRoot, err = j.NewRoot(tx, top, "top", 0, block.PermAll)
	return err
}

// Run implements jobs.Body: every range allocated from top down to the
// overlay of base is written into base.
func (c *Intermediate) Run(ctx context.Context, j *jobs.Job) error {
	size := c.topRoot.Size()
	j.SetTotal(size)
	if c.baseResize && c.baseRoot.Size() < size {
		if err := c.baseRoot.Truncate(ctx, size, false); err != nil {
			return err
		}
	}
	splice := jobs.NewSpliceCopier(parallel)
	defer splice.Close()
	cp := jobs.Copy{Job: j, End: size, Chunk: chunkSize, Parallel: parallel, Target: c.t.base,
		Extent: func(ctx context.Context, off, max int64) (int64, bool, error) {
			alloc, n, err := block.IsAllocatedAbove(ctx, c.t.top, c.overlay, true, off, max)
			return n, alloc, err
		},
		Do: func(ctx context.Context, off int64, buf []byte) error {
			return copyRange(ctx, splice, c.topRoot, c.baseRoot, off, buf)
		}}
	return cp.Run(ctx)
}

// copyRange copies [off, off+len(buf)) from src to dst: through a pipe
// where both can (see jobs.SpliceCopier), else through buf, zeroes
// written as such so that base stays sparse.
func copyRange(ctx context.Context, splice *jobs.SpliceCopier, src, dst *block.Root, off int64, buf []byte) error {
	if done, err := splice.Copy(ctx, src, dst, off, len(buf)); done {
		if err != nil {
			return jobs.WriteError(err)
		}
		return nil
	}
	if err := src.ReadAt(ctx, buf, off, 0); err != nil {
		return err
	}
	var err error
	if block.IsZero(buf) {
		err = dst.Zero(ctx, off, int64(len(buf)), 0)
	} else {
		err = dst.WriteAt(ctx, buf, off, 0)
	}
	if err != nil {
		return jobs.WriteError(err)
	}
	return nil
}

// Prepare implements jobs.Finisher: everyone who used top through the
// filter now uses base, and the images among them name base in their
// headers. base's data is made durable first, so that no header names it
// before it holds what the committed images held.
func (c *Intermediate) Prepare(ctx context.Context, tx *block.Txn) error {
	base := c.t.base
	if err := c.baseRoot.Flush(ctx); err != nil {
		return jobs.WriteError(err)
	}
	tx.Unfreeze(c.frozen...)
	frozen := c.frozen
	c.frozen = nil
	tx.OnUndo(func() { c.frozen = frozen })
	// The job's write permission on base would stand in the way of the
	// overlay's (QEMU drops its base backend here too).
	c.job.ReleaseRoot(tx, c.baseRoot)
	parents := c.filter.Parents()
	tx.Drain(c.filter, base)
	for _, p := range parents {
		if p.ParentNode() == nil {
			continue // the job's own roots: they go with the job
		}
		if err := tx.Replace(p, base); err != nil {
			return err
		}
	}
	if err := tx.Graph().RefreshPerms(); err != nil {
		return err
	}
	for _, p := range parents {
		if n := p.ParentNode(); n != nil && p.Role()&block.RoleCOW != 0 {
			if err := c.renameBacking(ctx, tx, n); err != nil {
				return err
			}
		}
	}
	return nil
}

// renameBacking writes base's name into overlay's header, reopening a
// read-only overlay read-write for it.
func (c *Intermediate) renameBacking(ctx context.Context, tx *block.Txn, overlay *block.Node) error {
	bc, ok := overlay.Impl().(block.BackingFileChanger)
	if !ok {
		return nil
	}
	ub := block.SkipFilters(c.t.base)
	name, format, err := block.BackingFileName(overlay, ub)
	if c.a.BackingFile != nil {
		name, format, err = *c.a.BackingFile, ub.Driver().Name, nil
	}
	if err != nil {
		return err
	}
	ro := overlay.ReadOnly()
	if ro {
		if err := tx.ReopenReadOnly(ctx, overlay, false); err != nil {
			return err
		}
	}
	if err := bc.ChangeBackingFile(ctx, name, format); err != nil {
		return fmt.Errorf("Could not update backing file link: %w", err)
	}
	if ro {
		return tx.ReopenReadOnly(ctx, overlay, true)
	}
	return nil
}

// Commit implements jobs.Finisher.
func (c *Intermediate) Commit() {}

// Abort implements jobs.Finisher: the filter goes and top's users get it
// back. What was written into base stays (it is what top holds).
func (c *Intermediate) Abort(ctx context.Context, tx *block.Txn) {
	tx.Unfreeze(c.frozen...)
	c.frozen = nil
	if c.filter != nil && len(c.filter.Parents()) > 0 {
		if err := tx.RemoveFilter(c.filter); err != nil {
			tx.Graph().Logger().WithError(err).Error("commit: removing the commit_top filter")
		}
	}
	// The job's holds (no consistent read below top) would stand in the
	// way of top's users, now that the filter is gone.
	c.job.ReleaseRoot(tx, c.main)
}

// Clean implements jobs.Cleaner: base is read-only again if it was.
func (c *Intermediate) Clean(ctx context.Context, tx *block.Txn) {
	if !c.baseWasRO {
		return
	}
	// The job's write permission on base must go first.
	c.job.ReleaseRoot(tx, c.baseRoot)
	err := tx.Graph().RefreshPerms()
	if err == nil {
		err = tx.ReopenReadOnly(ctx, c.t.base, true)
	}
	if err != nil {
		tx.Graph().Logger().WithError(err).Warn("commit: reopening base read-only again")
	}
}

// body is what every block-commit job implements: the intermediate and
// the active commit alike.
type body interface {
	jobs.Body
	jobs.Setupper
	jobs.Finisher
	jobs.Cleaner
}

// Job is a block-commit job: Check finds out whether the commit is
// active or intermediate and hands everything else to that body.
type Job struct {
	a Args
	b body
}

// New returns the body of a block-commit job.
func New(a Args) *Job { return &Job{a: a} }

// Check implements jobs.Checker.
func (c *Job) Check(ctx context.Context, tx *block.Txn, j *jobs.Job) error {
	t, err := resolve(tx.Graph(), c.a)
	if err != nil {
		return err
	}
	if t.active {
		c.b = &Active{a: c.a, t: t}
	} else {
		c.b = &Intermediate{a: c.a, t: t}
	}
	return nil
}

// Complete implements jobs.Completer: only an active commit waits for it
// (the runner refuses the verb before READY).
func (c *Job) Complete() error {
	if a, ok := c.b.(*Active); ok {
		return a.Complete()
	}
	return fmt.Errorf("The active block job cannot be completed")
}

// Cancel implements jobs.Canceler: an active commit in READY may be
// cancelled softly; anything else stops at once.
func (c *Job) Cancel(force bool) bool {
	if a, ok := c.b.(*Active); ok && a.engine != nil {
		return a.Cancel(force)
	}
	return true
}

func (c *Job) Setup(ctx context.Context, tx *block.Txn, j *jobs.Job) error {
	return c.b.Setup(ctx, tx, j)
}
func (c *Job) Run(ctx context.Context, j *jobs.Job) error { return c.b.Run(ctx, j) }
func (c *Job) Prepare(ctx context.Context, tx *block.Txn) error {
	return c.b.Prepare(ctx, tx)
}
func (c *Job) Commit()                                  { c.b.Commit() }
func (c *Job) Abort(ctx context.Context, tx *block.Txn) { c.b.Abort(ctx, tx) }
func (c *Job) Clean(ctx context.Context, tx *block.Txn) { c.b.Clean(ctx, tx) }
