package qcow2

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"math/bits"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/blockd/blockd/pkg/block"
)

// image is one open qcow2 image: the driver's block.Impl.
type image struct {
	file    *block.Child
	backing *block.Child // nil: unallocated clusters read as zeroes
	node    *block.Node  // nil while blockdev-create writes an image
	name    string       // the image file's name, for messages
	log     logrus.FieldLogger

	// Geometry and settings; immutable after open.
	version      uint32
	clusterBits  uint
	clusterSize  int64
	extL2        bool
	l2EntryBytes int64 // 8, or 16 with extended L2 entries
	l2Bits       uint  // log2 of the entries of an L2 table
	subBits      uint  // log2 of the subclusters of a cluster: 0 or 5
	subSize      int64
	refOrder     uint
	refBits      uint
	rbBits       uint // log2 of the entries of a refcount block
	refMax       uint64
	compression  uint8
	csizeShift   uint
	csizeMask    uint64
	coffsetMask  uint64
	sliceBytes   int64 // L2 cache entry size
	readOnly     bool
	lazy         bool    // lazy refcounts in use
	passDiscard  [2]bool // indexed by freeKind: pass frees to the file as discards
	cleanEvery   time.Duration

	// ioGate is held shared by every request that does guest-data I/O on
	// the file, from the mapping lookup to the end of the I/O. Freed
	// clusters become reusable only after it was taken exclusively once,
	// so that no request still uses a cluster that changed owner.
	ioGate sync.RWMutex

	size   atomic.Int64          // virtual size
	broken atomic.Pointer[error] // set when fatal corruption was found

	// mu is the metadata mutex. It guards every field below and is held
	// for lookups and updates of the tables and for metadata I/O, never
	// across guest-data I/O to the file.
	mu          sync.Mutex
	hdr         header
	l1          []uint64
	reftable    []uint64
	l2c, rbc    *tableCache
	freeHint    int64 // no cluster below it is free
	fileEnd     int64 // bytes; clusters from here on were never written
	topCluster  int64 // no cluster above it has a nonzero refcount
	busy        map[int64]chan struct{}
	pending     []pendingFree
	dirtyMarked bool  // this instance set the dirty bit (lazy refcounts)
	freeByte    int64 // compressed data: the next free byte in a partly used host cluster (0: none)
	l2Set       map[int64]struct{}
	rbSet       map[int64]struct{}
	spans       []span // other metadata: header, L1, refcount table, snapshots, bitmaps
	snapshots   []snapshot
	snapBytes   int64 // the snapshot table's size in the file
	signaled    bool  // a corruption event was sent

	bitmaps []bitmapEntry // the bitmap directory as on disk (bitmaps.go); under mu

	stopClean chan struct{}
	cleanDone chan struct{}
}

// span is a range of the file holding metadata, for the overlap checks.
type span struct {
	off, end int64
	what     string
}

type freeKind int

const (
	freeRequest freeKind = iota // the guest discarded the cluster
	freeOther                   // overwritten or copied away
)

// pendingFree is a refcount decrement that waits until the metadata that
// dropped the reference is on disk and no request uses the range.
type pendingFree struct {
	off, n int64 // a cluster-aligned range, or a compressed cluster's bytes
	kind   freeKind
	l2     bool // the range is an L2 table
}

// cleanHook, if set, runs after each clean pass (tests).
var cleanHook func()

// newTicker makes the cache-clean ticker; tests replace it.
var newTicker = func(d time.Duration) (<-chan time.Time, func()) {
	t := time.NewTicker(d)
	return t.C, t.Stop
}

