package blockdev

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"

	"github.com/blockd/blockd/pkg/block"
	"github.com/blockd/blockd/pkg/jobs"
	"github.com/blockd/blockd/pkg/qmp"
)

type createArgs struct {
	JobID   string                           `json:"job-id"`
	Options qmp.RawAs[BlockdevCreateOptions] `json:"options"`
}

// driverEnum is the 'driver' member of BlockdevCreateOptions: the drivers
// of qsd 7.2's schema. Values outside it get qsd's enum error; drivers in
// it that cannot create get "Driver does not support blockdev-create".
var createDrivers = []string{"blkdebug", "blklogwrite", "blkreplay", "blkverify", "bochs", "cloop",
	"compress", "copy-before-write", "copy-on-read", "dmg", "file", "snapshot-access", "ftp", "ftps",
	"gluster", "host_cdrom", "host_device", "http", "https", "io_uring", "iscsi", "luks", "nbd", "nfs",
	"null-aio", "null-co", "nvme", "nvme-io_uring", "parallels", "preallocate", "qcow", "qcow2", "qed",
	"quorum", "raw", "rbd", "replication", "ssh", "throttle", "vdi", "vhdx", "virtio-blk-vfio-pci",
	"virtio-blk-vhost-user", "virtio-blk-vhost-vdpa", "vmdk", "vpc", "vvfat"}

func (s *Server) blockdevCreate(ctx context.Context, a *createArgs) (empty, error) {
	if !block.ValidID(a.JobID) {
		return empty{}, fmt.Errorf("Invalid job ID '%s'", a.JobID)
	}
	var head struct {
		Driver string `json:"driver"`
	}
	if err := json.Unmarshal(a.Options, &head); err != nil || head.Driver == "" {
		var m map[string]json.RawMessage
		if json.Unmarshal(a.Options, &m) != nil {
			return empty{}, fmt.Errorf("Invalid parameter type for 'options', expected: object")
		}
		if _, ok := m["driver"]; !ok {
			return empty{}, fmt.Errorf("Parameter 'options.driver' is missing")
		}
		return empty{}, fmt.Errorf("Invalid parameter type for 'options.driver', expected: string")
	}
	known := false
	for _, d := range createDrivers {
		known = known || d == head.Driver
	}
	if !known {
		return empty{}, fmt.Errorf("Parameter 'options.driver' does not accept value '%s'", head.Driver)
	}
	c := block.LookupCreator(head.Driver)
	if c == nil {
		return empty{}, fmt.Errorf("Driver does not support blockdev-create")
	}
	run, err := c.Decode(json.RawMessage(a.Options), qmp.Decode)
	if err != nil {
		return empty{}, err
	}
	if s.Jobs.Find(a.JobID) != nil {
		return empty{}, fmt.Errorf("Job ID '%s' already in use", a.JobID)
	}
	_, err = s.Jobs.Start(ctx, a.JobID, "create", &jobs.CreateBody{Create: func(ctx context.Context) error {
		return run(ctx, s.G)
	}}, jobs.Options{AutoFinalize: true, AutoDismiss: false})
	return empty{}, err
}

func (s *Server) queryJobs(ctx context.Context, a *struct{}) ([]jobs.Info, error) {
	out := []jobs.Info{}
	// compat(qsd-7.2): newest job first.
	js := s.Jobs.Jobs()
	for i := len(js) - 1; i >= 0; i-- {
		out = append(out, js[i].Info())
	}
	return out, nil
}

// BlockJobInfo is QMP's BlockJobInfo (query-block-jobs).
type BlockJobInfo struct {
	Type         string `json:"type"`
	Device       string `json:"device"`
	Len          int64  `json:"len"`
	Offset       int64  `json:"offset"`
	Busy         bool   `json:"busy"`
	Paused       bool   `json:"paused"`
	Speed        int64  `json:"speed"`
	IOStatus     string `json:"io-status"`
	Ready        bool   `json:"ready"`
	Status       string `json:"status"`
	AutoFinalize bool   `json:"auto-finalize"`
	AutoDismiss  bool   `json:"auto-dismiss"`
	Error        string `json:"error,omitempty"`
}

