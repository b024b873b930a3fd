package qcow2

import (
	"context"
	"encoding/binary"
	"fmt"

	"github.com/blockd/blockd/pkg/block"
)

// Repair of a dirty image (lazy refcounts, or a writer that crashed while
// the dirty bit was set): the refcounts on disk may be anything, so they
// are rebuilt from scratch. Every reference in the metadata is counted
// (header, L1 and L2 tables and what they map, snapshot tables, bitmap
// tables), a new refcount table with new blocks describing exactly those
// counts is written after the end of the image, flushed, and the header
// is switched to it. The old refcount structures become free space. A
// crash before the switch leaves the dirty image as it was.

// maxRepairClusters bounds the memory of the count (2 bytes a cluster).
const maxRepairClusters = 1 << 28

type refCounter struct {
	n    []uint16
	over map[int64]uint64
}

func (r *refCounter) inc(c int64) {
	if v := r.n[c]; v < 0xffff {
		r.n[c] = v + 1
		return
	}
	if r.over == nil {
		r.over = map[int64]uint64{}
	}
	r.over[c]++
}

func (r *refCounter) get(c int64) uint64 {
	if c >= int64(len(r.n)) {
		return 0
	}
	return uint64(r.n[c]) + r.over[c]
}

// countRefsLocked counts the references of every cluster of the file.
func (q *image) countRefsLocked(ctx context.Context) (*refCounter, error) {
	limit := alignUp(q.file.Size(), q.clusterSize) >> q.clusterBits
	if limit > maxRepairClusters {
		return nil, block.Errorf(block.ErrNotSupported, "image too large to repair (%d clusters)", limit)
	}
	rc := &refCounter{n: make([]uint16, limit)}
	// Bounds for hostile metadata: an L2 table is reachable from each L1
	// table at most once, and the tables read are bounded in size.
	maxTableRefs := uint64(len(q.snapshots)) + 1
	budget := 64*q.file.Size() + 1<<30
	addRange := func(off, n int64, what string) error {
		if n <= 0 {
			return nil
		}
		if off < 0 || off >= limit<<q.clusterBits || n > limit<<q.clusterBits-off {
			return block.Errorf(block.ErrCorrupt, "%s at offset %#x is beyond the end of the image file", what, off)
		}
		for c := off >> q.clusterBits; c<<q.clusterBits < off+n; c++ {
			rc.inc(c)
		}
		return nil
	}
	h := &q.hdr
	if err := addRange(0, q.clusterSize, "header"); err != nil {
		return nil, err
	}
	walkL1 := func(l1 []uint64) error {
		table := make([]byte, q.clusterSize)
		for l1i, e := range l1 {
			l2off := int64(e & l1OffsetMask)
			if l2off == 0 {
				continue
			}
			if l2off&(q.clusterSize-1) != 0 {
				return block.Errorf(block.ErrCorrupt, "L2 table offset %#x unaligned (L1 index: %#x)", l2off, l1i)
			}
			if err := addRange(l2off, q.clusterSize, "L2 table"); err != nil {
				return err
			}
			if rc.get(l2off>>q.clusterBits) > maxTableRefs {
				return block.Errorf(block.ErrCorrupt, "L2 table at offset %#x is referenced too often", l2off)
			}
			if budget -= q.clusterSize; budget < 0 {
				return block.Errorf(block.ErrNotSupported, "image metadata too large to repair")
			}
			if err := q.file.ReadAt(ctx, table, l2off, 0); err != nil {
				return q.ioError("read", err)
			}
			for i := int64(0); i < 1<<q.l2Bits; i++ {
				b := table[i*q.l2EntryBytes:]
				var w1 uint64
				if q.extL2 {
					w1 = binary.BigEndian.Uint64(b[8:])
				}
				s, problem := q.decode(binary.BigEndian.Uint64(b), w1)
				if problem != "" {
					return block.Errorf(block.ErrCorrupt, "invalid L2 entry (L2 offset: %#x, L2 index: %#x): %s", l2off, i, problem)
				}
				switch {
				case s.typ == ctCompressed:
					start := s.host &^ 511
					if err := addRange(start, alignUp(s.host+s.csize, 512)-start, "compressed cluster"); err != nil {
						return err
					}
				case s.host != 0:
					if err := addRange(s.host, q.clusterSize, "data cluster"); err != nil {
						return err
					}
				}
			}
		}
		return nil
	}
	if err := addRange(int64(h.l1Offset), int64(h.l1Size)*8, "active L1 table"); err != nil {
		return nil, err
	}
	if err := walkL1(q.l1); err != nil {
		return nil, err
	}
	for _, s := range q.spans {
		if s.what == "snapshot table" {
			if err := addRange(s.off, s.end-s.off, s.what); err != nil {
				return nil, err
			}
		}
	}
	for _, s := range q.snapshots {
		if err := addRange(s.l1Offset, s.l1Size*8, "snapshot L1 table"); err != nil {
			return nil, err
		}
		if budget -= s.l1Size * 8; budget < 0 {
			return nil, block.Errorf(block.ErrNotSupported, "image metadata too large to repair")
		}
		l1, err := q.readTable(ctx, s.l1Offset, s.l1Size)
		if err != nil {
			return nil, err
		}
		if err := walkL1(l1); err != nil {
			return nil, err
		}
	}
	if h.hasBitmaps && h.autoclear&autoclearBitmaps != 0 {
		if err := q.countBitmapsLocked(ctx, addRange); err != nil {
			return nil, err
		}
	}
	return rc, nil
}