func open(ctx context.Context, o *block.Opener, opts *Options) (block.Impl, error) {
	c, err := o.Attach(ctx, "file", opts.File, block.RoleImage)
	if err != nil {
		return nil, err
	}
	q, err := load(ctx, c, o.ReadOnly(), opts)
	if err != nil {
		return nil, err
	}
	q.node = o.Node()
	q.log = o.Logger()
	switch {
	case opts.Backing == nil:
		if q.hdr.backingFile != "" {
			if q.backing, err = o.AttachBacking(ctx, q.hdr.backingFile, q.hdr.backingFormat); err != nil {
				return nil, err
			}
		}
	case opts.Backing.Null:
	default:
		if q.backing, err = o.Attach(ctx, "backing", opts.Backing.NodeRef, block.RoleCOW); err != nil {
			return nil, err
		}
	}
	if err := q.loadBitmaps(ctx); err != nil {
		return nil, err
	}
	if !q.readOnly {
		if err := q.prepareWrite(ctx); err != nil {
			return nil, err
		}
	}
	q.startCleaner()
	return q, nil
}

// load reads and checks an image's header and tables. It writes nothing.
func load(ctx context.Context, c *block.Child, readOnly bool, opts *Options) (*image, error) {
	q := &image{file: c, readOnly: readOnly, name: c.Node().Filename(), busy: map[int64]chan struct{}{}}
	if q.log == nil {
		q.log = c.Node().Graph().Logger()
	}
	fileSize := c.Size()
	head := make([]byte, min(max(fileSize, v3HeaderLen), 4096))
	if err := c.ReadAt(ctx, head, 0, 0); err != nil {
		return nil, fmt.Errorf("Could not read qcow2 header: %w", err)
	}
	cb, ok := peekClusterBits(head)
	if ok && cb >= minClusterBits && cb <= maxClusterBits && int64(1)<<cb > int64(len(head)) && fileSize > int64(len(head)) {
		head = make([]byte, min(int64(1)<<cb, fileSize))
		if err := c.ReadAt(ctx, head, 0, 0); err != nil {
			return nil, fmt.Errorf("Could not read qcow2 header: %w", err)
		}
	}
	h, err := parseHeader(head)
	if err != nil {
		return nil, err
	}
	q.hdr = *h
	if err := q.setGeometry(); err != nil {
		return nil, err
	}
	if err := q.checkOptions(opts); err != nil {
		return nil, err
	}
	if h.incompat&incompatCorrupt != 0 && !readOnly {
		return nil, errHeader(block.ErrCorrupt, "qcow2: Image is corrupt; cannot be opened read/write")
	}
	if err := q.checkTables(); err != nil {
		return nil, err
	}
	cc, err := cacheSizes(opts, q.clusterSize, int64(h.size), q.l2EntryBytes)
	if err != nil {
		return nil, err
	}
	q.sliceBytes = cc.l2EntrySize
	q.l2c = newTableCache(cc.l2EntrySize, cc.l2Entries)
	q.rbc = newTableCache(q.clusterSize, cc.rbEntries)
	q.cleanEvery = time.Duration(cc.cleanSeconds) * time.Second

	q.lazy = h.compat&compatLazyRefcounts != 0
	if opts.LazyRefcounts != nil {
		q.lazy = *opts.LazyRefcounts
	}
	if q.lazy && q.version < 3 {
		return nil, errHeader(block.ErrInvalid, "Lazy refcounts require a qcow2 image with at least qemu 1.1 compatibility level")
	}
	// pass-discard-request follows the node's discard option, as in QEMU:
	// the block layer only hands discards down with discard=unmap.
	q.passDiscard[freeRequest] = true
	if opts.PassDiscardRequest != nil {
		q.passDiscard[freeRequest] = *opts.PassDiscardRequest
	}
	if opts.PassDiscardOther != nil {
		q.passDiscard[freeOther] = *opts.PassDiscardOther
	}

	if q.l1, err = q.readTable(ctx, int64(h.l1Offset), int64(h.l1Size)); err != nil {
		return nil, err
	}
	q.event(block.DebugReftableLoad)
	if q.reftable, err = q.readTable(ctx, int64(h.rtOffset), int64(h.rtClusters)<<q.clusterBits/8); err != nil {
		return nil, err
	}
	if err := q.loadSnapshots(ctx); err != nil {
		return nil, err
	}
	q.buildMetaSets(ctx)
	q.size.Store(int64(h.size))
	q.fileEnd = alignUp(fileSize, q.clusterSize)
	return q, nil
}

