package backup

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/blockd/blockd/pkg/block"
	"github.com/blockd/blockd/pkg/jobs"
	"github.com/blockd/blockd/pkg/jobs/mirror"
)

// SyncMode is MirrorSyncMode, which backup takes whole.
type SyncMode = mirror.SyncMode

// Sync modes beyond mirror's.
const (
	SyncFull        = mirror.SyncFull
	SyncTop         = mirror.SyncTop
	SyncNone        = mirror.SyncNone
	SyncBitmap      = "bitmap"
	SyncIncremental = "incremental"
)

// BitmapMode is BitmapSyncMode: what becomes of the sync bitmap.
type BitmapMode string

// Bitmap modes.
const (
	BitmapOnSuccess BitmapMode = "on-success" // cleared of what was copied, if the job succeeds
	BitmapNever     BitmapMode = "never"      // left as it was, plus the writes since
	BitmapAlways    BitmapMode = "always"     // cleared of what was copied, whatever the outcome
)

// EnumValues implements qmp.Enum.
func (BitmapMode) EnumValues() []string { return []string{"on-success", "never", "always"} }

// Perf is BackupPerf (x-perf): use-copy-range is accepted and has no
// effect here.
type Perf struct {
	UseCopyRange *bool  `json:"use-copy-range,omitempty"`
	MaxWorkers   *int64 `json:"max-workers,omitempty"`
	MaxChunk     *int64 `json:"max-chunk,omitempty"`
}

// Args are blockdev-backup's arguments that the job needs (the rest are
// jobs.Options). Nodes are named, and resolved in Check under the graph
// lock.
type Args struct {
	Device, Target string
	Sync           SyncMode
	Bitmap         *string
	BitmapMode     *BitmapMode
	Compress       bool
	FilterNodeName *string
	Perf           Perf
	// TargetOptions, if set, open the target (drive-backup): the node
	// belongs to the job and goes when the job does. Target is then not
	// looked up.
	TargetOptions json.RawMessage
}

// Copy sizes: QEMU's block-copy copies up to 64 workers at once; eight
// chunks of 1 MiB keep a local image busy in far less memory.
const (
	defaultChunk   = 1 << 20
	defaultWorkers = 8
)

// Backup is a blockdev-backup job's body.
type Backup struct {
	a Args

	// Set by Check and Setup; read by Run and the graph steps.
	job       *jobs.Job
	source    *block.Node
	target    *block.Node
	filter    *block.Node // copy-before-write; nil once removed
	bc        *blockCopy
	sync      mirror.SyncMode // incremental is bitmap with on-success
	bitmap    *block.DirtyBitmap
	mode      BitmapMode
	successor *block.DirtyBitmap // the source's writes since the job started
	roots     []*block.Root
	chunk     int64
	workers   int
	succeeded bool
}

// New returns the body of a blockdev-backup job.
func New(a Args) *Backup { return &Backup{a: a} }

// checkBitmap checks the bitmap arguments, with qsd's messages in qsd's
// order, and finds the bitmap on src.
func (b *Backup) checkBitmap(src *block.Node) error {
	a := b.a
	b.sync = a.Sync
	if a.BitmapMode != nil {
		b.mode = *a.BitmapMode
	}
	if (a.Sync == SyncBitmap || a.Sync == SyncIncremental) && a.Bitmap == nil {
		return fmt.Errorf("must provide a valid bitmap name for '%s' sync mode", a.Sync)
	}
	if a.Sync == SyncIncremental {
		if a.BitmapMode != nil && b.mode != BitmapOnSuccess {
			return fmt.Errorf("Bitmap sync mode must be '%s' when using sync mode '%s'", BitmapOnSuccess, a.Sync)
		}
		b.sync, b.mode = SyncBitmap, BitmapOnSuccess
	}
	if a.Bitmap == nil {
		if a.BitmapMode != nil {
			return errors.New("Cannot specify bitmap sync mode without a bitmap")
		}
		return nil
	}
	if b.bitmap = src.FindDirtyBitmap(*a.Bitmap); b.bitmap == nil {
		return fmt.Errorf("Bitmap '%s' could not be found", *a.Bitmap)
	}
	if b.mode == "" {
		return errors.New("Bitmap sync mode must be given when providing a bitmap")
	}
	if err := b.bitmap.CheckUse(block.UseBits); err != nil {
		return err
	}
	if a.Sync == SyncNone {
		return fmt.Errorf("sync mode '%s' does not produce meaningful bitmap outputs", a.Sync)
	}
	if b.mode == BitmapNever && b.sync != SyncBitmap {
		return fmt.Errorf("Bitmap sync mode '%s' has no meaningful effect when combined with sync mode '%s'", b.mode, a.Sync)
	}
	return nil
}

