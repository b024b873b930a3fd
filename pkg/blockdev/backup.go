package blockdev

import (
	"context"

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
	args := backup.Args{Device: a.Device, Target: a.Target, Sync: a.Sync, Bitmap: a.Bitmap,
		BitmapMode: a.BitmapMode, Compress: a.Compress != nil && *a.Compress, FilterNodeName: a.FilterNodeName}
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
	_, err := s.Jobs.Start(ctx, jobID(a.JobID), "backup", backup.New(args), opts)
	return empty{}, err
}
