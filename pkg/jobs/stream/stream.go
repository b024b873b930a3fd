package stream

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"runtime"

	"github.com/blockd/blockd/pkg/block"
	"github.com/blockd/blockd/pkg/jobs"
)

// Args are block-stream's arguments that the job needs (the rest are
// jobs.Options). Nodes are named, and resolved in Setup under the graph
// lock.
type Args struct {
	Device         string
	Base           *string // a file name in the chain
	BaseNode       *string
	Bottom         *string
	BackingFile    *string
	FilterNodeName *string
}

// Copy sizes. Chunks of a few clusters keep the per-request cost low;
// as many in flight as there are CPUs to run them (at least two, so that
// a read overlaps a write; at most eight) keep a local image busy without
// the writers of one file queueing on its lock, which measurably slowed
// eight writers on two cores (docs/benchmarks.md). QEMU streams 512 KiB
// at a time, one at a time.
const chunkSize = 1 << 20

var parallel = min(max(runtime.GOMAXPROCS(0), 2), 8)

// Stream is a block-stream job's body.
type Stream struct {
	a Args

	// Set by Setup; read by Run between Yields and by the graph steps
	// under the graph lock.
	device      *block.Node // the node named by 'device' (may be a filter)
	overlay     *block.Node // COW overlay of base
	above       *block.Node // the node directly above base
	cor         *block.Node // the inserted copy-on-read filter; nil once removed
	frozen      []*block.Child
	root        *block.Root
	wasReadOnly bool
}

// New returns the body of a stream job.
func New(a Args) *Stream { return &Stream{a: a} }

var (
	errBaseAndNode   = errors.New("'base' and 'base-node' cannot be specified at the same time")
	errBaseAndBottom = errors.New("'base' and 'bottom' cannot be specified at the same time")
	errBottomAndNode = errors.New("'bottom' and 'base-node' cannot be specified at the same time")
	errBackingFile   = errors.New("backing file specified, but streaming the entire chain")
)

// Check validates what can be checked without the graph (qsd checks these
// before anything else).
func (a Args) Check() error {
	switch {
	case a.Base != nil && a.BaseNode != nil:
		return errBaseAndNode
	case a.Base != nil && a.Bottom != nil:
		return errBaseAndBottom
	case a.Bottom != nil && a.BaseNode != nil:
		return errBottomAndNode
	}
	return nil
}

// lookup finds a node named in base-node or bottom, with qsd's message.
func lookup(g *block.Graph, name string) (*block.Node, error) {
	if n := g.Lookup(name); n != nil {
		return n, nil
	}
	// compat(qsd-7.2): bdrv_lookup_bs(NULL, name) names no device.
	return nil, block.Errorf(block.ErrNotFound, "Cannot find device='' nor node-name='%s'", name)
}

// next is the next node of n's chain, or nil.
func next(n *block.Node) *block.Node {
	if c := block.FilteredOrCOWChild(n); c != nil {
		return c.Node()
	}
	return nil
}

// resolve finds the nodes the arguments name and checks them, with
// qsd's messages, in qsd's order.
func (s *Stream) resolve(g *block.Graph) (base, bottom *block.Node, err error) {
	a := s.a
	if err := a.Check(); err != nil {
		return nil, nil, err
	}
	dev, err := g.FindNode(a.Device)
	if err != nil {
		return nil, nil, err
	}
	s.device = dev
	if a.Base != nil {
		if base = block.FindBackingImage(dev, *a.Base); base == nil {
			return nil, nil, fmt.Errorf("Can't find '%s' in the backing chain", *a.Base)
		}
	}
	if a.BaseNode != nil {
		if base, err = lookup(g, *a.BaseNode); err != nil {
			return nil, nil, err
		}
		if base == dev || !block.InChain(dev, base) {
			return nil, nil, fmt.Errorf("Node '%s' is not a backing image of '%s'", *a.BaseNode, a.Device)
		}
	}
	if a.Bottom != nil {
		if bottom, err = lookup(g, *a.Bottom); err != nil {
			return nil, nil, err
		}
		if bottom.IsFilter() {
			return nil, nil, fmt.Errorf("Node '%s' is a filter, use a non-filter node as 'bottom'", *a.Bottom)
		}
		if !block.InChain(dev, bottom) {
			return nil, nil, fmt.Errorf("Node '%s' is not in a chain starting from '%s'", *a.Bottom, a.Device)
		}
	}
	// Everything the job will change must allow a stream.
	end := base
	if bottom != nil {
		end = next(bottom)
	}
	for n := dev; n != nil && n != end; n = next(n) {
		if err := n.Blocked(block.OpStream); err != nil {
			return nil, nil, err
		}
	}
	if base == nil && a.BackingFile != nil {
		return nil, nil, errBackingFile
	}
	return base, bottom, nil
}

