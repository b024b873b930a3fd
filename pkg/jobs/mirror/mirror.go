package mirror

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/blockd/blockd/pkg/block"
	"github.com/blockd/blockd/pkg/jobs"
)

// Sync modes (MirrorSyncMode).
const (
	SyncFull = "full" // the whole disk as the source shows it
	SyncTop  = "top"  // what the source's top image holds; the target keeps a backing
	SyncNone = "none" // only what is written from now on
)

// SyncMode is MirrorSyncMode: QMP's enum, of which a mirror takes three.
type SyncMode string

// EnumValues implements qmp.Enum.
func (SyncMode) EnumValues() []string {
	return []string{"top", "full", "none", "incremental", "bitmap"}
}

// CopyMode is MirrorCopyMode.
type CopyMode string

// EnumValues implements qmp.Enum.
func (CopyMode) EnumValues() []string { return []string{"background", "write-blocking"} }

// Args are blockdev-mirror's arguments that the job needs (the rest are
// jobs.Options). Nodes are named, and resolved in Check under the graph
// lock.
type Args struct {
	Device, Target string
	Replaces       *string
	Sync           SyncMode
	Granularity    int64 // 0: the target's cluster size in [4 KiB, 64 KiB]
	BufSize        int64 // 0: 16 MiB
	FilterNodeName *string
	CopyMode       CopyMode
	Unmap          bool
	// ZeroTarget makes the target read as zeroes where the source does
	// not hold data (blockdev-mirror with sync=full; drive-mirror decides
	// from the image it made).
	ZeroTarget bool
	// TargetOptions, if set, open the target (drive-mirror): the node
	// belongs to the job until the pivot gives it users. Target is then
	// not looked up.
	TargetOptions json.RawMessage
	// LinkBacking (drive-mirror, mode absolute-paths) gives the target, on
	// complete, the backing the image it was made with names: the
	// source's backing with sync=top, the source with sync=none.
	LinkBacking bool
}

const (
	defaultBufSize = 16 << 20
	maxChunk       = 1 << 20 // the largest copy, as QEMU's MAX_IO_BYTES
	maxParallel    = 16      // QEMU's MAX_IN_FLIGHT
)

// Mirror is the body of a blockdev-mirror job.
type Mirror struct {
	a Args

	// Set by Check and Setup; read by Run and the graph steps.
	job       *jobs.Job
	source    *block.Node // the device
	target    *block.Node
	toReplace *block.Node // what the target replaces on complete
	base      *block.Node // sync=top: the source's backing, not copied
	filter    *block.Node // mirror_top
	engine    *Engine
	gran      int64
}

// New returns the body of a blockdev-mirror job.
func New(a Args) *Mirror { return &Mirror{a: a} }

// isRoot reports whether no node uses n (QEMU's bdrv_is_root_node).
func isRoot(n *block.Node) bool {
	for _, c := range n.Parents() {
		if c.ParentNode() != nil {
			return false
		}
	}
	return true
}

// Check implements jobs.Checker: qsd's checks, in qsd's order, and the
// filter, which qsd inserts before it creates the job.
func (m *Mirror) Check(ctx context.Context, tx *block.Txn, j *jobs.Job) error {
	g := tx.Graph()
	a := m.a
	src, err := g.FindNode(a.Device)
	if err != nil {
		return err
	}
	if !isRoot(src) {
		return errors.New("Need a root block node")
	}
	var tgt *block.Node
	if a.TargetOptions != nil {
		if tgt, err = tx.Open(ctx, a.TargetOptions, false); err != nil {
			return err
		}
	} else if tgt, err = g.FindNode(a.Target); err != nil {
		return err
	}
	if a.Granularity != 0 && (a.Granularity < 512 || a.Granularity > 64<<20) {
		return errors.New("Parameter 'granularity' expects a value in range [512B, 64MB]")
	}
	if a.Granularity&(a.Granularity-1) != 0 {
		return errors.New("Parameter 'granularity' expects a power of 2")
	}
	if err := src.Blocked(block.OpMirrorSource); err != nil {
		return err
	}
	if err := tgt.Blocked(block.OpMirrorTarget); err != nil {
		return err
	}
	sync := a.Sync
	if sync == SyncTop && block.BackingChainNext(src) == nil {
		sync = SyncFull
	}
	if m.toReplace, err = toReplace(g, a, src, tgt); err != nil {
		return err
	}
	switch sync {
	case "incremental", "bitmap":
		return fmt.Errorf("Sync mode '%s' not supported", sync)
	}
	if a.BufSize < 0 {
		return errors.New("Invalid parameter 'buf-size'")
	}
	if block.SkipFilters(src) == block.SkipFilters(tgt) {
		return errors.New("Can't mirror node into itself")
	}
	if block.InChain(src, tgt) || block.InChain(src, block.SkipFilters(tgt)) {
		return errors.New("Cannot mirror to a filter on top of a node in the source's backing chain")
	}
	if reachesNode(tgt, src) {
		return fmt.Errorf("Cannot mirror '%s' into '%s': the target uses the source", a.Device, a.Target)
	}
	m.source, m.target = src, tgt
	m.a.Sync = sync
	if sync == SyncTop {
		m.base = block.BackingChainNext(src)
	}
	opts := map[string]any{"driver": "mirror_top", "backing": src.Name()}
	if a.FilterNodeName != nil {
		opts["node-name"] = *a.FilterNodeName
	}
	raw, err := json.Marshal(opts)
	if err != nil {
		return err
	}
	m.filter, err = tx.InsertFilter(ctx, src, raw, a.FilterNodeName == nil)
	return err
}