// countBitmapsLocked counts the bitmap directory, tables and data.
func (q *image) countBitmapsLocked(ctx context.Context, addRange func(off, n int64, what string) error) error {
	b := q.hdr.bitmaps
	if err := addRange(int64(b.dirOffset), int64(b.dirSize), "bitmap directory"); err != nil {
		return err
	}
	dir := make([]byte, b.dirSize)
	if err := q.file.ReadAt(ctx, dir, int64(b.dirOffset), 0); err != nil {
		return q.ioError("read", err)
	}
	for off, i := 0, uint32(0); i < b.nb; i++ {
		if off+24 > len(dir) {
			return block.Errorf(block.ErrCorrupt, "bitmap directory is too short")
		}
		e := dir[off:]
		toff, tsize := int64(be64(e[0:])), int64(be32(e[8:]))
		nameLen, extra := int(binary.BigEndian.Uint16(e[18:])), int(be32(e[20:]))
		if tsize*8 > 64<<20 || toff&(q.clusterSize-1) != 0 {
			return block.Errorf(block.ErrCorrupt, "invalid bitmap table")
		}
		if err := addRange(toff, tsize*8, "bitmap table"); err != nil {
			return err
		}
		t, err := q.readTable(ctx, toff, tsize)
		if err != nil {
			return err
		}
		for _, v := range t {
			if d := int64(v & l2OffsetMask); d != 0 {
				if err := addRange(d, q.clusterSize, "bitmap data"); err != nil {
					return err
				}
			}
		}
		off += int((24 + int64(extra) + int64(nameLen) + 7) &^ 7)
	}
	return nil
}

