package qcow2

import (
	"context"
	"encoding/binary"
	"fmt"
	"maps"
	"slices"
	"syscall"

	"github.com/blockd/blockd/pkg/block"
)

// metaTxn builds a new version of an image's metadata beside the current
// one and switches to it with a single write of the header: snapshot
// create and delete change refcounts, the COPIED flags of the active
// tables and the snapshot table together, and qemu-img check counts any
// mismatch between a COPIED flag and its refcount as corruption. So
// nothing the current header reaches is written: changed refcount blocks,
// L2 tables whose flags change, the active L1 table, the refcount table
// and the snapshot table are all new copies, placed past the end of the
// file (free in both versions). A crash before the header write leaves
// the old image, after it the new one; at most the old copies leak.
//
// Everything runs with q.mu held and ioGate held exclusively, on an image
// whose caches were written back: the file is the truth.
type metaTxn struct {
	q      *image
	next   int64            // the next cluster the bump allocator hands out
	blocks map[int64][]byte // refcount block index -> new contents
	writes []metaWrite
	freed  []int64 // clusters whose refcount drops to 0
}

type metaWrite struct {
	off int64
	buf []byte
}

func (q *image) newMetaTxn() *metaTxn {
	return &metaTxn{q: q, next: q.fileEnd >> q.clusterBits, blocks: map[int64][]byte{}}
}

// errRefcount is a refcount change the image cannot take: an overflow
// (refcount_bits=1 cannot share a cluster) or a drop below zero.
func (m *metaTxn) errRefcount(c int64, what string) error {
	return fmt.Errorf("qcow2 image '%s': refcount of cluster %#x would %s: %w", m.q.name, c<<m.q.clusterBits, what, syscall.EINVAL)
}

// block returns the new contents of refcount block rt, copying the old
// block the first time.
func (m *metaTxn) block(ctx context.Context, rt int64) ([]byte, error) {
	if b := m.blocks[rt]; b != nil {
		return b, nil
	}
	b := make([]byte, m.q.clusterSize)
	off, err := m.q.rbOffsetLocked(ctx, rt)
	if err != nil {
		return nil, err
	}
	if off != 0 {
		if off >= m.q.fileEnd {
			return nil, block.Errorf(block.ErrCorrupt, "qcow2 image '%s': refcount block %#x beyond the end of the file", m.q.name, off)
		}
		if err := m.q.file.ReadAt(ctx, b, off, 0); err != nil {
			return nil, m.q.ioError("read", err)
		}
	}
	m.blocks[rt] = b
	return b, nil
}

// refcount is cluster c's refcount in the new version.
func (m *metaTxn) refcount(ctx context.Context, c int64) (uint64, error) {
	if b := m.blocks[c>>m.q.rbBits]; b != nil {
		return m.q.refcountIn(b, c&(1<<m.q.rbBits-1)), nil
	}
	return m.q.refcountLocked(ctx, c)
}

// add changes cluster c's refcount by d.
func (m *metaTxn) add(ctx context.Context, c, d int64) error {
	b, err := m.block(ctx, c>>m.q.rbBits)
	if err != nil {
		return err
	}
	i := c & (1<<m.q.rbBits - 1)
	v := m.q.refcountIn(b, i)
	switch {
	case d < 0 && v < uint64(-d):
		return m.errRefcount(c, "drop below 0")
	case d > 0 && m.q.refMax-v < uint64(d):
		return m.errRefcount(c, "overflow")
	}
	nv := uint64(int64(v) + d)
	m.q.setRefcountIn(b, i, nv)
	if nv == 0 && d < 0 {
		m.freed = append(m.freed, c)
	}
	return nil
}

// addRange changes the refcount of every cluster of [off, off+n) by d.
func (m *metaTxn) addRange(ctx context.Context, off, n, d int64) error {
	for c := off >> m.q.clusterBits; c<<m.q.clusterBits < off+n; c++ {
		if err := m.add(ctx, c, d); err != nil {
			return err
		}
	}
	return nil
}