// toReplace finds the node the target replaces on complete, with qsd's
// checks: the device, unless 'replaces' names another (or the device has
// implicit filters on top, which stay).
func toReplace(g *block.Graph, a Args, src, tgt *block.Node) (*block.Node, error) {
	replaces := a.Replaces
	if replaces == nil {
		if u := block.SkipImplicitFilters(src); u != src {
			name := u.Name()
			replaces = &name
		}
	}
	if replaces == nil {
		return src, nil
	}
	r := g.Lookup(*replaces)
	if r == nil {
		return nil, fmt.Errorf("Failed to find node with node-name='%s'", *replaces)
	}
	if err := r.Blocked(block.OpReplace); err != nil {
		return nil, err
	}
	if !block.CanReplace(src, r) || r == tgt || block.InChain(tgt, r) {
		return nil, fmt.Errorf("Cannot replace '%s' by a node mirrored from '%s', because it cannot be guaranteed that doing so would not lead to an abrupt change of visible data", *replaces, a.Device)
	}
	if r.Size() != src.Size() {
		return nil, errors.New("cannot replace image with a mirror image of different size")
	}
	return r, nil
}

// reachesNode reports whether n is from or lies below it, through any
// child.
func reachesNode(from, n *block.Node) bool {
	if from == n {
		return true
	}
	for _, c := range from.Children() {
		if reachesNode(c.Node(), n) {
			return true
		}
	}
	return false
}

// granularity is the dirty bitmap's: the argument, or the default of a
// bitmap for the target (its cluster size within [4 KiB, 64 KiB], else
// 64 KiB), as QEMU's mirror picks it.
func (m *Mirror) granularity(ctx context.Context) int64 {
	if m.a.Granularity != 0 {
		return m.a.Granularity
	}
	return block.DefaultBitmapGranularity(ctx, m.target)
}

// Setup implements jobs.Setupper: the job takes the filter (reads), the
// target (writes) and holds the source.
func (m *Mirror) Setup(ctx context.Context, tx *block.Txn, j *jobs.Job) error {
	const cr, w, wu = block.PermConsistentRead, block.PermWrite, block.PermWriteUnchanged
	m.job = j
	source, err := j.NewRoot(tx, m.filter, "main node", cr, cr|wu|w)
	if err != nil {
		return err
	}
	if err := j.Hold(tx, source, m.source, "source", 0, wu|w|cr); err != nil {
		return err
	}
	target, err := j.NewRoot(tx, m.target, "target", w, wu)
	if err != nil {
		return err
	}
	m.gran = m.granularity(ctx)
	// On the source itself, so that a write through the filter marks it
	// inside the filter's write (write-blocking mode clears it again once
	// the target has the data too).
	bm, err := m.source.AddDirtyBitmap("", m.gran)
	if err != nil {
		return err
	}
	tx.OnUndo(func() { m.source.RemoveDirtyBitmap(bm) })
	bufSize := m.a.BufSize
	if bufSize == 0 {
		bufSize = defaultBufSize
	}
	// Copies of up to 1 MiB (more with a buffer above 16 MiB), as many
	// as the buffer holds, at most 16 (QEMU's sizes); whole granules.
	bufSize = (bufSize + m.gran - 1) / m.gran * m.gran
	chunk := max(bufSize/maxParallel, min(maxChunk, bufSize))
	chunk = max(chunk/m.gran*m.gran, m.gran)
	par := int(min(max(bufSize/chunk, 1), maxParallel))
	m.engine = &Engine{Job: j, Source: source, Target: target, Bitmap: bm, Chunk: chunk, Parallel: par, Unmap: m.a.Unmap}
	if m.a.CopyMode == "write-blocking" {
		setActive(m.filter, m.engine)
		tx.OnUndo(func() { setActive(m.filter, nil) })
	}
	return nil
}