func (q *image) setGeometry() error {
	h := &q.hdr
	q.version = h.version
	q.clusterBits = uint(h.clusterBits)
	q.clusterSize = 1 << q.clusterBits
	q.extL2 = h.incompat&incompatExtL2 != 0
	q.l2EntryBytes = 8
	if q.extL2 {
		q.l2EntryBytes = 16
		q.subBits = 5
	}
	q.l2Bits = q.clusterBits - uint(bits.TrailingZeros64(uint64(q.l2EntryBytes)))
	q.subSize = q.clusterSize >> q.subBits
	q.refOrder = uint(h.refcountOrder)
	q.refBits = 1 << q.refOrder
	q.rbBits = q.clusterBits + 3 - q.refOrder
	if q.refBits == 64 {
		q.refMax = math.MaxUint64
	} else {
		q.refMax = 1<<q.refBits - 1
	}
	q.compression = h.compressionType
	q.csizeShift = 62 - (q.clusterBits - 8)
	q.csizeMask = 1<<(q.clusterBits-8) - 1
	q.coffsetMask = 1<<q.csizeShift - 1
	return nil
}

// checkOptions refuses options blockd does not implement, with the
// messages QEMU gives when they do not match the image.
func (q *image) checkOptions(opts *Options) error {
	h := &q.hdr
	switch h.cryptMethod {
	case 0:
		if opts.Encrypt != nil {
			return errHeader(block.ErrInvalid, "No encryption in image header, but options specified format '%s'", opts.Encrypt.Format)
		}
	case 1, 2:
		return errHeader(block.ErrNotSupported, "Encrypted qcow2 images are not supported by blockd")
	default:
		return errHeader(block.ErrNotSupported, "Unsupported encryption method %d", h.cryptMethod)
	}
	if opts.DataFile != nil && h.incompat&incompatDataFile == 0 {
		return errHeader(block.ErrInvalid, "'data-file' can only be set for images with an external data file")
	}
	return nil
}

// validTableOffset applies QEMU's rule for table offsets: cluster aligned,
// and the table's end representable.
func (q *image) validTableOffset(off uint64, entries, entryLen uint64) bool {
	if off&uint64(q.clusterSize-1) != 0 {
		return false
	}
	if entries > math.MaxInt64/entryLen {
		return false
	}
	return off <= math.MaxInt64-entries*entryLen
}

