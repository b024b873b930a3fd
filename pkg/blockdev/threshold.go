package blockdev

import (
	"context"

	"github.com/blockd/blockd/pkg/qmp"
)

type writeThresholdArgs struct {
	NodeName       string `json:"node-name"`
	WriteThreshold uint64 `json:"write-threshold"`
}

// blockSetWriteThreshold is block-set-write-threshold: arm (or with 0
// disarm) BLOCK_WRITE_THRESHOLD on a node.
func (s *Server) blockSetWriteThreshold(ctx context.Context, a *writeThresholdArgs) (empty, error) {
	s.G.Lock()
	defer s.G.Unlock()
	n := s.G.Lookup(a.NodeName)
	if n == nil {
		// compat(qsd-7.2): a GenericError, not DeviceNotFound.
		return empty{}, qmp.Errorf("Device '%s' not found", a.NodeName)
	}
	n.SetWriteThreshold(a.WriteThreshold)
	return empty{}, nil
}
