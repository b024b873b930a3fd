package block

import "context"

// InternalSnapshot describes a snapshot kept inside an image (qcow2's
// snapshot table): the fields of QMP's SnapshotInfo and the disk size the
// image had when it was taken.
type InternalSnapshot struct {
	ID, Name    string
	VMStateSize uint64
	DateSec     uint32
	DateNsec    uint32
	VMClockNsec uint64
	ICount      *uint64 // nil: not recorded
	DiskSize    uint64
}

// InternalSnapshotter is implemented by formats that keep internal
// snapshots. Create takes the snapshot's name, date and VM clock and
// assigns its ID; Delete removes the first snapshot whose ID and name are
// both as given. Both leave the image unchanged when they fail.
type InternalSnapshotter interface {
	InternalSnapshots(ctx context.Context) ([]InternalSnapshot, error)
	CreateInternalSnapshot(ctx context.Context, sn InternalSnapshot) (InternalSnapshot, error)
	DeleteInternalSnapshot(ctx context.Context, id, name string) error
}