func (q *image) checkTables() error {
	h := &q.hdr
	if uint64(h.rtClusters)<<q.clusterBits > maxRefTableBytes {
		return errHeader(block.ErrInvalid, "Reference count table too large")
	}
	if h.rtClusters == 0 {
		// Nothing could be allocated: QEMU refuses it at open, before
		// looking at the offset.
		return errHeader(block.ErrInvalid, "Image does not contain a reference count table")
	}
	if !q.validTableOffset(h.rtOffset, uint64(h.rtClusters)<<q.clusterBits, 1) {
		return errHeader(block.ErrCorrupt, "Reference count table offset invalid")
	}
	if h.nbSnapshots > maxSnapshots {
		return errHeader(block.ErrInvalid, "Snapshot table too large")
	}
	if h.nbSnapshots > 0 && !q.validTableOffset(h.snapshotsOffset, uint64(h.nbSnapshots), 1024) {
		return errHeader(block.ErrCorrupt, "Snapshot table offset invalid")
	}
	if uint64(h.l1Size) > maxL1Bytes/8 {
		return errHeader(block.ErrInvalid, "Active L1 table too large")
	}
	if h.size > math.MaxInt64 {
		return errHeader(block.ErrInvalid, "Image is too big")
	}
	need := q.l1Needed(int64(h.size))
	if need > math.MaxInt32 {
		return errHeader(block.ErrInvalid, "Image is too big")
	}
	if int64(h.l1Size) < need {
		return errHeader(block.ErrCorrupt, "L1 table is too small")
	}
	if h.l1Size > 0 && !q.validTableOffset(h.l1Offset, uint64(h.l1Size), 8) {
		return errHeader(block.ErrCorrupt, "Active L1 table offset invalid")
	}
	if h.hasDataFile && h.incompat&incompatDataFile == 0 {
		// A data file name without the feature bit is ignored, as in QEMU.
		h.hasDataFile = false
	}
	if h.hasBitmaps && h.autoclear&autoclearBitmaps != 0 {
		b := h.bitmaps
		if b.dirOffset&uint64(q.clusterSize-1) != 0 || b.dirSize > 64<<20 || b.dirOffset > math.MaxInt64-b.dirSize {
			return errHeader(block.ErrCorrupt, "Bitmaps extension: invalid bitmap directory offset or size")
		}
	}
	return nil
}

// l1Needed is the number of L1 entries that map size bytes.
func (q *image) l1Needed(size int64) int64 {
	shift := q.clusterBits + q.l2Bits
	return int64((uint64(size) + (uint64(1)<<shift - 1)) >> shift)
}

// readTable reads n big-endian 64-bit entries at off.
func (q *image) readTable(ctx context.Context, off, n int64) ([]uint64, error) {
	if n == 0 {
		return nil, nil
	}
	buf := make([]byte, n*8)
	if err := q.file.ReadAt(ctx, buf, off, 0); err != nil {
		return nil, q.ioError("read", err)
	}
	t := make([]uint64, n)
	for i := range t {
		t[i] = binary.BigEndian.Uint64(buf[i*8:])
	}
	return t, nil
}

// buildMetaSets records where the metadata lives, for the overlap checks.
// Inactive (snapshot) L2 tables are included: a data write into one would
// destroy a snapshot.
func (q *image) buildMetaSets(ctx context.Context) {
	h := &q.hdr
	q.l2Set = map[int64]struct{}{}
	q.rbSet = map[int64]struct{}{}
	q.spans = append(q.spans, span{0, q.clusterSize, "qcow2 header"})
	if h.l1Size > 0 {
		q.spans = append(q.spans, span{int64(h.l1Offset), int64(h.l1Offset) + int64(h.l1Size)*8, "active L1 table"})
	}
	q.spans = append(q.spans, span{int64(h.rtOffset), int64(h.rtOffset) + int64(h.rtClusters)<<q.clusterBits, "refcount table"})
	for _, e := range q.l1 {
		if off := int64(e & l1OffsetMask); off != 0 {
			q.l2Set[off] = struct{}{}
		}
	}
	for _, e := range q.reftable {
		if off := int64(e & refOffsetMask); off != 0 {
			q.rbSet[off] = struct{}{}
		}
	}
	budget := int64(maxL1Bytes / 8) // inactive L1 entries read for the overlap checks
	fileSize := q.file.Size()
	for _, s := range q.snapshots {
		if s.l1Size == 0 {
			continue
		}
		q.spans = append(q.spans, span{s.l1Offset, s.l1Offset + s.l1Size*8, "inactive L1 table"})
		if s.l1Size > budget || s.l1Offset+s.l1Size*8 > fileSize {
			continue
		}
		budget -= s.l1Size
		if t, err := q.readTable(ctx, s.l1Offset, s.l1Size); err == nil {
			for _, e := range t {
				if off := int64(e & l1OffsetMask); off != 0 {
					q.l2Set[off] = struct{}{}
				}
			}
		}
	}
	if h.hasBitmaps && h.autoclear&autoclearBitmaps != 0 && h.bitmaps.dirSize > 0 {
		q.spans = append(q.spans, span{int64(h.bitmaps.dirOffset), int64(h.bitmaps.dirOffset + h.bitmaps.dirSize), "bitmap directory"})
	}
	q.sortSpans()
}