// Run implements jobs.Body.
func (m *Mirror) Run(ctx context.Context, j *jobs.Job) error {
	e := m.engine
	size := e.Source.Size()
	if e.Target.Size() != size {
		// compat(qsd-7.2): the job starts and then fails so.
		return errors.New("Source and target image have different sizes")
	}
	if m.a.Sync != SyncNone {
		if m.a.ZeroTarget {
			if err := m.zeroTarget(ctx); err != nil {
				return err
			}
		}
		overlay := block.FindOverlay(m.source, m.base) // sync=top: the top image only
		err := e.Init(ctx, func(ctx context.Context, off, max int64) (int64, bool, error) {
			alloc, n, err := block.IsAllocatedAbove(ctx, m.source, overlay, true, off, max)
			return n, alloc, err
		})
		if err != nil {
			return err
		}
	}
	return e.Run(ctx)
}

// zeroTarget makes the target read as zeroes wherever it may not yet:
// what it already reads as zeroes (a new image) is left alone.
func (m *Mirror) zeroTarget(ctx context.Context) error {
	e := m.engine
	size := e.Target.Size()
	var f block.Flags
	if m.a.Unmap {
		f = block.FlagMayUnmap
	}
	for off := int64(0); off < size; {
		if err := m.job.Yield(ctx); err != nil {
			return err
		}
		st, err := block.StatusAbove(ctx, m.target, nil, off, size-off)
		if err != nil {
			return err
		}
		if !st.Zero {
			if err := e.Target.Zero(ctx, off, st.Len, f); err != nil {
				if m.job.IOError(err, false) == jobs.ActionReport {
					return err
				}
				continue
			}
		}
		off += st.Len
	}
	return nil
}

// Complete implements jobs.Completer.
func (m *Mirror) Complete() error {
	m.engine.Complete()
	return nil
}

// Cancel implements jobs.Canceler.
func (m *Mirror) Cancel(force bool) bool {
	if m.engine == nil {
		return true
	}
	return m.engine.Cancel(force)
}

// Prepare implements jobs.Finisher: with the source drained the last
// writes are copied; on job-complete every user of the replaced node
// (the source, unless 'replaces' named another) uses the target instead.
func (m *Mirror) Prepare(ctx context.Context, tx *block.Txn) error {
	tx.Drain(m.filter, m.target)
	if err := m.engine.FinalSync(ctx); err != nil {
		return jobs.WriteError(err)
	}
	if !m.engine.Completing() {
		return m.dropFilter(tx) // a soft cancel in READY: the target is in sync
	}
	if m.a.LinkBacking {
		// The image names this backing already; the graph follows now.
		b := m.base
		if m.a.Sync == SyncNone {
			b = m.source
		}
		if b != nil && block.COWChild(block.SkipFilters(m.target)) == nil {
			if err := tx.SetBacking(block.SkipFilters(m.target), b); err != nil {
				return err
			}
		}
	}
	r := m.toReplace
	if r.ReadOnly() != m.target.ReadOnly() {
		if err := tx.ReopenReadOnly(ctx, m.target, r.ReadOnly()); err != nil {
			return err
		}
	}
	if !block.CanReplace(m.source, r) {
		return fmt.Errorf("Can no longer replace '%s' by '%s', because it can no longer be guaranteed that doing so would not lead to an abrupt change of visible data", r.Name(), m.target.Name())
	}
	for _, p := range r.Parents() {
		// The job's own edges go with it; a parent the target uses
		// (sync=top: the target's backing chain) would make a loop.
		if m.job.Owns(p) {
			continue
		}
		if pn := p.ParentNode(); pn != nil && reachesNode(m.target, pn) {
			continue
		}
		if err := tx.Replace(p, m.target); err != nil {
			return err
		}
	}
	return m.dropFilter(tx)
}

// dropFilter removes the filter (its users go to what it filters: the
// target, after a pivot) and then the job's edges, so that the target's
// new users may write it (QEMU drops the job's target permissions too).
// The job's edges go last: a drive-mirror target nobody else uses would
// be closed with them.
func (m *Mirror) dropFilter(tx *block.Txn) error {
	setActive(m.filter, nil) // drained: no write is on its way through it
	if err := tx.RemoveFilter(m.filter); err != nil {
		return err
	}
	m.job.ReleaseRoot(tx, m.engine.Source)
	m.job.ReleaseRoot(tx, m.engine.Target)
	return nil
}

// Commit implements jobs.Finisher.
func (m *Mirror) Commit() {}

// Abort implements jobs.Finisher: the source is as it was.
func (m *Mirror) Abort(ctx context.Context, tx *block.Txn) {
	if err := m.dropFilter(tx); err != nil {
		tx.Graph().Logger().WithError(err).Error("mirror: removing the mirror_top filter")
	}
}

// Clean implements jobs.Cleaner.
func (m *Mirror) Clean(ctx context.Context, tx *block.Txn) {
	if m.engine != nil {
		m.source.RemoveDirtyBitmap(m.engine.Bitmap)
	}
}