// alloc hands out n contiguous clusters past everything the file holds,
// with refcount 1.
func (m *metaTxn) alloc(ctx context.Context, n int64) (int64, error) {
	start := m.next
	m.next += n
	for c := start; c < start+n; c++ {
		b, err := m.block(ctx, c>>m.q.rbBits)
		if err != nil {
			return 0, err
		}
		// Exactly 1: a cluster past the end may carry a leaked refcount.
		m.q.setRefcountIn(b, c&(1<<m.q.rbBits-1), 1)
	}
	return start << m.q.clusterBits, nil
}

// allocWrite allocates clusters for buf and queues buf to be written
// there.
func (m *metaTxn) allocWrite(ctx context.Context, buf []byte) (int64, error) {
	off, err := m.alloc(ctx, alignUp(int64(len(buf)), m.q.clusterSize)>>m.q.clusterBits)
	if err == nil {
		m.writes = append(m.writes, metaWrite{off, buf})
	}
	return off, err
}

// entryRefs calls f for each host cluster range an L2 entry refers to.
func (q *image) entryRefs(s cstate, f func(off, n int64) error) error {
	switch {
	case s.typ == ctCompressed:
		start := s.host &^ 511
		return f(start, alignUp(s.host+s.csize, 512)-start)
	case s.host != 0:
		return f(s.host, q.clusterSize)
	}
	return nil
}

// readL2Table reads a whole L2 table for a walk of a tree, checking where
// it is: a snapshot's L1 table comes from the file as it is.
func (q *image) readL2Table(ctx context.Context, off int64) ([]byte, error) {
	if off&(q.clusterSize-1) != 0 || off < q.clusterSize || off >= q.fileEnd {
		return nil, block.Errorf(block.ErrCorrupt, "qcow2 image '%s': L2 table offset %#x invalid", q.name, off)
	}
	b := make([]byte, q.clusterSize)
	if err := q.file.ReadAt(ctx, b, off, 0); err != nil {
		return nil, q.ioError("read", err)
	}
	return b, nil
}

// entryAt decodes entry i of an L2 table and checks it against the file.
func (q *image) entryAt(t []byte, i int64) (cstate, uint64, error) {
	w0 := binary.BigEndian.Uint64(t[i*q.l2EntryBytes:])
	var w1 uint64
	if q.extL2 {
		w1 = binary.BigEndian.Uint64(t[i*q.l2EntryBytes+8:])
	}
	s, problem := q.decode(w0, w1)
	if problem == "" && s.host >= q.fileEnd {
		problem = "beyond the end of the file"
	}
	if problem != "" {
		return s, w0, block.Errorf(block.ErrCorrupt, "qcow2 image '%s': L2 entry %#016x: %s", q.name, w0, problem)
	}
	return s, w0, nil
}

// addTree changes by d the refcount of every L2 table an L1 table points
// at and of every cluster those tables map: one tree of the image gained
// or lost (QEMU counts a cluster once per L1 table that reaches it).
func (m *metaTxn) addTree(ctx context.Context, l1 []uint64, d int64) error {
	q := m.q
	for _, e := range l1 {
		toff := int64(e & l1OffsetMask)
		if toff == 0 {
			continue
		}
		t, err := q.readL2Table(ctx, toff)
		if err != nil {
			return err
		}
		for i := int64(0); i < int64(1)<<q.l2Bits; i++ {
			s, _, err := q.entryAt(t, i)
			if err != nil {
				return err
			}
			if err := q.entryRefs(s, func(off, n int64) error { return m.addRange(ctx, off, n, d) }); err != nil {
				return err
			}
		}
		if err := m.add(ctx, toff>>q.clusterBits, d); err != nil {
			return err
		}
	}
	return nil
}

