package blockdev

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/blockd/blockd/pkg/block"
)

// Internal snapshots: blockdev-snapshot-internal-sync (also a transaction
// action) and blockdev-snapshot-delete-internal-sync. As in qsd, device
// names a root node; the snapshot is kept by the first node down its
// primary children whose format keeps snapshots (a throttle node over a
// qcow2 image snapshots the image).

type snapshotInternalArgs struct {
	Device string `json:"device"`
	Name   string `json:"name"`
}

type snapshotDeleteInternalArgs struct {
	Device string  `json:"device"`
	ID     *string `json:"id,omitempty"`
	Name   *string `json:"name,omitempty"`
}

// SnapshotInfo is QMP's SnapshotInfo.
type SnapshotInfo struct {
	ID          string `json:"id"`
	Name        string `json:"name"`
	VMStateSize int64  `json:"vm-state-size"`
	DateSec     int64  `json:"date-sec"`
	DateNsec    int64  `json:"date-nsec"`
	VMClockSec  int64  `json:"vm-clock-sec"`
	VMClockNsec int64  `json:"vm-clock-nsec"`
	ICount      *int64 `json:"icount,omitempty"`
}

// maxSnapshotName is what QEMU keeps of a snapshot name (a 256-byte C
// string): longer names are cut.
const maxSnapshotName = 255

func snapshotInfo(s block.InternalSnapshot) SnapshotInfo {
	i := SnapshotInfo{
		ID: s.ID, Name: s.Name, VMStateSize: int64(s.VMStateSize),
		DateSec: int64(s.DateSec), DateNsec: int64(s.DateNsec),
		VMClockSec: int64(s.VMClockNsec / 1e9), VMClockNsec: int64(s.VMClockNsec % 1e9),
	}
	if s.ICount != nil {
		ic := int64(*s.ICount)
		i.ICount = &ic
	}
	return i
}

// snapshotter finds who keeps n's internal snapshots: n's driver, or,
// following QEMU's fallback, the one of its primary child when that is
// its only child holding data (a filter, raw over an image).
func snapshotter(n *block.Node) block.InternalSnapshotter {
	for n != nil {
		if s, ok := n.Impl().(block.InternalSnapshotter); ok {
			return s
		}
		p := block.PrimaryChild(n)
		if p == nil {
			return nil
		}
		for _, c := range n.Children() {
			if c != p && c.Role()&(block.RoleData|block.RoleMetadata|block.RoleFiltered) != 0 {
				return nil
			}
		}
		n = p.Node()
	}
	return nil
}

// nodeSnapshots lists n's internal snapshots for its ImageInfo (nil: none).
func nodeSnapshots(ctx context.Context, n *block.Node) []SnapshotInfo {
	sn := snapshotter(n)
	if sn == nil {
		return nil
	}
	list, err := sn.InternalSnapshots(ctx)
	if err != nil || len(list) == 0 {
		return nil
	}
	out := make([]SnapshotInfo, len(list))
	for i, s := range list {
		out[i] = snapshotInfo(s)
	}
	return out
}

// rootNode resolves device to a node no other node uses, with qsd's
// messages.
func rootNode(g *block.Graph, device string) (*block.Node, error) {
	n, err := g.FindNode(device)
	if err != nil {
		return nil, err
	}
	for _, c := range n.Parents() {
		if c.ParentNode() != nil {
			return nil, errors.New("Need a root block node")
		}
	}
	return n, nil
}

func (s *Server) blockdevSnapshotInternalSync(ctx context.Context, a *snapshotInternalArgs) (empty, error) {
	return empty{}, s.runActions(ctx, []action{&internalSnapshotAction{a: *a}})
}

// internalSnapshotAction takes an internal snapshot; an aborted
// transaction deletes it again.
type internalSnapshotAction struct {
	a       snapshotInternalArgs
	grouped bool // the transaction's completion-mode
	sn      block.InternalSnapshotter
}

