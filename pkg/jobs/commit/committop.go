package commit

import (
	"context"

	"github.com/blockd/blockd/pkg/block"
)

// topOptions are the options of the commit_top filter: users cannot name
// the driver; the job opens it above the top it commits.
type topOptions struct {
	Backing block.NodeRef `json:"backing"`
}

// top is the commit_top filter. Like QEMU's, its filtered child is called
// "backing", and it takes nothing on it and shares everything: while the
// job runs, the permissions that matter are the job's own on the nodes it
// commits (nobody else may write them, and none but filters of base may
// be read consistently), and the overlay's reads must not hold base
// against the job's writes.
type top struct{ block.Forward }

func openTop(ctx context.Context, o *block.Opener, opts *topOptions) (block.Impl, error) {
	c, err := o.Attach(ctx, "backing", opts.Backing, block.RoleFilter)
	if err != nil {
		return nil, err
	}
	return &top{block.Forward{C: c}}, nil
}

// ChildPerm implements block.ChildPermer.
func (*top) ChildPerm(c *block.Child, perm, shared block.Perm) (block.Perm, block.Perm) {
	return 0, block.PermAll
}

func init() {
	d := block.Register("commit_top", block.KindFilter, openTop)
	d.Implicit = true
}
