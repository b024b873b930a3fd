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
// result would not fit in the cluster. The backing format extension comes
// first, then every other extension in its current order, byte for byte
// (assembleHeader has the layout).
func headerWithBacking(old []byte, name, format string) ([]byte, error) {
	h, err := parseHeader(old)
	if err != nil {
		return nil, err
	}
	exts, oldEnd, err := headerExtensions(old, h, extBackingFormat)
	if err != nil {
		return nil, err
	}
	if format != "" {
		exts = append([][]byte{encodeExtension(extBackingFormat, []byte(format))}, exts...)
	}
	buf, err := assembleHeader(old, h, exts, name, oldEnd)
	if err != nil {
		return nil, err
	}
	// Read back what would be written, so that a mistake here can never
	// reach the disk as a header that does not open or says otherwise.
	nh, err := parseHeader(padCluster(buf, len(old)))
	if err != nil {
		return nil, block.Errorf(block.ErrInternal, "qcow2: the rewritten header does not read back: %s", err)
	}
	if nh.backingFile != name || nh.backingFormat != format {
		return nil, block.Errorf(block.ErrInternal, "qcow2: the rewritten header reads back backing file '%s' format '%s'", nh.backingFile, nh.backingFormat)
	}
	return buf, nil
}

// headerExtensions returns the header extensions of the first cluster old
// (h decoded from it) but those of type drop, each byte for byte with its
// padding, and the end of the area the old layout uses (extensions, end
// marker, backing file name).
func headerExtensions(old []byte, h *header, drop uint32) (exts [][]byte, oldEnd int, err error) {
	clusterSize := len(old)
	// Walk the extensions as parseHeader did: they end at the backing file
	// name, or at the end marker.
	limit := clusterSize
	if h.backingOffset != 0 {
		limit = int(h.backingOffset)
	}
	off := int(h.headerLength)
	for off+8 <= limit {
		typ := be32(old[off:])
		length := int(be32(old[off+4:]))
		size := 8 + (length+7)&^7
		if typ == extEnd {
			off += size
			break
		}
		if length > limit-off-8 {
			return nil, 0, errHeader(block.ErrCorrupt, "Header extension too large")
		}
		if typ != drop {
			ext := make([]byte, size)
			copy(ext, old[off:min(off+size, clusterSize)])
			exts = append(exts, ext)
		}
		off += size
	}
	oldEnd = min(off, clusterSize)
	if h.backingOffset != 0 {
		oldEnd = max(oldEnd, int(h.backingOffset)+int(h.backingSize))
	}
	return exts, oldEnd, nil
}

// encodeExtension returns a header extension, padded to 8 bytes.
func encodeExtension(typ uint32, data []byte) []byte {
	ext := make([]byte, 8+(len(data)+7)&^7)
	binary.BigEndian.PutUint32(ext[0:], typ)
	binary.BigEndian.PutUint32(ext[4:], uint32(len(data)))
	copy(ext[8:], data)
	return ext
}

// assembleHeader lays out the start of a new first cluster: the fixed
// header of old [0, header_length) as it is but for backing_file_offset
// and backing_file_size; exts; the end-of-extensions marker; the backing
// file name (name "": none). The result is long enough to also cover the
// area the old layout used (up to oldEnd), zeroed behind the new one. It
// fails if the result would not fit in the cluster.
func assembleHeader(old []byte, h *header, exts [][]byte, name string, oldEnd int) ([]byte, error) {
	clusterSize := len(old)
	hl := int(h.headerLength)
	buf := make([]byte, hl, clusterSize)
	copy(buf, old[:hl])
	for _, ext := range exts {
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
	return buf, nil
}

// padCluster returns buf zero-padded to a whole cluster, for parseHeader.
func padCluster(buf []byte, clusterSize int) []byte {
	whole := make([]byte, clusterSize)
	copy(whole, buf)
	return whole
}