func (q *image) sortSpans() {
	sort.Slice(q.spans, func(i, j int) bool { return q.spans[i].off < q.spans[j].off })
}

// overlapLocked names the metadata that [off, off+n) overlaps, or "".
func (q *image) overlapLocked(off, n int64) string {
	end := off + n
	for _, s := range q.spans {
		if s.off >= end {
			break
		}
		if s.end > off {
			return s.what
		}
	}
	for c := off &^ (q.clusterSize - 1); c < end; c += q.clusterSize {
		if _, ok := q.l2Set[c]; ok {
			return "L2 table"
		}
		if _, ok := q.rbSet[c]; ok {
			return "refcount block"
		}
	}
	return ""
}

// prepareWrite readies an image opened read-write: it repairs the
// refcounts of a dirty image, clears the autoclear bits this driver
// does not maintain and marks the persistent bitmaps in use.
func (q *image) prepareWrite(ctx context.Context) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.hdr.incompat&incompatDirty != 0 {
		if err := q.rebuildRefcountsLocked(ctx); err != nil {
			return fmt.Errorf("Could not repair dirty image: %w", err)
		}
		if err := q.setIncompatLocked(ctx, q.hdr.incompat&^incompatDirty); err != nil {
			return err
		}
	}
	if keep := q.keptAutoclear(); q.hdr.autoclear&^keep != 0 && q.version >= 3 {
		// There is no external data file (bit 1), and bitmaps (bit 0) are
		// kept only when they were loaded: per the specification, a
		// writer clears the bits it does not maintain before it writes.
		var b [8]byte
		binary.BigEndian.PutUint64(b[:], q.hdr.autoclear&keep)
		if err := q.file.WriteAt(ctx, b[:], offAutoclear, 0); err != nil {
			return q.ioError("write", err)
		}
		if err := q.file.Flush(ctx); err != nil {
			return q.ioError("flush", err)
		}
		q.hdr.autoclear &= keep
	}
	if err := q.markBitmapsInUseLocked(ctx); err != nil {
		return err
	}
	return q.findTopLocked(ctx)
}

// findTopLocked finds the highest cluster inside the file with a nonzero
// refcount.
func (q *image) findTopLocked(ctx context.Context) error {
	q.topCluster = 0
	last := q.fileEnd>>q.clusterBits - 1
	for i := min(int64(len(q.reftable))-1, last>>q.rbBits); i >= 0; i-- {
		if q.reftable[i]&refOffsetMask == 0 {
			continue
		}
		e, err := q.rbEntryLocked(ctx, i)
		if err != nil {
			return err
		}
		for j := min(int64(1)<<q.rbBits-1, last-i<<q.rbBits); j >= 0; j-- {
			if q.refcountIn(e.buf, j) != 0 {
				q.topCluster = i<<q.rbBits + j
				return nil
			}
		}
	}
	return nil
}

// setIncompatLocked writes the incompatible features field and flushes.
func (q *image) setIncompatLocked(ctx context.Context, v uint64) error {
	if q.version < 3 {
		q.hdr.incompat = v
		return nil
	}
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], v)
	if err := q.file.WriteAt(ctx, b[:], offIncompatible, 0); err != nil {
		return q.ioError("write", err)
	}
	if err := q.file.Flush(ctx); err != nil {
		return q.ioError("flush", err)
	}
	q.hdr.incompat = v
	return nil
}

