package blockdev

import (
	"context"
	"encoding/json"

	"github.com/blockd/blockd/pkg/block"

	"github.com/blockd/blockd/pkg/jobs"
	"github.com/blockd/blockd/pkg/jobs/backup"
	"github.com/blockd/blockd/pkg/jobs/mirror"
)

// backupArgs are blockdev-backup's arguments (qsd 7.2's BlockdevBackup).
type backupArgs struct {
	JobID          *string            `json:"job-id,omitempty"`
	Device         string             `json:"device"`
	Sync           mirror.SyncMode    `json:"sync"`
	Speed          *int64             `json:"speed,omitempty"`
	Bitmap         *string            `json:"bitmap,omitempty"`
	BitmapMode     *backup.BitmapMode `json:"bitmap-mode,omitempty"`
	Compress       *bool              `json:"compress,omitempty"`
	OnSourceError  *jobs.OnError      `json:"on-source-error,omitempty"`
	OnTargetError  *jobs.OnError      `json:"on-target-error,omitempty"`
	AutoFinalize   *bool              `json:"auto-finalize,omitempty"`
	AutoDismiss    *bool              `json:"auto-dismiss,omitempty"`
	FilterNodeName *string            `json:"filter-node-name,omitempty"`
	XPerf          *backup.Perf       `json:"x-perf,omitempty"`
	Target         string             `json:"target"`
}

func (s *Server) blockdevBackup(ctx context.Context, a *backupArgs) (empty, error) {
	return s.startBackup(ctx, a, nil)
}

// startBackup starts a backup job into the node a names or, with
// targetOptions, into a node the job opens (drive-backup).
func (s *Server) startBackup(ctx context.Context, a *backupArgs, targetOptions json.RawMessage) (empty, error) {
	id, body, opts := backupJob(a, targetOptions)
	_, err := s.Jobs.Start(ctx, id, "backup", body, opts)
	return empty{}, err
}

// backupJob is the job a backup's arguments describe.
func backupJob(a *backupArgs, targetOptions json.RawMessage) (string, *backup.Backup, jobs.Options) {
	args := backup.Args{Device: a.Device, Target: a.Target, Sync: a.Sync, Bitmap: a.Bitmap,
		BitmapMode: a.BitmapMode, Compress: a.Compress != nil && *a.Compress, FilterNodeName: a.FilterNodeName,
		TargetOptions: targetOptions}
	if a.XPerf != nil {
		args.Perf = *a.XPerf
	}
	opts := blockJobOptions(a.Speed, a.OnSourceError, a.AutoFinalize, a.AutoDismiss)
	opts.OnTargetError = jobs.OnErrorReport
	if a.OnTargetError != nil {
		opts.OnTargetError = *a.OnTargetError
	}
	// compat(qsd-7.2): blockdev-backup runs as a transaction, which
	// drains the source around the job's start.
	opts.StartDrained = true
	return jobID(a.JobID), backup.New(args), opts
}

// backupAction is a blockdev-backup or drive-backup in a transaction:
// the job is created with the other actions and starts when they all
// took effect (a failed action takes it back before it ran).
type backupAction struct {
	group  *jobs.Group // completion-mode grouped
	a      backupArgs
	drive  *driveBackupArgs
	target json.RawMessage
}

func (x *backupAction) prepare(ctx context.Context, s *Server, tx *block.Txn) error {
	if x.drive == nil {
		return nil
	}
	t, err := s.driveBackupTarget(ctx, x.drive, func() (driveBackupPlan, error) {
		return planDriveBackup(tx.Graph(), x.drive, driveBackupMode(x.drive))
	})
	if err != nil {
		return err
	}
	x.a, x.target = x.drive.backupArgs, t
	x.a.Target = ""
	return nil
}

func (x *backupAction) apply(ctx context.Context, s *Server, tx *block.Txn) error {
	id, body, opts := backupJob(&x.a, x.target)
	opts.Group = x.group
	_, err := s.Jobs.Prepare(ctx, tx, id, "backup", body, opts)
	return err
}

// driveBackupArgs are drive-backup's arguments (qsd 7.2's DriveBackup,
// deprecated there): blockdev-backup's with the target a file name.
type driveBackupArgs struct {
	backupArgs
	Format *string       `json:"format,omitempty"`
	Mode   *newImageMode `json:"mode,omitempty"`
}

// driveBackup makes the target image (unless mode=existing), opens it
// and backs the device up into it, as qsd's drive-backup does: sync=top
// makes an image that names the source's backing file and reads through
// the source's backing node; every other sync an image of its own. The
// target node belongs to the job and goes with it.
func (s *Server) driveBackup(ctx context.Context, a *driveBackupArgs) (empty, error) {
	target, err := s.driveBackupTarget(ctx, a, func() (driveBackupPlan, error) {
		s.G.Lock()
		defer s.G.Unlock()
		return planDriveBackup(s.G, a, driveBackupMode(a))
	})
	if err != nil {
		return empty{}, err
	}
	args := a.backupArgs
	args.Target = "" // a file name here, not a node
	return s.startBackup(ctx, &args, target)
}

func driveBackupMode(a *driveBackupArgs) newImageMode {
	if a.Mode != nil {
		return *a.Mode
	}
	return "absolute-paths"
}

// driveBackupTarget makes drive-backup's image as plan says and returns
// the options that open it.
func (s *Server) driveBackupTarget(ctx context.Context, a *driveBackupArgs, plan func() (driveBackupPlan, error)) (json.RawMessage, error) {
	p, err := plan()
	if err != nil {
		return nil, err
	}
	target, err := s.imageTarget(ctx, a.Target, driveBackupMode(a), p.format, p.size, p.backing, p.backingFormat)
	if err != nil {
		return nil, err
	}
	if d := block.LookupDriver(target["driver"].(string)); d != nil && d.SupportsBacking {
		// The source's backing node, not a second copy of its chain.
		target["backing"] = nil
		if p.backingNode != "" {
			target["backing"] = p.backingNode
		}
	}
	return mustJSON(target), nil
}

// driveBackupPlan is what drive-backup decides from the graph before it
// makes the image.
type driveBackupPlan struct {
	format, backing, backingFormat string
	backingNode                    string // the source's backing node (sync=top)
	size                           int64
}

// planDriveBackup finds the device and works out the image to make; the
// caller holds the graph lock.
func planDriveBackup(g *block.Graph, a *driveBackupArgs, mode newImageMode) (driveBackupPlan, error) {
	var p driveBackupPlan
	dev, err := g.FindNode(a.Device)
	if err != nil {
		return p, err
	}
	if a.Format != nil {
		p.format = *a.Format
	} else if mode != "existing" {
		p.format = block.SkipFilters(dev).Driver().Name
	}
	p.size = dev.Size()
	if a.Sync != mirror.SyncTop {
		return p, nil
	}
	if c := block.COWChild(block.SkipFilters(dev)); c != nil {
		p.backingNode = c.Node().Name()
		p.backing, p.backingFormat = backingFileOf(c.Node())
	}
	return p, nil
}