// activeL1 returns the new active L1 table: each entry's COPIED flag
// follows the new refcount of its L2 table, and an L2 table whose
// entries' flags must change is replaced by a corrected copy.
func (m *metaTxn) activeL1(ctx context.Context, old []uint64) ([]uint64, error) {
	q := m.q
	l1 := make([]uint64, len(old))
	for i, e := range old {
		toff := int64(e & l1OffsetMask)
		if toff == 0 {
			continue
		}
		t, err := q.readL2Table(ctx, toff)
		if err != nil {
			return nil, err
		}
		changed, err := m.fixCopied(ctx, t)
		if err != nil {
			return nil, err
		}
		if changed {
			off, err := m.allocWrite(ctx, t)
			if err != nil {
				return nil, err
			}
			if err := m.add(ctx, toff>>q.clusterBits, -1); err != nil {
				return nil, err
			}
			l1[i] = uint64(off) | oflagCopied
			continue
		}
		l1[i] = uint64(toff)
		if rc, err := m.refcount(ctx, toff>>q.clusterBits); err != nil {
			return nil, err
		} else if rc == 1 {
			l1[i] |= oflagCopied
		}
	}
	return l1, nil
}

// fixCopied sets each entry's COPIED flag of L2 table t from the new
// refcounts: set exactly when the entry's host cluster has refcount 1.
func (m *metaTxn) fixCopied(ctx context.Context, t []byte) (bool, error) {
	q := m.q
	changed := false
	for i := int64(0); i < int64(1)<<q.l2Bits; i++ {
		s, w0, err := q.entryAt(t, i)
		if err != nil {
			return false, err
		}
		if s.typ == ctCompressed || s.host == 0 {
			continue
		}
		rc, err := m.refcount(ctx, s.host>>q.clusterBits)
		if err != nil {
			return false, err
		}
		want := w0 &^ oflagCopied
		if rc == 1 {
			want |= oflagCopied
		}
		if want != w0 {
			binary.BigEndian.PutUint64(t[i*q.l2EntryBytes:], want)
			changed = true
		}
	}
	return changed, nil
}

// tableBytes is a table of 64-bit entries in bytes, padded to clusters.
func (q *image) tableBytes(t []uint64) []byte {
	b := make([]byte, alignUp(int64(len(t))*8, q.clusterSize))
	for i, v := range t {
		binary.BigEndian.PutUint64(b[i*8:], v)
	}
	return b
}

// refStructure places the new refcount blocks and a new refcount table,
// which count themselves and release the ones they replace. Each placement
// can touch another block, so it runs until nothing changes.
func (m *metaTxn) refStructure(ctx context.Context) (table []uint64, tableOff, tableClusters int64, err error) {
	q := m.q
	if err := m.addRange(ctx, int64(q.hdr.rtOffset), int64(q.hdr.rtClusters)<<q.clusterBits, -1); err != nil {
		return nil, 0, 0, err
	}
	placed := map[int64]int64{} // refcount block index -> new offset
	perCluster := q.clusterSize / 8
	for {
		progress := false
		for _, rt := range slices.Sorted(maps.Keys(m.blocks)) {
			if _, ok := placed[rt]; ok {
				continue
			}
			progress = true
			old, err := q.rbOffsetLocked(ctx, rt)
			if err != nil {
				return nil, 0, 0, err
			}
			if old != 0 {
				if err := m.add(ctx, old>>q.clusterBits, -1); err != nil {
					return nil, 0, 0, err
				}
			}
			if placed[rt], err = m.alloc(ctx, 1); err != nil {
				return nil, 0, 0, err
			}
		}
		if progress {
			continue
		}
		entries := int64(len(q.reftable))
		for rt := range m.blocks {
			entries = max(entries, rt+1)
		}
		tc := alignUp(entries, perCluster) / perCluster
		if tc<<q.clusterBits > maxRefTableBytes {
			return nil, 0, 0, fmt.Errorf("qcow2 image '%s': refcount table too large: %w", q.name, syscall.EFBIG)
		}
		if tableClusters == tc {
			break
		}
		// A run too small stays unused, at refcount 0.
		if err := m.addRange(ctx, tableOff, tableClusters<<q.clusterBits, -1); err != nil {
			return nil, 0, 0, err
		}
		tableClusters = tc
		if tableOff, err = m.alloc(ctx, tc); err != nil {
			return nil, 0, 0, err
		}
	}
	table = make([]uint64, tableClusters*perCluster)
	copy(table, q.reftable)
	for rt, off := range placed {
		table[rt] = uint64(off)
		m.writes = append(m.writes, metaWrite{off, m.blocks[rt]})
	}
	m.writes = append(m.writes, metaWrite{tableOff, q.tableBytes(table)})
	return table, tableOff, tableClusters, nil
}

