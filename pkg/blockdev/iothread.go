package blockdev

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"

	"github.com/blockd/blockd/pkg/qmp"
)

// strOrNull is QMP's StrOrNull: a string, or null.
type strOrNull struct {
	S    string
	Null bool
}

func (v *strOrNull) UnmarshalQMP(raw json.RawMessage, path string) error {
	raw = bytes.TrimSpace(raw)
	if string(raw) == "null" {
		v.Null = true
		return nil
	}
	if len(raw) == 0 || raw[0] != '"' || json.Unmarshal(raw, &v.S) != nil {
		return fmt.Errorf("Invalid parameter type for '%s', expected: StrOrNull", path)
	}
	return nil
}

type setIOThreadArgs struct {
	NodeName string    `json:"node-name"`
	IOThread strOrNull `json:"iothread"`
	Force    *bool     `json:"force,omitempty"`
}

// xBlockdevSetIOThread is x-blockdev-set-iothread. blockd runs I/O on
// goroutines, not in per-thread event loops, so there is nothing to move:
// the command checks what qsd checks (the node, a user such as an export
// unless forced, the iothread) and succeeds, so that configurations that
// pin nodes to iothreads work unchanged.
func (s *Server) xBlockdevSetIOThread(ctx context.Context, a *setIOThreadArgs) (empty, error) {
	s.G.Lock()
	defer s.G.Unlock()
	n := s.G.Lookup(a.NodeName)
	if n == nil {
		return empty{}, qmp.Errorf("Failed to find node with node-name='%s'", a.NodeName)
	}
	if a.Force == nil || !*a.Force {
		// compat(qsd-7.2): a node with a BlockBackend (an export's or a
		// job's root) could be in use.
		for _, c := range n.Parents() {
			if c.ParentNode() == nil {
				return empty{}, qmp.Errorf("Node %s is associated with a BlockBackend and could be in use (use force=true to override this check)", a.NodeName)
			}
		}
	}
	if !a.IOThread.Null {
		if _, ok := s.G.Object(a.IOThread.S).(*iothread); !ok {
			return empty{}, qmp.Errorf("Cannot find iothread %s", a.IOThread.S)
		}
	}
	return empty{}, nil
}
