package blockdev

import (
	"context"

	"github.com/blockd/blockd/pkg/jobs"
	"github.com/blockd/blockd/pkg/jobs/mirror"
)

// mirrorArgs are blockdev-mirror's arguments (qsd 7.2).
type mirrorArgs struct {
	JobID          *string          `json:"job-id,omitempty"`
	Device         string           `json:"device"`
	Target         string           `json:"target"`
	Replaces       *string          `json:"replaces,omitempty"`
	Sync           mirror.SyncMode  `json:"sync"`
	Speed          *int64           `json:"speed,omitempty"`
	Granularity    *int64           `json:"granularity,omitempty"`
	BufSize        *int64           `json:"buf-size,omitempty"`
	OnSourceError  *jobs.OnError    `json:"on-source-error,omitempty"`
	OnTargetError  *jobs.OnError    `json:"on-target-error,omitempty"`
	FilterNodeName *string          `json:"filter-node-name,omitempty"`
	CopyMode       *mirror.CopyMode `json:"copy-mode,omitempty"`
	AutoFinalize   *bool            `json:"auto-finalize,omitempty"`
	AutoDismiss    *bool            `json:"auto-dismiss,omitempty"`
}

func (s *Server) blockdevMirror(ctx context.Context, a *mirrorArgs) (empty, error) {
	args := mirror.Args{Device: a.Device, Target: a.Target, Replaces: a.Replaces, Sync: a.Sync,
		FilterNodeName: a.FilterNodeName, CopyMode: "background", Unmap: true,
		// compat(qsd-7.2): blockdev-mirror zeroes the target with sync=full.
		ZeroTarget: a.Sync == mirror.SyncFull}
	if a.Granularity != nil {
		args.Granularity = *a.Granularity
	}
	if a.BufSize != nil {
		args.BufSize = *a.BufSize
	}
	if a.CopyMode != nil {
		args.CopyMode = *a.CopyMode
	}
	opts := blockJobOptions(a.Speed, a.OnSourceError, a.AutoFinalize, a.AutoDismiss)
	if a.OnTargetError != nil {
		opts.OnTargetError = *a.OnTargetError
	} else {
		opts.OnTargetError = jobs.OnErrorReport
	}
	_, err := s.Jobs.Start(ctx, jobID(a.JobID), "mirror", mirror.New(args), opts)
	return empty{}, err
}
