package blockdev

import (
	"context"

	"github.com/blockd/blockd/pkg/qmp"
)

// changeArgs are x-blockdev-change's arguments.
type changeArgs struct {
	Parent string  `json:"parent"`
	Child  *string `json:"child,omitempty"`
	Node   *string `json:"node,omitempty"`
}

// xBlockdevChange is x-blockdev-change: it adds node as a new child of
// parent, or removes parent's child edge named child (a quorum's
// "children.N"), with qsd's checks in qsd's order. The change is one
// graph transaction: the parent is drained first, and a refusal leaves
// the graph as it was.
func (s *Server) xBlockdevChange(ctx context.Context, a *changeArgs) (empty, error) {
	tx := s.G.Begin()
	defer tx.Abort()
	p, err := s.G.FindNode(a.Parent)
	if err != nil {
		return empty{}, err
	}
	// compat(qsd-7.2): the wording of qmp_x_blockdev_change.
	switch {
	case a.Child != nil && a.Node != nil:
		return empty{}, qmp.Errorf("The parameters child and node are in conflict")
	case a.Child == nil && a.Node == nil:
		return empty{}, qmp.Errorf("Either child or node must be specified")
	case a.Child != nil:
		c := p.ChildNamed(*a.Child)
		if c == nil {
			return empty{}, qmp.Errorf("Node '%s' does not have child '%s'", a.Parent, *a.Child)
		}
		err = tx.DeleteChild(p, c)
	default:
		n := s.G.Lookup(*a.Node)
		if n == nil {
			return empty{}, qmp.Errorf("Node '%s' not found", *a.Node)
		}
		err = tx.AddChild(p, n)
	}
	if err != nil {
		return empty{}, err
	}
	return empty{}, tx.Commit()
}