// markDirtyLocked sets the dirty bit before the first metadata change of
// an image with lazy refcounts: from then on refcounts on disk may lag,
// and the next writer rebuilds them.
func (q *image) markDirtyLocked(ctx context.Context) error {
	if !q.lazy || q.dirtyMarked {
		return nil
	}
	if err := q.setIncompatLocked(ctx, q.hdr.incompat|incompatDirty); err != nil {
		return err
	}
	q.dirtyMarked = true
	return nil
}

func (q *image) startCleaner() {
	if q.cleanEvery <= 0 || q.readOnly && q.l2c == nil {
		return
	}
	tick, stop := newTicker(q.cleanEvery)
	q.stopClean = make(chan struct{})
	q.cleanDone = make(chan struct{})
	go func() {
		defer close(q.cleanDone)
		defer stop()
		for {
			select {
			case <-tick:
				q.mu.Lock()
				q.l2c.clean()
				q.rbc.clean()
				q.mu.Unlock()
				if cleanHook != nil {
					cleanHook()
				}
			case <-q.stopClean:
				return
			}
		}
	}()
}

func (q *image) stopCleaner() {
	if q.stopClean != nil {
		close(q.stopClean)
		<-q.cleanDone
		q.stopClean = nil
	}
}

// ioError wraps an error of the file child with the image's name.
func (q *image) ioError(op string, err error) error {
	if errors.Is(err, block.ErrCorrupt) {
		return err
	}
	return fmt.Errorf("qcow2 image '%s': %s failed: %w", q.name, op, err)
}

// usable fails requests on an image that was found corrupt.
func (q *image) usable() error {
	if p := q.broken.Load(); p != nil {
		return *p
	}
	return nil
}

func init() { block.DeclareEvent("BLOCK_IMAGE_CORRUPTED", CorruptedEvent{}) }

// CorruptedEvent declares the data corruptLocked emits with
// BLOCK_IMAGE_CORRUPTED (qsd has no devices: device is always "").
type CorruptedEvent struct {
	Device   string `json:"device"`
	NodeName string `json:"node-name,omitempty"`
	Msg      string `json:"msg"`
	Offset   *int64 `json:"offset,omitempty"`
	Size     *int64 `json:"size,omitempty"`
	Fatal    bool   `json:"fatal"`
}

// cHex formats a number in a corruption message as QEMU does, with C's
// "%#x": zero is plain "0", not "0x0", so that "(L1 index: 0)" reads the
// same from both daemons.
func cHex(v int64) string {
	if v == 0 {
		return "0"
	}
	return fmt.Sprintf("%#x", v)
}

// corruptLocked reports corruption found at run time, the way QEMU does:
// one BLOCK_IMAGE_CORRUPTED event, and, if the image is writable, the
// corrupt bit set and every later request refused. off and n locate the
// problem in the file (-1: unknown).
func (q *image) corruptLocked(ctx context.Context, off, n int64, format string, a ...any) error {
	msg := fmt.Sprintf(format, a...)
	fatal := !q.readOnly
	err := block.Errorf(block.ErrCorrupt, "qcow2 image '%s' is corrupt: %s", q.name, msg)
	if !q.signaled {
		q.signaled = true
		if q.node != nil {
			data := map[string]any{"device": "", "node-name": q.node.Name(), "msg": msg, "fatal": fatal}
			if off >= 0 {
				data["offset"] = off
			}
			if n >= 0 {
				data["size"] = n
			}
			q.node.Graph().Emit("BLOCK_IMAGE_CORRUPTED", data)
		}
		q.log.WithField("image", q.name).Errorf("qcow2: marking image as corrupt: %s", msg)
	}
	if fatal && q.broken.Load() == nil {
		q.broken.Store(&err)
		if q.version >= 3 {
			// The only write into a corrupt image: the bit that says so.
			var b [8]byte
			binary.BigEndian.PutUint64(b[:], q.hdr.incompat|incompatCorrupt)
			if werr := q.file.WriteAt(ctx, b[:], offIncompatible, 0); werr == nil {
				q.hdr.incompat |= incompatCorrupt
				_ = q.file.Flush(ctx)
			}
		}
	}
	return err
}