// rebuildRefcountsLocked rebuilds the refcount structures (see above) and
// fixes the COPIED flags of the active tables.
func (q *image) rebuildRefcountsLocked(ctx context.Context) error {
	q.freeByte = 0
	rc, err := q.countRefsLocked(ctx)
	if err != nil {
		return err
	}
	if err := q.fixCopiedLocked(ctx, rc); err != nil {
		return err
	}
	perBlock := int64(1) << q.rbBits
	perCluster := q.clusterSize / 8
	end := int64(len(rc.n))
	for end > 0 && rc.get(end-1) == 0 {
		end--
	}
	start := max(end, alignUp(q.file.Size(), q.clusterSize)>>q.clusterBits)
	hasRefs := func(r int64) bool {
		for c := r * perBlock; c < (r+1)*perBlock && c < int64(len(rc.n)); c++ {
			if rc.get(c) != 0 {
				return true
			}
		}
		return false
	}
	var tc, nb int64 = 1, 0
	var blocks []int64
	for {
		total := start + tc + nb
		entries := alignUp((total+perBlock-1)/perBlock, perCluster)
		blocks = blocks[:0]
		for r := int64(0); r < entries; r++ {
			if r*perBlock < start && hasRefs(r) || (r+1)*perBlock > start && r*perBlock < total {
				blocks = append(blocks, r)
			}
		}
		ntc := entries / perCluster
		if ntc == tc && int64(len(blocks)) == nb {
			break
		}
		tc, nb = ntc, int64(len(blocks))
	}
	if tc<<q.clusterBits > maxRefTableBytes {
		return block.Errorf(block.ErrNoSpace, "refcount table too large")
	}
	table := make([]uint64, tc*perCluster)
	buf := make([]byte, nb<<q.clusterBits)
	for i, r := range blocks {
		table[r] = uint64((start + tc + int64(i)) << q.clusterBits)
		rb := buf[int64(i)<<q.clusterBits : int64(i+1)<<q.clusterBits]
		for j := int64(0); j < perBlock; j++ {
			c := r*perBlock + j
			v := rc.get(c)
			if c >= start && c < start+tc+nb {
				v = 1
			}
			if v > q.refMax {
				return block.Errorf(block.ErrCorrupt, "refcount of cluster %d (%d) does not fit in %d bits", c, v, q.refBits)
			}
			q.setRefcountIn(rb, j, v)
		}
	}
	tbuf := make([]byte, tc<<q.clusterBits)
	for i, v := range table {
		binary.BigEndian.PutUint64(tbuf[i*8:], v)
	}
	if err := q.file.WriteAt(ctx, tbuf, start<<q.clusterBits, 0); err != nil {
		return q.ioError("write", err)
	}
	if err := q.file.WriteAt(ctx, buf, (start+tc)<<q.clusterBits, 0); err != nil {
		return q.ioError("write", err)
	}
	if err := q.file.Flush(ctx); err != nil {
		return q.ioError("flush", err)
	}
	if err := q.switchRefTableLocked(ctx, start, tc); err != nil {
		return err
	}
	q.hdr.rtOffset, q.hdr.rtClusters = uint64(start<<q.clusterBits), uint32(tc)
	q.reftable = table
	q.rbSet = map[int64]struct{}{}
	for _, v := range table {
		if v != 0 {
			q.rbSet[int64(v)] = struct{}{}
		}
	}
	q.rbc = newTableCache(q.clusterSize, q.rbc.max)
	for i := range q.spans {
		if q.spans[i].what == "refcount table" {
			q.spans[i] = span{start << q.clusterBits, (start + tc) << q.clusterBits, "refcount table"}
		}
	}
	q.sortSpans()
	q.fileEnd = max(q.fileEnd, (start+tc+nb)<<q.clusterBits)
	q.freeHint = 0
	return nil
}

// fixCopiedLocked sets the COPIED flag of the active L1 and L2 entries
// exactly where the refcount is one.
func (q *image) fixCopiedLocked(ctx context.Context, rc *refCounter) error {
	table := make([]byte, q.clusterSize)
	for l1i, e := range q.l1 {
		l2off := int64(e & l1OffsetMask)
		if l2off == 0 {
			continue
		}
		want := e &^ oflagCopied
		if rc.get(l2off>>q.clusterBits) == 1 {
			want |= oflagCopied
		}
		if want != e {
			if err := q.writeL1Locked(ctx, int64(l1i), want); err != nil {
				return err
			}
		}
		if err := q.file.ReadAt(ctx, table, l2off, 0); err != nil {
			return q.ioError("read", err)
		}
		changed := false
		for i := int64(0); i < 1<<q.l2Bits; i++ {
			b := table[i*q.l2EntryBytes:]
			w0 := binary.BigEndian.Uint64(b)
			if w0&oflagCompressed != 0 {
				continue
			}
			host := int64(w0 & l2OffsetMask)
			if host == 0 {
				continue
			}
			w := w0 &^ oflagCopied
			if rc.get(host>>q.clusterBits) == 1 {
				w |= oflagCopied
			}
			if w != w0 {
				binary.BigEndian.PutUint64(b, w)
				changed = true
			}
		}
		if changed {
			if err := q.file.WriteAt(ctx, table, l2off, 0); err != nil {
				return q.ioError("write", err)
			}
			q.l2c.dropRange(l2off, q.clusterSize)
		}
	}
	return q.file.Flush(ctx)
}

// String is for debugging.
func (r *refCounter) String() string { return fmt.Sprintf("refCounter(%d clusters)", len(r.n)) }
