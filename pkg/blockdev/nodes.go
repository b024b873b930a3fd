package blockdev

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/blockd/blockd/pkg/block"
	"github.com/blockd/blockd/pkg/qmp"
)

func (s *Server) blockdevAdd(ctx context.Context, raw json.RawMessage) (any, error) {
	// Drivers that wait on the network (rbd) do it here, before the graph
	// lock and with other commands running meanwhile.
	ctx, release := block.Prepare(ctx, args(raw), qmp.Unblocked)
	defer release()
	tx := s.G.Begin()
	defer tx.Abort()
	if _, err := tx.Open(ctx, args(raw), true); err != nil {
		return nil, err
	}
	return empty{}, tx.Commit()
}

type nodeNameArgs struct {
	NodeName string `json:"node-name"`
}

func (s *Server) blockdevDel(ctx context.Context, a *nodeNameArgs) (empty, error) {
	tx := s.G.Begin()
	defer tx.Abort()
	if err := tx.Delete(a.NodeName); err != nil {
		return empty{}, err
	}
	return empty{}, tx.Commit()
}

type resizeArgs struct {
	Device   *string `json:"device,omitempty"`
	NodeName *string `json:"node-name,omitempty"`
	Size     int64   `json:"size"`
}

// lookupDeviceOrNode resolves qsd's (device, node-name) pair: qsd has no
// device names, so only node-name can match.
func (s *Server) lookupDeviceOrNode(device, node *string) (*block.Node, error) {
	d, n := "", ""
	if device != nil {
		d = *device
	}
	if node != nil {
		n = *node
		if x := s.G.Lookup(n); x != nil {
			return x, nil
		}
	}
	return nil, fmt.Errorf("Cannot find device='%s' nor node-name='%s'", d, n)
}

func (s *Server) blockResize(ctx context.Context, a *resizeArgs) (empty, error) {
	tx := s.G.Begin()
	defer tx.Abort()
	n, err := s.lookupDeviceOrNode(a.Device, a.NodeName)
	if err != nil {
		return empty{}, err
	}
	if a.Size < 0 {
		return empty{}, errors.New("Parameter 'size' expects a >0 size")
	}
	if err := n.Blocked(block.OpResize); err != nil {
		return empty{}, err
	}
	if n.ReadOnly() {
		return empty{}, errors.New("Image is read-only")
	}
	r, err := tx.NewRoot(n, block.RootOptions{Perm: block.PermResize, Shared: block.PermAll})
	if err != nil {
		return empty{}, err
	}
	if err := tx.Commit(); err != nil {
		return empty{}, err
	}
	defer s.detachRoot(r)
	return empty{}, r.Truncate(ctx, a.Size, false)
}

// detachRoot removes a temporary user in a change of its own.
func (s *Server) detachRoot(r *block.Root) {
	tx := s.G.Begin()
	tx.Detach(r)
	if err := tx.Commit(); err != nil {
		s.log.WithError(err).Warn("detaching a temporary user")
	}
}
