package qcow2

import (
	"context"
	"fmt"
	"slices"
	"syscall"

	"github.com/blockd/blockd/pkg/block"
)

// CreateInternalSnapshot implements block.InternalSnapshotter: the
// current active tree becomes the snapshot's (its L1 table stays where it
// is and becomes the snapshot's L1 table), every cluster it reaches gains
// a reference, and the active image continues in a new L1 table whose
// entries have lost their COPIED flags, so that the next write to any of
// them copies first.
func (q *image) CreateInternalSnapshot(ctx context.Context, inf block.InternalSnapshot) (block.InternalSnapshot, error) {
	unlock, err := q.lockForSnapshot(ctx)
	if err != nil {
		return inf, err
	}
	defer unlock()
	if len(q.snapshots) >= maxSnapshots {
		return inf, fmt.Errorf("qcow2 image '%s': too many snapshots: %w", q.name, syscall.EFBIG)
	}
	inf.ID = q.nextSnapshotID()
	inf.DiskSize = uint64(q.size.Load())
	m := q.newMetaTxn()
	if err := m.addTree(ctx, q.l1, 1); err != nil {
		return inf, err
	}
	l1, l1Off, err := m.newActiveL1(ctx)
	if err != nil {
		return inf, err
	}
	sn := snapshot{l1Offset: int64(q.hdr.l1Offset), l1Size: int64(len(q.l1)), info: inf}
	sn.raw = encodeSnapshot(sn.l1Offset, sn.l1Size, inf)
	list := append(slices.Clone(q.snapshots), sn)
	return inf, m.commit(ctx, newVersion{l1: l1, l1Off: l1Off, snapshots: list})
}

// DeleteInternalSnapshot implements block.InternalSnapshotter: the
// snapshot's tree loses its references, and active entries left with a
// refcount of one get their COPIED flag back.
func (q *image) DeleteInternalSnapshot(ctx context.Context, id, name string) error {
	unlock, err := q.lockForSnapshot(ctx)
	if err != nil {
		return removeError(err)
	}
	defer unlock()
	i := q.findSnapshot(id, name)
	if i < 0 {
		return block.Errorf(block.ErrNotFound, "Can't find the snapshot")
	}
	s := q.snapshots[i]
	if s.l1Offset+s.l1Size*8 > q.fileEnd {
		return removeError(block.Errorf(block.ErrCorrupt, "qcow2 image '%s': snapshot L1 table beyond the end of the file", q.name))
	}
	l1, err := q.readTable(ctx, s.l1Offset, s.l1Size)
	if err != nil {
		return removeError(err)
	}
	m := q.newMetaTxn()
	if err := m.addTree(ctx, l1, -1); err != nil {
		return removeError(err)
	}
	if err := m.addRange(ctx, s.l1Offset, s.l1Size*8, -1); err != nil {
		return removeError(err)
	}
	if err := m.addRange(ctx, int64(q.hdr.l1Offset), int64(len(q.l1))*8, -1); err != nil {
		return removeError(err)
	}
	active, l1Off, err := m.newActiveL1(ctx)
	if err != nil {
		return removeError(err)
	}
	list := slices.Delete(slices.Clone(q.snapshots), i, i+1)
	return removeError(m.commit(ctx, newVersion{l1: active, l1Off: l1Off, snapshots: list}))
}

// removeError words a failed delete as QEMU does.
func removeError(err error) error {
	if err == nil {
		return nil
	}
	return block.Errorf(block.ErrInvalid, "Failed to remove snapshot from snapshot list: %s", block.Strerror(err))
}

// newActiveL1 builds the new active L1 table (see activeL1) and places it.
func (m *metaTxn) newActiveL1(ctx context.Context) ([]uint64, int64, error) {
	q := m.q
	l1, err := m.activeL1(ctx, q.l1)
	if err != nil || len(l1) == 0 {
		return l1, int64(q.hdr.l1Offset), err
	}
	off, err := m.allocWrite(ctx, q.tableBytes(l1))
	return l1, off, err
}

// lockForSnapshot stops every request (ioGate), takes the metadata mutex
// and writes everything back, applying the pending frees: the snapshot
// code then reads the tables from the file. It returns the unlock.
func (q *image) lockForSnapshot(ctx context.Context) (func(), error) {
	if err := q.usable(); err != nil {
		return nil, err
	}
	if q.readOnly {
		return nil, syscall.EPERM
	}
	q.ioGate.Lock()
	q.mu.Lock()
	unlock := func() {
		q.mu.Unlock()
		q.ioGate.Unlock()
	}
	if err := q.settleLocked(ctx); err != nil {
		unlock()
		return nil, err
	}
	return unlock, nil
}

// settleLocked writes all dirty metadata, applies the pending frees (no
// request runs: the caller holds ioGate exclusively) and flushes.
func (q *image) settleLocked(ctx context.Context) error {
	for round := 0; round < 2; round++ {
		if err := q.flushMetaLocked(ctx); err != nil {
			return err
		}
		if err := q.file.Flush(ctx); err != nil {
			return q.ioError("flush", err)
		}
		pend := q.pending
		q.pending = nil
		for i, pf := range pend {
			if err := q.freeRangeLocked(ctx, pf.off, pf.n, pf.kind); err != nil {
				q.pending = append(q.pending, pend[i+1:]...)
				return err
			}
		}
	}
	return nil
}