// Check implements jobs.Checker: qsd's checks, in qsd's order, and the
// copy-before-write filter, which qsd inserts before it creates the job.
func (b *Backup) Check(ctx context.Context, tx *block.Txn, j *jobs.Job) error {
	g := tx.Graph()
	src, err := g.FindNode(b.a.Device)
	if err != nil {
		return err
	}
	var tgt *block.Node
	if b.a.TargetOptions != nil {
		tgt, err = tx.Open(ctx, b.a.TargetOptions, false)
	} else {
		tgt, err = g.FindNode(b.a.Target)
	}
	if err != nil {
		return err
	}
	if err := b.checkBitmap(src); err != nil {
		return err
	}
	if err := checkNodes(b.a, src, tgt); err != nil {
		return err
	}
	if b.bitmap != nil && b.mode != BitmapNever {
		// The job will change the bitmap: it must not be read-only.
		if err := b.bitmap.CheckUse(block.ChangeBits); err != nil {
			return err
		}
	}
	if src.Size() != tgt.Size() {
		return errors.New("Source and target image have different sizes")
	}
	b.source, b.target = src, tgt
	if err := b.insertFilter(ctx, tx, src, tgt); err != nil {
		return err
	}
	b.chunk, b.workers = defaultChunk, defaultWorkers
	p := b.a.Perf
	if p.MaxChunk != nil && *p.MaxChunk != 0 {
		if *p.MaxChunk < b.bc.cluster {
			return fmt.Errorf("Required max-chunk (%d) is less than backup cluster size (%d)", *p.MaxChunk, b.bc.cluster)
		}
		b.chunk = min(b.chunk, *p.MaxChunk)
	}
	b.chunk = max(b.chunk/b.bc.cluster*b.bc.cluster, b.bc.cluster)
	if p.MaxWorkers != nil {
		b.workers = int(min(*p.MaxWorkers, defaultWorkers))
	}
	return nil
}

// checkNodes is what qsd checks of the two nodes and the performance
// options before it makes the filter.
func checkNodes(a Args, src, tgt *block.Node) error {
	if src == tgt {
		return errors.New("Source and target cannot be the same")
	}
	if a.Compress && !block.SkipFilters(tgt).Caps().Compressed {
		// compat(qsd-7.2): qsd names the target's device, which is ""
		// for every node of a storage daemon. Like qsd, it asks the
		// first node below the target's filters.
		return errors.New("Compression is not supported for this drive ")
	}
	if err := src.Blocked(block.OpBackupSource); err != nil {
		return err
	}
	if err := tgt.Blocked(block.OpBackupTarget); err != nil {
		return err
	}
	if w := a.Perf.MaxWorkers; w != nil && (*w < 1 || *w > math.MaxInt32) {
		return fmt.Errorf("max-workers must be between 1 and %d", math.MaxInt32)
	}
	if c := a.Perf.MaxChunk; c != nil && *c < 0 {
		return errors.New("max-chunk must be zero (which means no limit) or positive")
	}
	return nil
}

// insertFilter puts the copy-before-write filter above src, its users
// moved onto it.
func (b *Backup) insertFilter(ctx context.Context, tx *block.Txn, src, tgt *block.Node) error {
	opts := map[string]any{"driver": "copy-before-write", "file": src.Name(), "target": tgt.Name()}
	if name := b.a.FilterNodeName; name != nil {
		opts["node-name"] = *name
		if tx.Graph().Lookup(*name) != nil {
			// compat(qsd-7.2): bdrv_insert_node's prefix.
			return fmt.Errorf("Could not create node: Duplicate nodes with node-name='%s'", *name)
		}
	}
	raw, err := json.Marshal(opts)
	if err != nil {
		return err
	}
	if b.filter, err = tx.InsertFilter(ctx, src, raw, b.a.FilterNodeName == nil); err != nil {
		return err
	}
	b.bc, _ = copyOf(b.filter)
	b.bc.compress.Store(b.a.Compress)
	return nil
}

// Setup implements jobs.Setupper: the job takes the filter and the
// target, says what is to be copied and starts the bitmap's successor,
// all while the source is drained (no write can fall in between).
func (b *Backup) Setup(ctx context.Context, tx *block.Txn, j *jobs.Job) error {
	b.job = j
	for _, n := range []struct {
		node *block.Node
		name string
	}{{b.filter, "main node"}, {b.target, "target"}} {
		r, err := j.NewRoot(tx, n.node, n.name, 0, block.PermAll)
		if err != nil {
			return err
		}
		b.roots = append(b.roots, r)
	}
	if b.bitmap != nil {
		if err := b.startSuccessor(tx); err != nil {
			return err
		}
	}
	if b.sync == SyncBitmap {
		b.bc.bitmap.Clear()
		if err := b.bc.bitmap.Merge(b.bitmap); err != nil {
			return err
		}
	}
	b.bc.onCopied(j.AddProgress)
	j.SetTotal(b.bc.remaining())
	return nil
}

