package qcow2

import (
	"context"
	"encoding/binary"

	"github.com/blockd/blockd/pkg/block"
)

// ChangeBackingFile implements block.BackingFileChanger: it rewrites the
// header so that it names a new backing file (stream, commit,
// change-backing-file). The graph calls it drained, under its lock.
//
// The header is rebuilt from the first cluster as it is on disk, not from
// the decoded header: fixed fields are updated in place elsewhere, and
// header extensions this driver does not know (or does not keep in
// memory, like the bitmaps directory pointer) must survive byte for byte.
// Only the backing format extension and the backing file name change.
func (q *image) ChangeBackingFile(ctx context.Context, name, format string) error {
	if err := q.usable(); err != nil {
		return err
	}
	if q.readOnly {
		return block.Errorf(block.ErrReadOnly, "Cannot change the backing file of qcow2 image '%s': the image is read-only", q.name)
	}
	if name == "" {
		format = ""
	}
	if len(name) > maxBackingName {
		// The specification's limit; QEMU refuses such a name (EINVAL).
		return block.Errorf(block.ErrInvalid, "Backing file name too long")
	}
	if len(format) > maxFormatName {
		// A longer one would make the image unreadable (see readExtensions).
		return block.Errorf(block.ErrInvalid, "Backing format name too long")
	}

	// Refuse a layout that does not fit before writing anything, the
	// cached tables included.
	q.mu.Lock()
	_, err := q.headerWithBackingLocked(ctx, name, format)
	q.mu.Unlock()
	if err != nil {
		return err
	}

	// The header may name the new backing only once everything the data
	// above it depends on is on disk: the guest data this image holds
	// (stream copied it in, commit relies on it) and the tables that map
	// it. Otherwise a crash could leave an overlay that reads through to a
	// backing which lacks what the old chain provided.
	if err := q.flushAll(ctx, true); err != nil {
		return err
	}
	if err := q.file.Flush(ctx); err != nil {
		return q.ioError("flush", err)
	}

	q.mu.Lock()
	defer q.mu.Unlock()
	if err := q.usable(); err != nil {
		return err
	}
	// Built again: writing back may have changed the header (the dirty
	// bit of lazy refcounts).
	buf, err := q.headerWithBackingLocked(ctx, name, format)
	if err != nil {
		return err
	}
	// One write, then a flush: a crash leaves the old header or the new
	// one. buf covers the old used area too, so no stale bytes of the old
	// name or extensions are left behind it.
	if err := q.file.WriteAt(ctx, buf, 0, 0); err != nil {
		return q.ioError("write", err)
	}
	if err := q.file.Flush(ctx); err != nil {
		return q.ioError("flush", err)
	}
	q.hdr.backingFile = name
	q.hdr.backingFormat = format
	q.hdr.backingOffset = be64(buf[8:])
	q.hdr.backingSize = be32(buf[16:])
	return nil
}

// headerWithBackingLocked reads the first cluster and builds the new one
// with headerWithBacking. q.mu must be held.
func (q *image) headerWithBackingLocked(ctx context.Context, name, format string) ([]byte, error) {
	old := make([]byte, q.clusterSize)
	if n := min(q.clusterSize, q.file.Size()); n > 0 {
		if err := q.file.ReadAt(ctx, old[:n], 0, 0); err != nil {
			return nil, q.ioError("read", err)
		}
	}
	return headerWithBacking(old, name, format)
}

// headerWithBacking returns the start of a new first cluster that names
// backing file name with format (name "": no backing file), given the
// whole current first cluster old. It writes nothing and fails if the
// result would not fit in the cluster.
//
// The layout: the fixed header [0, header_length) as it is but for
// backing_file_offset and backing_file_size; the backing format extension,
// if any; every other extension in its current order, byte for byte; the
// end-of-extensions marker; the backing file name. The result is long
// enough to also cover the area the old layout used, zeroed behind the
// new one.
func headerWithBacking(old []byte, name, format string) ([]byte, error) {
	h, err := parseHeader(old)
	if err != nil {
		return nil, err
	}
	clusterSize := len(old)
	hl := int(h.headerLength)

	// Walk the extensions as parseHeader did: they end at the backing file
	// name, or at the end marker.
	limit := clusterSize
	if h.backingOffset != 0 {
		limit = int(h.backingOffset)
	}
	var keep [][]byte
	off := hl
	for off+8 <= limit {
		typ := be32(old[off:])
		length := int(be32(old[off+4:]))
		size := 8 + (length+7)&^7
		if typ == extEnd {
			off += size
			break
		}
		if length > limit-off-8 {
			return nil, errHeader(block.ErrCorrupt, "Header extension too large")
		}
		if typ != extBackingFormat {
			ext := make([]byte, size)
			copy(ext, old[off:min(off+size, clusterSize)])
			keep = append(keep, ext)
		}
		off += size
	}
	oldEnd := min(off, clusterSize)
	if h.backingOffset != 0 {
		oldEnd = max(oldEnd, int(h.backingOffset)+int(h.backingSize))
	}

	buf := make([]byte, hl, clusterSize)
	copy(buf, old[:hl])
	if format != "" {
		ext := make([]byte, 8+(len(format)+7)&^7)
		binary.BigEndian.PutUint32(ext[0:], extBackingFormat)
		binary.BigEndian.PutUint32(ext[4:], uint32(len(format)))
		copy(ext[8:], format)
		keep = append([][]byte{ext}, keep...)
	}
	for _, ext := range keep {
		buf = append(buf, ext...)
	}
	buf = append(buf, make([]byte, 8)...) // the end-of-extensions marker
	var nameOff int
	if name != "" {
		nameOff = len(buf)
		buf = append(buf, name...)
	}
	if len(buf) > clusterSize {
		// QEMU fails its header update with ENOSPC here too.
		return nil, block.Errorf(block.ErrNoSpace, "Not enough space in the image header for the backing file name")
	}
	binary.BigEndian.PutUint64(buf[8:], uint64(nameOff))
	binary.BigEndian.PutUint32(buf[16:], uint32(len(name)))
	if len(buf) < oldEnd {
		buf = append(buf, make([]byte, oldEnd-len(buf))...)
	}

	// Read back what would be written, so that a mistake here can never
	// reach the disk as a header that does not open or says otherwise.
	whole := make([]byte, clusterSize)
	copy(whole, buf)
	nh, err := parseHeader(whole)
	if err != nil {
		return nil, block.Errorf(block.ErrInternal, "qcow2: the rewritten header does not read back: %s", err)
	}
	if nh.backingFile != name || nh.backingFormat != format {
		return nil, block.Errorf(block.ErrInternal, "qcow2: the rewritten header reads back backing file '%s' format '%s'", nh.backingFile, nh.backingFormat)
	}
	return buf, nil
}