func (x *internalSnapshotAction) prepare(ctx context.Context, s *Server, tx *block.Txn) error {
	a := &x.a
	if x.grouped {
		return errors.New("Action 'blockdev-snapshot-internal-sync' does not support Transaction property completion-mode = grouped")
	}
	n, err := rootNode(tx.Graph(), a.Device)
	if err != nil {
		return err
	}
	if err := n.Blocked(block.OpInternalSnapshot); err != nil {
		return err
	}
	if n.ReadOnly() {
		return fmt.Errorf("Device '%s' is read only", a.Device)
	}
	if x.sn = snapshotter(n); x.sn == nil {
		return fmt.Errorf("Block format '%s' used by device '%s' does not support internal snapshots", n.Driver().Name, a.Device)
	}
	if a.Name == "" {
		return errors.New("Name is empty")
	}
	if len(a.Name) > maxSnapshotName {
		a.Name = a.Name[:maxSnapshotName]
	}
	list, err := x.sn.InternalSnapshots(ctx)
	if err != nil {
		return fmt.Errorf("Failed to get a snapshot list: %s", block.Strerror(err))
	}
	for _, sn := range list {
		if sn.Name == a.Name {
			return fmt.Errorf("Snapshot with name '%s' already exists on device '%s'", a.Name, a.Device)
		}
	}
	return nil
}

func (x *internalSnapshotAction) apply(ctx context.Context, s *Server, tx *block.Txn) error {
	a := &x.a
	// qsd has no guest: its VM clock reads the host's, to the microsecond.
	now := time.Now().Truncate(time.Microsecond)
	made, err := x.sn.CreateInternalSnapshot(ctx, block.InternalSnapshot{
		Name: a.Name, DateSec: uint32(now.Unix()), DateNsec: uint32(now.Nanosecond()), VMClockNsec: uint64(now.UnixNano()),
	})
	if err != nil {
		return fmt.Errorf("Failed to create snapshot '%s' on device '%s': %s", a.Name, a.Device, block.Strerror(err))
	}
	tx.OnUndo(func() {
		if err := x.sn.DeleteInternalSnapshot(context.Background(), made.ID, made.Name); err != nil {
			s.log.WithError(err).Errorf("Failed to delete snapshot with id '%s' and name '%s' on device '%s' in abort", made.ID, made.Name, a.Device)
		}
	})
	return nil
}

func (s *Server) blockdevSnapshotDeleteInternalSync(ctx context.Context, a *snapshotDeleteInternalArgs) (SnapshotInfo, error) {
	tx := s.G.Begin()
	defer tx.Abort()
	n, err := rootNode(tx.Graph(), a.Device)
	if err != nil {
		return SnapshotInfo{}, err
	}
	if a.ID == nil && a.Name == nil {
		return SnapshotInfo{}, errors.New("Name or id must be provided")
	}
	if err := n.Blocked(block.OpInternalSnapshotDelete); err != nil {
		return SnapshotInfo{}, err
	}
	sn := snapshotter(n)
	if sn == nil {
		return SnapshotInfo{}, errors.New("Failed to get a snapshot list: Operation not supported")
	}
	list, err := sn.InternalSnapshots(ctx)
	if err != nil {
		return SnapshotInfo{}, fmt.Errorf("Failed to get a snapshot list: %s", block.Strerror(err))
	}
	for _, x := range list {
		if (a.ID == nil || *a.ID == x.ID) && (a.Name == nil || *a.Name == x.Name) {
			if err := sn.DeleteInternalSnapshot(ctx, x.ID, x.Name); err != nil {
				return SnapshotInfo{}, err
			}
			return snapshotInfo(x), tx.Commit()
		}
	}
	// compat(qsd-7.2): an argument not given reads 'null'.
	str := func(p *string) string {
		if p == nil {
			return "null"
		}
		return *p
	}
	return SnapshotInfo{}, fmt.Errorf("Snapshot with id '%s' and name '%s' does not exist on device '%s'", str(a.ID), str(a.Name), a.Device)
}
