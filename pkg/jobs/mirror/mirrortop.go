package mirror

import (
	"context"

	"github.com/blockd/blockd/pkg/block"
)

// TopOptions are the options of the mirror_top filter. Users cannot name
// the driver; a mirroring job opens it above its source.
type TopOptions struct {
	Backing block.NodeRef `json:"backing"`
	// Commit makes the filter take the permissions of an active commit
	// (QEMU's is_commit): it does not pass consistent read down (the
	// images being committed may not be read so) and lets others write
	// below it (the job writes base, under them).
	Commit bool `json:"x-commit,omitempty"`
}

// top is the mirror_top filter: like QEMU's, its filtered child is
// called "backing". Every write to the source passes through it, so the
// dirty bitmap the job puts on it records them all.
type top struct {
	block.Forward
	commit bool
}

func openTop(ctx context.Context, o *block.Opener, opts *TopOptions) (block.Impl, error) {
	c, err := o.Attach(ctx, "backing", opts.Backing, block.RoleFilter)
	if err != nil {
		return nil, err
	}
	return &top{Forward: block.Forward{C: c}, commit: opts.Commit}, nil
}

// ChildPerm implements block.ChildPermer: a filter's, adjusted for
// commit.
func (t *top) ChildPerm(c *block.Child, perm, shared block.Perm) (block.Perm, block.Perm) {
	if t.commit {
		return perm &^ block.PermConsistentRead, shared | block.PermWrite
	}
	return perm, shared
}

func init() {
	d := block.Register("mirror_top", block.KindFilter, openTop)
	d.Implicit = true
}