func (s *Server) queryBlockJobs(ctx context.Context, a *struct{}) ([]BlockJobInfo, error) {
	out := []BlockJobInfo{}
	js := s.Jobs.Jobs()
	slices.Reverse(js) // newest first, as query-jobs
	for _, j := range js {
		if !j.IsBlockJob() {
			continue
		}
		i, b := j.Info(), j.BlockInfo()
		out = append(out, BlockJobInfo{Type: i.Type, Device: i.ID, Len: i.TotalProgress, Offset: i.CurrentProgress,
			Status: i.Status, Busy: b.Busy, Paused: b.Paused, Speed: b.Speed, Ready: b.Ready,
			AutoFinalize: b.AutoFinalize, AutoDismiss: b.AutoDismiss, IOStatus: string(b.IOStatus), Error: i.Error})
	}
	return out, nil
}

type idArgs struct {
	ID string `json:"id"`
}

type deviceArgs struct {
	Device string `json:"device"`
}

// findJob looks a job up by id: job-* commands say "Job not found",
// block-job-* commands DeviceNotActive, and they do not see create jobs.
func (s *Server) findJob(id string, blockJob bool) (*jobs.Job, error) {
	j := s.Jobs.Find(id)
	if blockJob {
		if j == nil || !j.IsBlockJob() {
			return nil, qmp.Classf(qmp.DeviceNotActive, "Block job '%s' not found", id)
		}
		return j, nil
	}
	if j == nil {
		return nil, fmt.Errorf("Job not found")
	}
	return j, nil
}

func doVerb(j *jobs.Job, v jobs.Verb) error {
	switch v {
	case jobs.VerbDismiss:
		return j.Dismiss()
	case jobs.VerbFinalize:
		return j.Finalize()
	case jobs.VerbCancel:
		return j.Cancel(true)
	case jobs.VerbPause:
		return j.Pause()
	case jobs.VerbResume:
		return j.Resume()
	case jobs.VerbComplete:
		return j.Complete()
	}
	return fmt.Errorf("unknown job verb %q", v)
}

func (s *Server) jobVerb(v jobs.Verb, blockJob bool) func(ctx context.Context, a *idArgs) (empty, error) {
	return func(ctx context.Context, a *idArgs) (empty, error) {
		j, err := s.findJob(a.ID, blockJob)
		if err != nil {
			return empty{}, err
		}
		return empty{}, doVerb(j, v)
	}
}

func (s *Server) blockJobDevice(v jobs.Verb) func(ctx context.Context, a *deviceArgs) (empty, error) {
	return func(ctx context.Context, a *deviceArgs) (empty, error) {
		j, err := s.findJob(a.Device, true)
		if err != nil {
			return empty{}, err
		}
		return empty{}, doVerb(j, v)
	}
}

type cancelArgs struct {
	Device string `json:"device"`
	Force  *bool  `json:"force,omitempty"`
}

func (s *Server) blockJobCancel(ctx context.Context, a *cancelArgs) (empty, error) {
	j, err := s.findJob(a.Device, true)
	if err != nil {
		return empty{}, err
	}
	force := a.Force != nil && *a.Force
	if !force && j.UserPaused() {
		// compat(qsd-7.2): a paused job needs force to be cancelled here.
		return empty{}, fmt.Errorf("The block job for device '%s' is currently paused", a.Device)
	}
	return empty{}, j.Cancel(force)
}

type setSpeedArgs struct {
	Device string `json:"device"`
	Speed  int64  `json:"speed"`
}

func (s *Server) blockJobSetSpeed(ctx context.Context, a *setSpeedArgs) (empty, error) {
	j, err := s.findJob(a.Device, true)
	if err != nil {
		return empty{}, err
	}
	return empty{}, j.SetSpeed(a.Speed)
}
