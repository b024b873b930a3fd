package blockdev

import (
	"context"
	"errors"
	"fmt"

	"github.com/blockd/blockd/pkg/block"
	"github.com/blockd/blockd/pkg/jobs"
	"github.com/blockd/blockd/pkg/jobs/commit"
	"github.com/blockd/blockd/pkg/qmp"
)

// commitArgs are block-commit's arguments (qsd 7.2).
type commitArgs struct {
	JobID          *string       `json:"job-id,omitempty"`
	Device         string        `json:"device"`
	BaseNode       *string       `json:"base-node,omitempty"`
	Base           *string       `json:"base,omitempty"`
	TopNode        *string       `json:"top-node,omitempty"`
	Top            *string       `json:"top,omitempty"`
	BackingFile    *string       `json:"backing-file,omitempty"`
	Speed          *int64        `json:"speed,omitempty"`
	OnError        *jobs.OnError `json:"on-error,omitempty"`
	FilterNodeName *string       `json:"filter-node-name,omitempty"`
	AutoFinalize   *bool         `json:"auto-finalize,omitempty"`
	AutoDismiss    *bool         `json:"auto-dismiss,omitempty"`
}

func (s *Server) blockCommit(ctx context.Context, a *commitArgs) (empty, error) {
	args := commit.Args{Device: a.Device, Top: a.Top, TopNode: a.TopNode, Base: a.Base, BaseNode: a.BaseNode,
		BackingFile: a.BackingFile, FilterNodeName: a.FilterNodeName}
	opts := blockJobOptions(a.Speed, a.OnError, a.AutoFinalize, a.AutoDismiss)
	_, err := s.Jobs.Start(ctx, jobID(a.JobID), "commit", commit.New(args), opts)
	return empty{}, deviceNotFound(err)
}

// deviceNotFound gives an error about a missing device QEMU's
// DeviceNotFound class.
func deviceNotFound(err error) error {
	if errors.Is(err, block.ErrNoDevice) {
		return qmp.Classf(qmp.DeviceNotFound, "%s", err.Error())
	}
	return err
}

// changeBackingFileArgs are change-backing-file's arguments (qsd 7.2).
type changeBackingFileArgs struct {
	Device        string `json:"device"`
	ImageNodeName string `json:"image-node-name"`
	BackingFile   string `json:"backing-file"`
}

// changeBackingFile rewrites the backing file name in an image's header
// and nothing else: the graph keeps its links.
func (s *Server) changeBackingFile(ctx context.Context, a *changeBackingFileArgs) (empty, error) {
	tx := s.G.Begin()
	defer tx.Abort()
	g := tx.Graph()
	dev, err := g.FindNode(a.Device)
	if err != nil {
		return empty{}, err
	}
	for _, c := range dev.Parents() {
		if c.ParentNode() != nil {
			return empty{}, errors.New("Need a root block node")
		}
	}
	img := g.Lookup(a.ImageNodeName)
	if img == nil {
		return empty{}, fmt.Errorf("Cannot find device='' nor node-name='%s'", a.ImageNodeName)
	}
	if block.BackingChainNext(img) == nil {
		return empty{}, errors.New("not allowing backing file change on an image without a backing file")
	}
	if err := dev.Blocked(block.OpChange); err != nil {
		return empty{}, err
	}
	if !block.InChain(dev, img) {
		return empty{}, fmt.Errorf("'%s' and image file are not in the same chain", a.Device)
	}
	bc, ok := img.Impl().(block.BackingFileChanger)
	if !ok {
		return empty{}, fmt.Errorf("Could not change backing file to '%s': %s", a.BackingFile, block.Strerror(block.ErrnoError(95)))
	}
	ro := img.ReadOnly()
	if ro {
		if err := tx.ReopenReadOnly(ctx, img, false); err != nil {
			return empty{}, err
		}
	}
	// The format is the current backing's (QEMU 7.2 writes the image's
	// own, which is wrong for a qcow2 over a raw image).
	format := block.BackingChainNext(img).Driver().Name
	if err := bc.ChangeBackingFile(ctx, a.BackingFile, format); err != nil {
		return empty{}, fmt.Errorf("Could not change backing file to '%s': %s", a.BackingFile, block.Strerror(err))
	}
	if ro {
		if err := tx.ReopenReadOnly(ctx, img, true); err != nil {
			return empty{}, err
		}
	}
	return empty{}, tx.Commit()
}
