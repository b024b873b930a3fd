package qcow2

import (
	"context"
	"encoding/binary"
	"strconv"

	"github.com/blockd/blockd/pkg/block"
)

// The snapshot table: a contiguous run of variable-length entries, each
// naming the L1 table of one internal snapshot. Entries blockd did not
// write are kept byte for byte (other tools' extra data survives a
// rewrite of the table).

const (
	snapFixedLen    = 40       // the fixed part of an entry
	snapExtraLen    = 24       // the extra data blockd writes: VM state size, disk size, icount
	maxSnapExtra    = 1024     // QEMU's limit on an entry's extra data
	maxSnapTableLen = 64 << 20 // QEMU's limit on the whole table
)

// snapshot is one entry of the snapshot table.
type snapshot struct {
	l1Offset int64
	l1Size   int64
	info     block.InternalSnapshot
	raw      []byte // the entry as it is in the file, padding included
}

// loadSnapshots reads and checks the snapshot table. Every length comes
// from the file, so each is bounded before it is used.
func (q *image) loadSnapshots(ctx context.Context) error {
	h := &q.hdr
	q.snapshots = nil
	off := int64(h.snapshotsOffset)
	start := off
	for i := uint32(0); i < h.nbSnapshots; i++ {
		var fixed [snapFixedLen]byte
		if err := q.file.ReadAt(ctx, fixed[:], off, 0); err != nil {
			return q.ioError("read", err)
		}
		idLen := int64(binary.BigEndian.Uint16(fixed[12:]))
		nameLen := int64(binary.BigEndian.Uint16(fixed[14:]))
		extra := int64(be32(fixed[36:]))
		if extra > maxSnapExtra {
			return errHeader(block.ErrCorrupt, "Too much extra metadata in snapshot table entry %d", i)
		}
		n := alignUp(snapFixedLen+extra+idLen+nameLen, 8)
		if off+n-start > maxSnapTableLen {
			return errHeader(block.ErrCorrupt, "Snapshot table too large")
		}
		raw := make([]byte, n)
		copy(raw, fixed[:])
		if err := q.file.ReadAt(ctx, raw[snapFixedLen:snapFixedLen+extra+idLen+nameLen], off+snapFixedLen, 0); err != nil {
			return q.ioError("read", err)
		}
		s, err := decodeSnapshot(raw, extra, idLen, nameLen)
		if err != nil {
			return err
		}
		if !q.validTableOffset(uint64(s.l1Offset), uint64(s.l1Size), 8) {
			return errHeader(block.ErrCorrupt, "Snapshot L1 table offset invalid")
		}
		q.snapshots = append(q.snapshots, s)
		off += n
	}
	q.snapBytes = off - start
	if h.nbSnapshots > 0 {
		q.spans = append(q.spans, span{start, off, "snapshot table"})
	}
	return nil
}

// decodeSnapshot decodes an entry whose lengths were checked against the
// buffer.
func decodeSnapshot(raw []byte, extra, idLen, nameLen int64) (snapshot, error) {
	s := snapshot{l1Offset: int64(be64(raw[0:])), l1Size: int64(be32(raw[8:])), raw: raw}
	if s.l1Size > maxL1Bytes/8 {
		return s, errHeader(block.ErrCorrupt, "Snapshot L1 table too large")
	}
	x := raw[snapFixedLen : snapFixedLen+extra]
	inf := &s.info
	inf.DateSec = be32(raw[16:])
	inf.DateNsec = be32(raw[20:])
	inf.VMClockNsec = be64(raw[24:])
	inf.VMStateSize = uint64(be32(raw[32:]))
	if len(x) >= 8 {
		inf.VMStateSize = be64(x[0:])
	}
	if len(x) >= 16 {
		inf.DiskSize = be64(x[8:])
	}
	if len(x) >= 24 && be64(x[16:]) != ^uint64(0) {
		ic := be64(x[16:])
		inf.ICount = &ic
	}
	ids := raw[snapFixedLen+extra:]
	inf.ID = string(ids[:idLen])
	inf.Name = string(ids[idLen : idLen+nameLen])
	return s, nil
}

// encodeSnapshot builds the table entry of a new snapshot.
func encodeSnapshot(l1Offset, l1Size int64, inf block.InternalSnapshot) []byte {
	n := alignUp(int64(snapFixedLen+snapExtraLen+len(inf.ID)+len(inf.Name)), 8)
	b := make([]byte, n)
	binary.BigEndian.PutUint64(b[0:], uint64(l1Offset))
	binary.BigEndian.PutUint32(b[8:], uint32(l1Size))
	binary.BigEndian.PutUint16(b[12:], uint16(len(inf.ID)))
	binary.BigEndian.PutUint16(b[14:], uint16(len(inf.Name)))
	binary.BigEndian.PutUint32(b[16:], inf.DateSec)
	binary.BigEndian.PutUint32(b[20:], inf.DateNsec)
	binary.BigEndian.PutUint64(b[24:], inf.VMClockNsec)
	binary.BigEndian.PutUint32(b[32:], uint32(min(inf.VMStateSize, 0xffffffff)))
	binary.BigEndian.PutUint32(b[36:], snapExtraLen)
	x := b[snapFixedLen:]
	binary.BigEndian.PutUint64(x[0:], inf.VMStateSize)
	binary.BigEndian.PutUint64(x[8:], inf.DiskSize)
	ic := ^uint64(0)
	if inf.ICount != nil {
		ic = *inf.ICount
	}
	binary.BigEndian.PutUint64(x[16:], ic)
	copy(x[snapExtraLen:], inf.ID)
	copy(x[snapExtraLen+len(inf.ID):], inf.Name)
	return b
}

// InternalSnapshots implements block.InternalSnapshotter.
func (q *image) InternalSnapshots(ctx context.Context) ([]block.InternalSnapshot, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	out := make([]block.InternalSnapshot, len(q.snapshots))
	for i, s := range q.snapshots {
		out[i] = s.info
	}
	return out, nil
}

// nextSnapshotID is one more than the largest numeric ID, as QEMU numbers
// snapshots.
func (q *image) nextSnapshotID() string {
	var top uint64
	for _, s := range q.snapshots {
		if v, err := strconv.ParseUint(s.info.ID, 10, 64); err == nil && v > top {
			top = v
		}
	}
	return strconv.FormatUint(top+1, 10)
}

// findSnapshot is the index of the first snapshot with id and name, or -1.
func (q *image) findSnapshot(id, name string) int {
	for i, s := range q.snapshots {
		if s.info.ID == id && s.info.Name == name {
			return i
		}
	}
	return -1
}
