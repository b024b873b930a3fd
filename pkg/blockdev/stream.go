package blockdev

import (
	"context"

	"github.com/blockd/blockd/pkg/jobs"
	"github.com/blockd/blockd/pkg/jobs/stream"
)

// streamArgs are block-stream's arguments (qsd 7.2).
type streamArgs struct {
	JobID          *string       `json:"job-id,omitempty"`
	Device         string        `json:"device"`
	Base           *string       `json:"base,omitempty"`
	BaseNode       *string       `json:"base-node,omitempty"`
	BackingFile    *string       `json:"backing-file,omitempty"`
	Bottom         *string       `json:"bottom,omitempty"`
	Speed          *int64        `json:"speed,omitempty"`
	OnError        *jobs.OnError `json:"on-error,omitempty"`
	FilterNodeName *string       `json:"filter-node-name,omitempty"`
	AutoFinalize   *bool         `json:"auto-finalize,omitempty"`
	AutoDismiss    *bool         `json:"auto-dismiss,omitempty"`
}

// blockJobOptions are the options every block job command shares.
func blockJobOptions(speed *int64, onError *jobs.OnError, autoFinalize, autoDismiss *bool) jobs.Options {
	o := jobs.Options{BlockJob: true, AutoFinalize: true, AutoDismiss: true, OnError: jobs.OnErrorReport}
	if speed != nil {
		o.Speed = *speed
	}
	if onError != nil {
		o.OnError = *onError
	}
	if autoFinalize != nil {
		o.AutoFinalize = *autoFinalize
	}
	if autoDismiss != nil {
		o.AutoDismiss = *autoDismiss
	}
	return o
}

// jobID is the job's id: qsd's default for a block job is the device's
// name, and qsd's devices have none.
func jobID(id *string) string {
	if id == nil {
		return ""
	}
	return *id
}

func (s *Server) blockStream(ctx context.Context, a *streamArgs) (empty, error) {
	args := stream.Args{Device: a.Device, Base: a.Base, BaseNode: a.BaseNode, Bottom: a.Bottom,
		BackingFile: a.BackingFile, FilterNodeName: a.FilterNodeName}
	opts := blockJobOptions(a.Speed, a.OnError, a.AutoFinalize, a.AutoDismiss)
	_, err := s.Jobs.Start(ctx, jobID(a.JobID), "stream", stream.New(args), opts)
	return empty{}, err
}
