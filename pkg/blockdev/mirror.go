package blockdev

import (
	"context"
	"errors"

	"github.com/blockd/blockd/pkg/block"
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

// driveMirrorArgs are drive-mirror's arguments (qsd 7.2's DriveMirror).
type driveMirrorArgs struct {
	JobID         *string          `json:"job-id,omitempty"`
	Device        string           `json:"device"`
	Target        string           `json:"target"`
	Format        *string          `json:"format,omitempty"`
	NodeName      *string          `json:"node-name,omitempty"`
	Replaces      *string          `json:"replaces,omitempty"`
	Sync          mirror.SyncMode  `json:"sync"`
	Mode          *newImageMode    `json:"mode,omitempty"`
	Speed         *int64           `json:"speed,omitempty"`
	Granularity   *int64           `json:"granularity,omitempty"`
	BufSize       *int64           `json:"buf-size,omitempty"`
	OnSourceError *jobs.OnError    `json:"on-source-error,omitempty"`
	OnTargetError *jobs.OnError    `json:"on-target-error,omitempty"`
	Unmap         *bool            `json:"unmap,omitempty"`
	CopyMode      *mirror.CopyMode `json:"copy-mode,omitempty"`
	AutoFinalize  *bool            `json:"auto-finalize,omitempty"`
	AutoDismiss   *bool            `json:"auto-dismiss,omitempty"`
}

// newImageMode is NewImageMode.
type newImageMode string

// EnumValues implements qmp.Enum.
func (newImageMode) EnumValues() []string { return []string{"existing", "absolute-paths"} }

// driveMirror makes the target image (unless mode=existing), opens it and
// mirrors the device into it, as qsd's drive-mirror does: sync=full makes
// an image without a backing file; sync=top one that names the source's
// backing file, and sync=none one that names the source, which the target
// is then linked to on complete.
func (s *Server) driveMirror(ctx context.Context, a *driveMirrorArgs) (empty, error) {
	mode := newImageMode("absolute-paths")
	if a.Mode != nil {
		mode = *a.Mode
	}
	plan, err := s.planDriveMirror(a, mode)
	if err != nil {
		return empty{}, err
	}
	target, err := s.imageTarget(ctx, a.Target, mode, plan.format, plan.size, plan.backing, plan.backingFormat)
	if err != nil {
		return empty{}, err
	}
	if a.NodeName != nil {
		target["node-name"] = *a.NodeName
	}
	if d := block.LookupDriver(target["driver"].(string)); d != nil && d.SupportsBacking && mode != "existing" {
		target["backing"] = nil // linked on complete, as the image names it
	}
	args := mirror.Args{Device: a.Device, Replaces: a.Replaces, Sync: plan.sync, CopyMode: "background", Unmap: true,
		TargetOptions: mustJSON(target), LinkBacking: mode != "existing",
		// compat(qsd-7.2): a new image reads as zeroes; an existing one
		// is zeroed where the source has none.
		ZeroTarget: plan.sync == mirror.SyncFull && mode == "existing"}
	if a.Granularity != nil {
		args.Granularity = *a.Granularity
	}
	if a.BufSize != nil {
		args.BufSize = *a.BufSize
	}
	if a.CopyMode != nil {
		args.CopyMode = *a.CopyMode
	}
	if a.Unmap != nil {
		args.Unmap = *a.Unmap
	}
	opts := blockJobOptions(a.Speed, a.OnSourceError, a.AutoFinalize, a.AutoDismiss)
	opts.OnTargetError = jobs.OnErrorReport
	if a.OnTargetError != nil {
		opts.OnTargetError = *a.OnTargetError
	}
	_, err = s.Jobs.Start(ctx, jobID(a.JobID), "mirror", mirror.New(args), opts)
	return empty{}, err
}

// driveMirrorPlan is what drive-mirror decides from the graph before it
// makes the image.
type driveMirrorPlan struct {
	sync                   mirror.SyncMode
	format                 string
	size                   int64
	backing, backingFormat string
}

// planDriveMirror checks the device and works out the image to make,
// under the graph lock, with qsd's messages.
func (s *Server) planDriveMirror(a *driveMirrorArgs, mode newImageMode) (driveMirrorPlan, error) {
	s.G.Lock()
	defer s.G.Unlock()
	p := driveMirrorPlan{sync: a.Sync}
	dev, err := s.G.FindNode(a.Device)
	if err != nil {
		return p, err
	}
	for _, c := range dev.Parents() {
		if c.ParentNode() != nil {
			return p, errors.New("Need a root block node")
		}
	}
	if err := dev.Blocked(block.OpMirrorSource); err != nil {
		return p, err
	}
	if a.Format != nil {
		p.format = *a.Format
	} else if mode != "existing" {
		p.format = block.SkipFilters(dev).Driver().Name
	}
	var backing *block.Node
	if c := block.COWChild(block.SkipFilters(dev)); c != nil {
		backing = c.Node()
	}
	if backing == nil && p.sync == mirror.SyncTop {
		p.sync = mirror.SyncFull
	}
	if p.sync == mirror.SyncNone {
		backing = dev
	}
	p.size = dev.Size()
	if a.Replaces != nil && a.NodeName == nil {
		return p, errors.New("a node-name must be provided when replacing a named node of the graph")
	}
	if p.sync != mirror.SyncFull && backing != nil {
		p.backing, p.backingFormat = backingFileOf(backing)
	}
	return p, nil
}

// backingFileOf is how a new image names backing in its header: by the
// plain file under it (qsd writes a json: pseudo-filename for a node
// added with options, which cannot be opened again), and its format.
func backingFileOf(backing *block.Node) (name, format string) {
	b := block.SkipFilters(block.SkipImplicitFilters(backing))
	name = storageFilename(b)
	if name == "" {
		name = Filename(b)
	}
	return name, b.Driver().Name
}

// imageTarget makes the image a drive-mirror or drive-backup writes to
// (unless mode is existing) and returns the options that open it: the
// format given, or for an image that exists and none given, the one
// probed.
func (s *Server) imageTarget(ctx context.Context, filename string, mode newImageMode, format string, size int64, backing, backingFormat string) (map[string]any, error) {
	if mode != "existing" {
		if err := s.createImage(ctx, filename, format, size, backing, backingFormat); err != nil {
			return nil, err
		}
	}
	target := map[string]any{"driver": format, "file": map[string]any{"driver": "file", "filename": filename}}
	if format == "" {
		probed, err := block.ProbeFormat(filename)
		if err != nil {
			return nil, err
		}
		target["driver"] = probed
	}
	return target, nil
}