// startSuccessor marks the sync bitmap busy and freezes it: an
// anonymous successor records the writes from now on apart (QEMU's
// successor), so that the bitmap shows what it held when the job began,
// as qsd's does, and the two can be put together as bitmap-mode says
// at the end.
func (b *Backup) startSuccessor(tx *block.Txn) error {
	succ, err := b.source.AddDirtyBitmap("", b.bitmap.Granularity())
	if err != nil {
		return err
	}
	succ.SetRecording(b.bitmap.Recording())
	b.successor = succ
	b.bitmap.SetBusy(true)
	b.bitmap.SetFrozen(true)
	tx.OnUndo(func() {
		b.source.RemoveDirtyBitmap(succ)
		b.bitmap.SetBusy(false)
		b.bitmap.SetFrozen(false)
	})
	return nil
}

// Run implements jobs.Body.
func (b *Backup) Run(ctx context.Context, j *jobs.Job) error {
	if err := j.Yield(ctx); err != nil {
		return err
	}
	switch b.sync {
	case SyncNone:
		// Guest writes copy through the filter until the job is cancelled.
		for {
			if err := j.Sleep(ctx, time.Hour); err != nil {
				return err
			}
		}
	case SyncTop:
		if err := b.skipUnallocated(ctx); err != nil {
			return err
		}
	}
	c := jobs.Copy{Job: j, End: b.bc.size, Chunk: b.chunk, Parallel: b.workers, OwnProgress: true,
		Target: b.target, Extent: b.bc.extent,
		Do: func(ctx context.Context, off int64, buf []byte) error {
			return b.bc.copyRange(ctx, off, int64(len(buf)), buf)
		}}
	if err := c.Run(ctx); err != nil {
		return err
	}
	if err := b.target.Flush(ctx); err != nil {
		return jobs.WriteError(err)
	}
	return nil
}

// skipUnallocated marks clean what the source's top image does not
// allocate (sync=top), and the job's length shrinks to what is left.
func (b *Backup) skipUnallocated(ctx context.Context) error {
	top := block.SkipFilters(b.source)
	for off := int64(0); off < b.bc.size; {
		if err := b.job.Yield(ctx); err != nil {
			return err
		}
		alloc, n, err := block.IsAllocatedAbove(ctx, b.source, top, true, off, b.bc.size-off)
		if err != nil {
			if b.job.IOError(err, true) == jobs.ActionReport {
				return err
			}
			continue
		}
		if !alloc {
			b.bc.bitmap.Reset(off, n)
			b.job.SetRemaining(b.bc.remaining())
		}
		off += n
	}
	return nil
}

// Prepare implements jobs.Finisher.
func (b *Backup) Prepare(ctx context.Context, tx *block.Txn) error { return nil }

// Commit implements jobs.Finisher: the job succeeded.
func (b *Backup) Commit() { b.succeeded = true }

// Abort implements jobs.Finisher: Clean undoes everything.
func (b *Backup) Abort(ctx context.Context, tx *block.Txn) {}

// Clean implements jobs.Cleaner: the filter goes, the job lets go of its
// nodes, and the sync bitmap becomes what bitmap-mode says.
func (b *Backup) Clean(ctx context.Context, tx *block.Txn) {
	if b.filter != nil {
		if err := tx.RemoveFilter(b.filter); err != nil {
			tx.Graph().Logger().WithError(err).Error("backup: removing the copy-before-write filter")
		}
		b.filter = nil
	}
	for _, r := range b.roots {
		b.job.ReleaseRoot(tx, r)
	}
	if b.bitmap == nil {
		return
	}
	tx.Drain(b.source) // no write between the bitmap's two steps
	// The successor holds the writes since the start; the frozen bitmap
	// what it held then.
	switch {
	case b.succeeded && b.mode != BitmapNever:
		b.bitmap.Restore(b.successor)
		// compat(qsd-7.2): the successor takes the bitmap's name, so the
		// bitmap now lists where the successor did.
		b.source.ReplaceDirtyBitmap(b.successor, b.bitmap)
	case b.mode == BitmapAlways:
		b.bitmap.Restore(b.successor)
		b.source.ReplaceDirtyBitmap(b.successor, b.bitmap)
		if err := b.bitmap.Merge(b.bc.bitmap); err != nil {
			tx.Graph().Logger().WithError(err).Error("backup: keeping what was not copied in the bitmap")
		}
	default:
		// What it held, and the writes since.
		if err := b.bitmap.Merge(b.successor); err != nil {
			tx.Graph().Logger().WithError(err).Error("backup: giving the bitmap back the writes since the start")
		}
	}
	b.source.RemoveDirtyBitmap(b.successor)
	b.bitmap.SetFrozen(false)
	b.bitmap.SetBusy(false)
}
