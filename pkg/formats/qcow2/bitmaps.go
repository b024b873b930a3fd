package qcow2

import (
	"context"
	"encoding/binary"
	"fmt"
	"math/bits"

	"github.com/blockd/blockd/pkg/block"
)

// Persistent dirty bitmaps: the image's bitmaps live on the node as
// block.DirtyBitmaps while it is open, and go back into the image when it
// closes or goes read-only.
//
//   - Open loads every bitmap of the directory onto the node, marked
//     persistent: recording if its auto flag is set; inconsistent (not
//     recording, bits not loaded) if its in-use flag is, as QEMU does.
//   - A read-write open (or a reopen to read-write) then sets the in-use
//     flag of every bitmap in the directory, in place, and keeps the
//     autoclear bit: if the process dies now, the next opener sees bitmaps
//     that may have missed writes and treats them as inconsistent.
//   - Store (close, reopen to read-only) writes the node's persistent,
//     consistent bitmaps afresh: data clusters and tables, then a new
//     directory, all allocated through the refcounts and flushed, and only
//     then the header extension that points at them; the old directory
//     and the old tables are freed last. A crash at any point leaves the
//     old bitmaps (marked in use) or the new ones, and at most leaked
//     clusters. Inconsistent bitmaps keep their entry as it is; entries
//     whose bitmap is no longer on the node (removed) are dropped.
//   - Limits the format cannot honour (name length, count, directory
//     size, bitmap size) are refused before anything is written.

// loadBitmaps puts the image's bitmaps on the node. It writes nothing.
func (q *image) loadBitmaps(ctx context.Context) error {
	h := &q.hdr
	if !h.hasBitmaps || h.autoclear&autoclearBitmaps == 0 || q.node == nil {
		// Without the autoclear bit a program that does not know bitmaps
		// wrote the image since: the directory is stale and ignored.
		return nil
	}
	entries, err := q.readBitmapDir(ctx)
	if err != nil {
		return err
	}
	size := q.size.Load()
	for _, e := range entries {
		b, err := q.node.AddDirtyBitmap(e.name, int64(1)<<e.granBits)
		if err != nil {
			return fmt.Errorf("qcow2 image '%s': loading bitmap '%s': %w", q.name, e.name, err)
		}
		b.Resize(size)
		b.SetPersistent(true)
		if e.flags&bmeInUse != 0 {
			b.SetInconsistent(true)
			b.SetRecording(false)
			continue
		}
		if err := q.loadBitmapData(ctx, b, e); err != nil {
			return err
		}
		b.SetRecording(e.flags&bmeAuto != 0)
	}
	q.bitmaps = entries
	return nil
}

// readBitmapDir reads and decodes the directory the header points at.
func (q *image) readBitmapDir(ctx context.Context) ([]bitmapEntry, error) {
	x := q.hdr.bitmaps
	if x.dirSize == 0 || x.dirSize > maxBitmapDirBytes || int64(x.dirOffset) > q.file.Size()-int64(x.dirSize) {
		return nil, bitmapDirError("the directory lies outside the image")
	}
	buf := make([]byte, x.dirSize)
	if err := q.file.ReadAt(ctx, buf, int64(x.dirOffset), 0); err != nil {
		return nil, q.ioError("read", err)
	}
	return parseBitmapDir(buf, x.nb, q.clusterSize)
}

// loadBitmapData reads a consistent bitmap's table and data into b.
func (q *image) loadBitmapData(ctx context.Context, b *block.DirtyBitmap, e bitmapEntry) error {
	if want := bitmapTableLen(b.Size(), e.granBits, q.clusterSize); int64(e.tableSize) != want {
		return bitmapDirError("bitmap '%s': its table has %d entries, the image's size needs %d", e.name, e.tableSize, want)
	}
	if e.tableOff+int64(e.tableSize)*8 > q.file.Size() {
		return bitmapDirError("bitmap '%s': its table lies outside the image", e.name)
	}
	t, err := q.readTable(ctx, e.tableOff, int64(e.tableSize))
	if err != nil {
		return err
	}
	buf := make([]byte, q.clusterSize)
	perCluster := q.clusterSize * 8 // granules
	for k, v := range t {
		if !checkBitmapTableEntry(v, q.clusterSize) {
			return bitmapDirError("bitmap '%s': invalid table entry %d", e.name, k)
		}
		first := int64(k) * perCluster
		switch off := int64(v & bteOffsetMask); {
		case off != 0:
			if off > q.file.Size()-q.clusterSize {
				return bitmapDirError("bitmap '%s': data cluster %d lies outside the image", e.name, k)
			}
			if err := q.file.ReadAt(ctx, buf, off, 0); err != nil {
				return q.ioError("read", err)
			}
			setBitsFromData(b, buf, first)
		case v&bteAllOnes != 0:
			b.Set(first*b.Granularity(), perCluster*b.Granularity())
		}
	}
	return nil
}