// Caps implements block.Impl.
func (q *image) Caps() block.Caps {
	return block.Caps{
		Zero:        q.version >= 3,
		Discard:     true,
		BlockStatus: true,
		Compressed:  true,
		Limits:      block.Limits{RequestAlign: 1, OptimalTransfer: q.clusterSize},
	}
}

// Size implements block.Impl.
func (q *image) Size(ctx context.Context) (int64, error) { return q.size.Load(), nil }

// BackingFile implements block.BackingFiler.
func (q *image) BackingFile() (name, format string) {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.hdr.backingFile, q.hdr.backingFormat
}

// ImageInfo implements block.Infoer.
func (q *image) ImageInfo(ctx context.Context) block.ImageInfo {
	q.mu.Lock()
	defer q.mu.Unlock()
	dirty := q.hdr.incompat&incompatDirty != 0
	data := map[string]any{
		"compression-type": []string{"zlib", "zstd"}[q.compression],
		"refcount-bits":    int64(q.refBits),
	}
	if q.version >= 3 {
		data["compat"] = "1.1"
		data["lazy-refcounts"] = q.hdr.compat&compatLazyRefcounts != 0
		data["corrupt"] = q.hdr.incompat&incompatCorrupt != 0
		data["extended-l2"] = q.extL2
	} else {
		data["compat"] = "0.10"
	}
	if b := q.bitmapInfoLocked(); b != nil {
		data["bitmaps"] = b
	}
	return block.ImageInfo{
		ClusterSize:    q.clusterSize,
		DirtyFlag:      &dirty,
		FormatSpecific: map[string]any{"type": "qcow2", "data": data},
	}
}

// DrainBegin implements block.Drainer. A graph change is about to happen,
// possibly the removal of this node, after which the block layer closes
// the file child before this node's Close: so write the caches back now.
// (See the report: pkg/block closes children before their parent.)
func (q *image) DrainBegin() {
	if q.readOnly || q.usable() != nil {
		return
	}
	ctx := context.Background()
	if err := q.flushAll(ctx, false); err != nil {
		q.log.WithError(err).Warn("qcow2: writing back metadata on drain")
	}
}

// DrainEnd implements block.Drainer.
func (q *image) DrainEnd() {}

// Close implements block.Impl.
func (q *image) Close() error {
	q.stopCleaner()
	if q.readOnly || q.usable() != nil {
		return nil
	}
	ctx := context.Background()
	if err := q.storeBitmaps(ctx); err != nil {
		// The bitmaps stay marked in use in the image: inconsistent at
		// the next open, which is the truth.
		q.log.WithError(err).Warn("qcow2: persistent bitmaps not stored")
	}
	return q.flushAll(ctx, true)
}

// flushAll writes every dirty table, applies the pending frees when no
// request is in flight (or, with wait, after waiting for them), and
// clears the dirty bit this instance set. It leaves a clean image.
func (q *image) flushAll(ctx context.Context, wait bool) error {
	q.mu.Lock()
	idle := q.l2c.dirty == 0 && q.rbc.dirty == 0 && len(q.pending) == 0 && !q.dirtyMarked
	q.trimFileLocked(ctx)
	q.mu.Unlock()
	if idle {
		return nil
	}
	if err := q.flush(ctx, wait); err != nil {
		return err
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if !q.dirtyMarked || len(q.pending) > 0 || q.l2c.dirty > 0 || q.rbc.dirty > 0 {
		return nil
	}
	if err := q.setIncompatLocked(ctx, q.hdr.incompat&^incompatDirty); err != nil {
		return err
	}
	q.dirtyMarked = false
	return nil
}

func alignUp(x, a int64) int64   { return (x + a - 1) &^ (a - 1) }
func alignDown(x, a int64) int64 { return x &^ (a - 1) }