// Check implements jobs.Checker: everything qsd does before it creates
// the job (see the package doc).
func (s *Stream) Check(ctx context.Context, tx *block.Txn, j *jobs.Job) error {
	base, bottom, err := s.resolve(tx.Graph())
	if err != nil {
		return err
	}
	dev := s.device
	if bottom != nil {
		s.overlay, s.above = bottom, bottom
	} else {
		var ok bool
		if s.overlay, s.above, ok = block.BaseOverlay(dev, base); !ok {
			return fmt.Errorf("'%s' is not in the backing chain of '%s'", base.Name(), dev.Name())
		}
	}
	// The filter freezes its chain down to the overlay; the links from
	// there to above base are the job's.
	if s.frozen, err = tx.FreezeChain(s.overlay, s.above); err != nil {
		return err
	}
	if dev.ReadOnly() {
		if err := tx.ReopenReadOnly(ctx, dev, false); err != nil {
			return err
		}
		s.wasReadOnly = true
	}
	opts := map[string]any{"driver": "copy-on-read", "file": dev.Name(), "bottom": s.overlay.Name()}
	if s.a.FilterNodeName != nil {
		opts["node-name"] = *s.a.FilterNodeName
	}
	raw, err := json.Marshal(opts)
	if err != nil {
		return err
	}
	s.cor, err = tx.InsertFilter(ctx, dev, raw, s.a.FilterNodeName == nil)
	return err
}

// Setup implements jobs.Setupper: the job takes its nodes.
func (s *Stream) Setup(ctx context.Context, tx *block.Txn, j *jobs.Job) error {
	var err error
	dev := s.device
	// The job reads through the filter; others may go on writing the
	// device, but not the images being streamed, nor resize anything.
	const cr, w, wu = block.PermConsistentRead, block.PermWrite, block.PermWriteUnchanged
	if s.root, err = j.NewRoot(tx, s.cor, "main node", cr, cr|w|wu); err != nil {
		return err
	}
	if err := j.Hold(tx, s.root, dev, "active node", 0, cr|w|wu); err != nil {
		return err
	}
	for n := next(dev); n != nil && n != next(s.above); n = next(n) {
		if err := j.Hold(tx, s.root, n, "intermediate node", 0, cr|wu); err != nil {
			return err
		}
	}
	return nil
}

// Run implements jobs.Body.
func (s *Stream) Run(ctx context.Context, j *jobs.Job) error {
	if block.SkipFilters(s.device) == s.overlay {
		return nil // nothing between the device and base
	}
	size := s.device.Size()
	j.SetTotal(size)
	c := jobs.Copy{Job: j, End: size, Chunk: chunkSize, Parallel: parallel, Extent: s.extent, Target: s.cor,
		Do: func(ctx context.Context, off int64, buf []byte) error {
			// The filter writes what it reads into the top image.
			return s.root.ReadAt(ctx, buf, off, 0)
		}}
	return c.Run(ctx)
}

// extent says whether the range at off must be copied: not if the top
// image allocates it, nor if no image from top's backing down to the
// base overlay does.
func (s *Stream) extent(ctx context.Context, off, max int64) (int64, bool, error) {
	top := block.SkipFilters(s.device)
	e, err := block.ResolveStatus(ctx, top, off, max)
	if err != nil {
		return 0, false, err
	}
	if e.Status&block.StatusAllocated != 0 {
		return e.Len, false, nil
	}
	below := block.COWChild(top)
	if below == nil {
		return e.Len, false, nil
	}
	alloc, n, err := block.IsAllocatedAbove(ctx, below.Node(), s.overlay, true, off, e.Len)
	return n, alloc, err
}

// dropFilter removes the copy-on-read filter and releases the job's
// frozen links, so that the same change can retarget them.
func (s *Stream) dropFilter(tx *block.Txn) error {
	cor, frozen := s.cor, s.frozen
	if cor == nil {
		return nil
	}
	if err := tx.RemoveFilter(cor); err != nil {
		return err
	}
	tx.Unfreeze(frozen...)
	s.cor, s.frozen = nil, nil
	tx.OnUndo(func() { s.cor, s.frozen = cor, frozen })
	return nil
}

// Prepare implements jobs.Finisher: the top image's COW link moves to
// what lies below above base now, and its header says so.
func (s *Stream) Prepare(ctx context.Context, tx *block.Txn) error {
	if err := s.dropFilter(tx); err != nil {
		return err
	}
	top := block.SkipFilters(s.device)
	if block.COWChild(top) == nil {
		return nil
	}
	base := next(s.above)
	name, format := "", ""
	if ub := block.SkipFilters(base); ub != nil {
		var err error
		if name, format, err = block.BackingFileName(top, ub); err != nil && s.a.BackingFile == nil {
			return err
		}
		if s.a.BackingFile != nil {
			name, format = *s.a.BackingFile, ub.Driver().Name
		}
	}
	tx.Drain(top)
	if err := tx.SetBacking(top, base); err != nil {
		return err
	}
	if err := tx.Graph().RefreshPerms(); err != nil {
		return err
	}
	if bc, ok := top.Impl().(block.BackingFileChanger); ok {
		return bc.ChangeBackingFile(ctx, name, format)
	}
	return nil
}

// Commit implements jobs.Finisher.
func (s *Stream) Commit() {}

// Abort implements jobs.Finisher: Clean undoes everything Setup did.
func (s *Stream) Abort(ctx context.Context, tx *block.Txn) {}

// Clean implements jobs.Cleaner.
func (s *Stream) Clean(ctx context.Context, tx *block.Txn) {
	log := tx.Graph().Logger().WithField("node", s.device.Name())
	if err := s.dropFilter(tx); err != nil {
		log.WithError(err).Error("stream: removing the copy-on-read filter")
	}
	if !s.wasReadOnly {
		return
	}
	// The filter's write permission is gone only once permissions are
	// brought up to date.
	err := tx.Graph().RefreshPerms()
	if err == nil {
		err = tx.ReopenReadOnly(ctx, s.device, true)
	}
	if err != nil {
		log.WithError(err).Warn("stream: reopening the device read-only again")
	}
}