// keptAutoclear is the autoclear bits a writer keeps: the bitmaps bit
// while the image has a directory this driver maintains.
func (q *image) keptAutoclear() uint64 {
	if len(q.bitmaps) > 0 {
		return autoclearBitmaps
	}
	return 0
}

// markBitmapsInUseLocked sets the in-use flag of every bitmap in the
// directory, in place, before the first write of a read-write session.
func (q *image) markBitmapsInUseLocked(ctx context.Context) error {
	changed := false
	for i := range q.bitmaps {
		if q.bitmaps[i].flags&bmeInUse == 0 {
			q.bitmaps[i].flags |= bmeInUse
			changed = true
		}
	}
	if !changed {
		return nil
	}
	if err := q.file.WriteAt(ctx, encodeBitmapDir(q.bitmaps), int64(q.hdr.bitmaps.dirOffset), 0); err != nil {
		return q.ioError("write", err)
	}
	if err := q.file.Flush(ctx); err != nil {
		return q.ioError("flush", err)
	}
	return nil
}

// storeBitmaps writes the node's persistent bitmaps into the image (see
// the top of this file). The image is writable and the node drained.
func (q *image) storeBitmaps(ctx context.Context) error {
	if q.node == nil {
		return nil
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	plan, err := q.planBitmapStore(q.node.DirtyBitmaps())
	if err != nil || plan == nil {
		return err
	}
	var made [][2]int64 // clusters allocated so far: freed again on failure
	fail := func(err error) error {
		for _, r := range made {
			_ = q.freeRangeLocked(ctx, r[0], r[1], freeOther)
		}
		return err
	}
	for i, b := range plan.write {
		if b == nil {
			continue
		}
		e := &plan.entries[i]
		off, err := q.writeBitmapLocked(ctx, b, e.granBits, &made)
		if err != nil {
			return fail(fmt.Errorf("qcow2 image '%s': storing bitmap '%s': %w", q.name, e.name, err))
		}
		e.tableOff = off
		e.tableSize = uint32(bitmapTableLen(b.Size(), e.granBits, q.clusterSize))
	}
	if err := q.switchBitmapDirLocked(ctx, plan.entries, &made); err != nil {
		return fail(fmt.Errorf("qcow2 image '%s': storing bitmaps: %w", q.name, err))
	}
	return q.freeBitmapsLocked(ctx, plan.drop)
}

// bitmapPlan is what a store writes: the new directory (entries), for
// each entry the node's bitmap to write (nil: keep the entry's table as
// it is), and the old entries whose tables go.
type bitmapPlan struct {
	entries []bitmapEntry
	write   []*block.DirtyBitmap
	drop    []bitmapEntry
}

// planBitmapStore checks the node's bitmaps against the format's limits
// and plans the store; nil if there is nothing to do.
func (q *image) planBitmapStore(list []*block.DirtyBitmap) (*bitmapPlan, error) {
	byName := map[string]*block.DirtyBitmap{}
	for _, b := range list {
		if b.Persistent() && b.Name() != "" {
			byName[b.Name()] = b
		}
	}
	if len(byName) == 0 && len(q.bitmaps) == 0 {
		return nil, nil
	}
	if len(byName) > 0 && q.version < 3 {
		return nil, block.Errorf(block.ErrNotSupported, "Cannot store dirty bitmaps in qcow2 v2 files")
	}
	p := &bitmapPlan{}
	onDisk := map[string]bool{}
	for _, e := range q.bitmaps {
		onDisk[e.name] = true
		switch b := byName[e.name]; {
		case b == nil:
			p.drop = append(p.drop, e) // removed from the node
		case b.Inconsistent():
			p.entries = append(p.entries, e)
			p.write = append(p.write, nil)
		default:
			p.drop = append(p.drop, e)
			p.add(b)
		}
	}
	for _, b := range list {
		if byName[b.Name()] == b && !onDisk[b.Name()] && !b.Inconsistent() {
			p.add(b)
		}
	}
	return p, q.checkBitmapLimits(p)
}

func (p *bitmapPlan) add(b *block.DirtyBitmap) {
	e := bitmapEntry{name: b.Name(), granBits: uint8(bits.TrailingZeros64(uint64(b.Granularity())))}
	if b.Recording() {
		e.flags = bmeAuto
	}
	p.entries = append(p.entries, e)
	p.write = append(p.write, b)
}

// checkBitmapLimits refuses a directory the format cannot hold.
func (q *image) checkBitmapLimits(p *bitmapPlan) error {
	if len(p.entries) > maxBitmaps {
		return block.Errorf(block.ErrInvalid, "Too many persistent bitmaps: %d (qcow2 holds at most %d)", len(p.entries), maxBitmaps)
	}
	var dir int64
	for i, e := range p.entries {
		dir += bitmapDirEntryLen(len(e.name))
		if p.write[i] == nil {
			continue
		}
		if err := checkNewBitmap(e.name, p.write[i].Granularity()); err != nil {
			return err
		}
		if n := bitmapTableLen(p.write[i].Size(), e.granBits, q.clusterSize); n > maxBitmapTable || n*q.clusterSize > maxBitmapData {
			return block.Errorf(block.ErrInvalid, "Bitmap '%s' is too big", e.name)
		}
	}
	if dir > maxBitmapDirBytes {
		return block.Errorf(block.ErrInvalid, "Bitmap directory is too large")
	}
	return nil
}

// checkNewBitmap checks a bitmap's name and granularity against the
// format's limits.
func checkNewBitmap(name string, granularity int64) error {
	if name == "" || len(name) > maxBitmapName {
		return block.Errorf(block.ErrInvalid, "Bitmap '%.64s': the name is longer than %d bytes, the most qcow2 holds", name, maxBitmapName)
	}
	if granularity < 1<<minBitmapGranBits || granularity > 1<<maxBitmapGranBits {
		return block.Errorf(block.ErrInvalid, "Bitmap '%s': granularity %d is outside qcow2's range (512 B to 2 GiB)", name, granularity)
	}
	return nil
}

// CanStoreBitmap reports whether a new persistent bitmap called name with
// this granularity fits into the image beside the node's other persistent
// bitmaps (block-dirty-bitmap-add with persistent=true asks first).
func (q *image) CanStoreBitmap(name string, granularity int64) error {
	if q.version < 3 {
		return block.Errorf(block.ErrNotSupported, "Cannot store dirty bitmaps in qcow2 v2 files")
	}
	if err := checkNewBitmap(name, granularity); err != nil {
		return err
	}
	n, dir := 1, bitmapDirEntryLen(len(name))
	if q.node != nil {
		for _, b := range q.node.DirtyBitmaps() {
			if b.Persistent() {
				n++
				dir += bitmapDirEntryLen(len(b.Name()))
			}
		}
	}
	if n > maxBitmaps {
		return block.Errorf(block.ErrInvalid, "Maximum number of persistent bitmaps is already reached")
	}
	if dir > maxBitmapDirBytes {
		return block.Errorf(block.ErrInvalid, "Not enough space in the bitmap directory")
	}
	return nil
}

// RemovePersistentBitmap removes a bitmap from the image at once, as
// block-dirty-bitmap-remove does in QEMU; a name the image does not hold
// is no error. The caller removes it from the node.
func (q *image) RemovePersistentBitmap(ctx context.Context, name string) error {
	if q.readOnly {
		return block.Errorf(block.ErrReadOnly, "Cannot remove bitmap '%s' from read-only image '%s'", name, q.name)
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	var keep, drop []bitmapEntry
	for _, e := range q.bitmaps {
		if e.name == name {
			drop = append(drop, e)
		} else {
			keep = append(keep, e)
		}
	}
	if len(drop) == 0 {
		return nil
	}
	var made [][2]int64
	if err := q.switchBitmapDirLocked(ctx, keep, &made); err != nil {
		for _, r := range made {
			_ = q.freeRangeLocked(ctx, r[0], r[1], freeOther)
		}
		return err
	}
	return q.freeBitmapsLocked(ctx, drop)
}

// allocBytesLocked allocates contiguous clusters for n bytes and records
// them in made.
func (q *image) allocBytesLocked(ctx context.Context, n int64, made *[][2]int64) (int64, error) {
	c := (n + q.clusterSize - 1) >> q.clusterBits
	start, _, err := q.allocClustersLocked(ctx, c, true)
	if err != nil {
		return 0, err
	}
	off := start << q.clusterBits
	*made = append(*made, [2]int64{off, c << q.clusterBits})
	return off, nil
}

// writeBitmapLocked writes b's data clusters (those with a bit set; the
// others are left unallocated and read as zeroes) and its table; it
// returns the table's offset.
func (q *image) writeBitmapLocked(ctx context.Context, b *block.DirtyBitmap, granBits uint8, made *[][2]int64) (int64, error) {
	t := make([]byte, bitmapTableLen(b.Size(), granBits, q.clusterSize)*8)
	buf := make([]byte, q.clusterSize)
	perCluster := q.clusterSize * 8
	for k := range int64(len(t) / 8) {
		if !dataFromBits(b, buf, k*perCluster) {
			continue
		}
		off, err := q.allocBytesLocked(ctx, q.clusterSize, made)
		if err != nil {
			return 0, err
		}
		if err := q.writeMetaLocked(ctx, buf, off); err != nil {
			return 0, err
		}
		binary.BigEndian.PutUint64(t[k*8:], uint64(off))
	}
	if len(t) == 0 {
		return 0, nil
	}
	off, err := q.allocBytesLocked(ctx, int64(len(t)), made)
	if err != nil {
		return 0, err
	}
	return off, q.writeMetaLocked(ctx, t, off)
}

// writeMetaLocked writes metadata the overlap checks allow.
func (q *image) writeMetaLocked(ctx context.Context, p []byte, off int64) error {
	if what := q.overlapLocked(off, int64(len(p))); what != "" {
		return q.corruptLocked(ctx, off, int64(len(p)), "Preventing bitmap write at offset %#x: it overlaps the %s", off, what)
	}
	if err := q.file.WriteAt(ctx, p, off, 0); err != nil {
		return q.ioError("write", err)
	}
	return nil
}

// switchBitmapDirLocked writes entries as the new directory, makes
// everything written so far durable (data, tables, directory and their
// refcounts), then points the header at the new directory (or drops the
// extension and the autoclear bit if there is none) and frees the old
// directory.
func (q *image) switchBitmapDirLocked(ctx context.Context, entries []bitmapEntry, made *[][2]int64) error {
	var x bitmapsExt
	if len(entries) > 0 {
		dir := encodeBitmapDir(entries)
		off, err := q.allocBytesLocked(ctx, int64(len(dir)), made)
		if err != nil {
			return err
		}
		if err := q.writeMetaLocked(ctx, dir, off); err != nil {
			return err
		}
		x = bitmapsExt{nb: uint32(len(entries)), dirSize: uint64(len(dir)), dirOffset: uint64(off)}
	}
	if err := q.flushMetaLocked(ctx); err != nil {
		return err
	}
	if err := q.file.Flush(ctx); err != nil {
		return q.ioError("flush", err)
	}
	buf, err := q.headerWithBitmapsLocked(ctx, x)
	if err != nil {
		return err
	}
	if err := q.file.WriteAt(ctx, buf, 0, 0); err != nil {
		return q.ioError("write", err)
	}
	if err := q.file.Flush(ctx); err != nil {
		return q.ioError("flush", err)
	}
	// The header points at the new directory: nothing of the old one is
	// referenced any more, and nothing written is to be undone.
	*made = nil
	old := q.hdr.bitmaps
	hadDir := q.hdr.hasBitmaps && q.hdr.autoclear&autoclearBitmaps != 0 && old.dirSize > 0
	q.hdr.hasBitmaps = len(entries) > 0
	q.hdr.bitmaps = x
	q.hdr.autoclear = be64(buf[offAutoclear:])
	q.bitmaps = entries
	q.setBitmapDirSpan(x)
	if hadDir {
		return q.freeRangeLocked(ctx, alignDown(int64(old.dirOffset), q.clusterSize), alignUp(int64(old.dirSize), q.clusterSize), freeOther)
	}
	return nil
}

// setBitmapDirSpan moves the directory's overlap-check span.
func (q *image) setBitmapDirSpan(x bitmapsExt) {
	spans := q.spans[:0]
	for _, s := range q.spans {
		if s.what != "bitmap directory" {
			spans = append(spans, s)
		}
	}
	q.spans = spans
	if x.dirSize > 0 {
		q.spans = append(q.spans, span{int64(x.dirOffset), int64(x.dirOffset + x.dirSize), "bitmap directory"})
	}
	q.sortSpans()
}

// freeBitmapsLocked frees the tables and data clusters of entries that
// nothing on disk references any more.
func (q *image) freeBitmapsLocked(ctx context.Context, entries []bitmapEntry) error {
	for _, e := range entries {
		if e.tableSize == 0 || e.tableOff == 0 || e.tableOff+int64(e.tableSize)*8 > q.file.Size() {
			continue
		}
		t, err := q.readTable(ctx, e.tableOff, int64(e.tableSize))
		if err != nil {
			return err
		}
		for _, v := range t {
			if off := int64(v & bteOffsetMask); off != 0 && checkBitmapTableEntry(v, q.clusterSize) {
				if err := q.freeRangeLocked(ctx, off, q.clusterSize, freeOther); err != nil {
					return err
				}
			}
		}
		if err := q.freeRangeLocked(ctx, e.tableOff, alignUp(int64(e.tableSize)*8, q.clusterSize), freeOther); err != nil {
			return err
		}
	}
	return nil
}

// headerWithBitmapsLocked builds the first cluster with the bitmaps
// extension x (none if x.nb is 0) and the autoclear bit to match; every
// other extension and the backing file name stay as they are.
func (q *image) headerWithBitmapsLocked(ctx context.Context, x bitmapsExt) ([]byte, error) {
	old := make([]byte, q.clusterSize)
	if err := q.file.ReadAt(ctx, old[:min(q.clusterSize, q.file.Size())], 0, 0); err != nil {
		return nil, q.ioError("read", err)
	}
	h, err := parseHeader(old)
	if err != nil {
		return nil, err
	}
	// Every extension (the end marker is never among them), so that a
	// bitmaps extension is replaced where it is.
	exts, oldEnd, err := headerExtensions(old, h, extEnd)
	if err != nil {
		return nil, err
	}
	var ext []byte
	autoclear := h.autoclear &^ autoclearBitmaps
	if x.nb > 0 {
		var data [24]byte
		binary.BigEndian.PutUint32(data[0:], x.nb)
		binary.BigEndian.PutUint64(data[8:], x.dirSize)
		binary.BigEndian.PutUint64(data[16:], x.dirOffset)
		ext = encodeExtension(extBitmaps, data[:])
		autoclear |= autoclearBitmaps
	}
	exts = replaceExtension(exts, extBitmaps, ext)
	buf, err := assembleHeader(old, h, exts, h.backingFile, oldEnd)
	if err != nil {
		return nil, block.Errorf(block.ErrNoSpace, "Not enough space in the image header for the bitmaps extension")
	}
	binary.BigEndian.PutUint64(buf[offAutoclear:], autoclear)
	nh, err := parseHeader(padCluster(buf, len(old)))
	if err != nil || nh.backingFile != h.backingFile || nh.backingFormat != h.backingFormat || nh.bitmaps != x {
		return nil, block.Errorf(block.ErrInternal, "qcow2: the header with the new bitmaps extension does not read back (%v)", err)
	}
	return buf, nil
}

// bitmapInfo is what query-named-block-nodes and qemu-img info show of
// the image's bitmaps: the directory as it is on disk.
func (q *image) bitmapInfoLocked() []map[string]any {
	if len(q.bitmaps) == 0 {
		return nil
	}
	out := make([]map[string]any, 0, len(q.bitmaps))
	for _, e := range q.bitmaps {
		flags := []string{}
		if e.flags&bmeInUse != 0 {
			flags = append(flags, "in-use")
		}
		if e.flags&bmeAuto != 0 {
			flags = append(flags, "auto")
		}
		out = append(out, map[string]any{"name": e.name, "granularity": int64(1) << e.granBits, "flags": flags})
	}
	return out
}

// inconsistentBitmap names a persistent bitmap of the node whose bits
// were not loaded: the image cannot be resized under it (its entry keeps
// the old size), as in QEMU.
func (q *image) inconsistentBitmap() string {
	if q.node == nil {
		return ""
	}
	for _, b := range q.node.DirtyBitmaps() {
		if b.Persistent() && b.Inconsistent() {
			return b.Name()
		}
	}
	return ""
}

// replaceExtension puts ext in the place of the extension of type typ in
// exts, appends it if there is none, or removes that one if ext is nil.
func replaceExtension(exts [][]byte, typ uint32, ext []byte) [][]byte {
	for i, e := range exts {
		if be32(e) == typ {
			if ext == nil {
				return append(exts[:i], exts[i+1:]...)
			}
			exts[i] = ext
			return exts
		}
	}
	if ext != nil {
		exts = append(exts, ext)
	}
	return exts
}