// newVersion is what a metaTxn switches the image to.
type newVersion struct {
	l1        []uint64
	l1Off     int64
	snapshots []snapshot
}

// commit finishes the transaction: it places the refcount structure,
// writes every new cluster, flushes, and writes the header fields from
// l1_size to snapshots_offset at once. Then the image uses the new
// version.
func (m *metaTxn) commit(ctx context.Context, v newVersion) error {
	q := m.q
	size := 0
	for _, s := range v.snapshots {
		size += len(s.raw)
	}
	if size > maxSnapTableLen {
		return fmt.Errorf("qcow2 image '%s': snapshot table too large: %w", q.name, syscall.EFBIG)
	}
	tbl := make([]byte, 0, size)
	for _, s := range v.snapshots {
		tbl = append(tbl, s.raw...)
	}
	var tblOff int64
	if len(tbl) > 0 {
		var err error
		if tblOff, err = m.allocWrite(ctx, tbl); err != nil {
			return err
		}
	}
	if q.hdr.nbSnapshots > 0 {
		if err := m.addRange(ctx, int64(q.hdr.snapshotsOffset), q.snapBytes, -1); err != nil {
			return err
		}
	}
	reftable, rtOff, rtClusters, err := m.refStructure(ctx)
	if err != nil {
		return err
	}
	for _, w := range m.writes {
		if err := q.file.WriteAt(ctx, w.buf, w.off, 0); err != nil {
			return q.ioError("write", err)
		}
	}
	if err := q.file.Flush(ctx); err != nil {
		return q.ioError("flush", err)
	}
	var hb [36]byte
	binary.BigEndian.PutUint32(hb[0:], uint32(len(v.l1)))
	binary.BigEndian.PutUint64(hb[4:], uint64(v.l1Off))
	binary.BigEndian.PutUint64(hb[12:], uint64(rtOff))
	binary.BigEndian.PutUint32(hb[20:], uint32(rtClusters))
	binary.BigEndian.PutUint32(hb[24:], uint32(len(v.snapshots)))
	binary.BigEndian.PutUint64(hb[28:], uint64(tblOff))
	if err := q.file.WriteAt(ctx, hb[:], offL1, 0); err != nil {
		return q.ioError("write", err)
	}
	m.switchTo(ctx, v, reftable, rtOff, rtClusters, tblOff, int64(len(tbl)))
	if err := q.file.Flush(ctx); err != nil {
		return q.ioError("flush", err)
	}
	return nil
}

// switchTo makes the in-memory state follow the header just written.
func (m *metaTxn) switchTo(ctx context.Context, v newVersion, reftable []uint64, rtOff, rtClusters, tblOff, tblLen int64) {
	q := m.q
	h := &q.hdr
	for _, e := range q.reftable {
		if off := int64(e & refOffsetMask); off != 0 {
			q.rbc.dropRange(off, q.clusterSize)
		}
	}
	h.l1Size, h.l1Offset = uint32(len(v.l1)), uint64(v.l1Off)
	h.rtOffset, h.rtClusters = uint64(rtOff), uint32(rtClusters)
	h.nbSnapshots, h.snapshotsOffset = uint32(len(v.snapshots)), uint64(tblOff)
	q.l1, q.reftable, q.snapshots, q.snapBytes = v.l1, reftable, v.snapshots, tblLen
	q.freeByte = 0 // start compressed data in a new cluster
	for _, c := range m.freed {
		off := c << q.clusterBits
		q.l2c.dropRange(off, q.clusterSize)
		q.rbc.dropRange(off, q.clusterSize)
		q.freeHint = min(q.freeHint, c)
	}
	q.fileEnd = max(q.fileEnd, m.next<<q.clusterBits)
	q.topCluster = max(q.topCluster, m.next-1)
	// The overlap checks' view of the metadata, from scratch.
	q.spans = nil
	if len(v.snapshots) > 0 {
		q.spans = append(q.spans, span{tblOff, tblOff + tblLen, "snapshot table"})
	}
	q.buildMetaSets(ctx)
}
