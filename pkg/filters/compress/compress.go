package compress

import (
	"context"

	"github.com/blockd/blockd/pkg/block"
)

// Options are BlockdevOptionsGenericFormat's members.
type Options struct {
	File block.NodeRef `json:"file"`
}

// Filter is an open compress node.
type Filter struct{ block.Forward }

func open(ctx context.Context, o *block.Opener, opts *Options) (block.Impl, error) {
	c, err := o.Attach(ctx, "file", opts.File, block.RoleFilter)
	if err != nil {
		return nil, err
	}
	if !c.Node().Caps().Compressed {
		// compat(qsd-7.2): filter-compress.c's message.
		return nil, block.Errorf(block.ErrNotSupported, "Compression is not supported for underlying format: %s", c.Node().Driver().Name)
	}
	return &Filter{block.Forward{C: c}}, nil
}

// RefuseReopen implements block.ReopenRefuser: qsd's compress driver
// has no reopen handler, so blockdev-reopen of the node fails.
func (f *Filter) RefuseReopen() {}

// Caps are the child's, aligned to its clusters.
func (f *Filter) Caps() block.Caps {
	c := f.C.Node().Caps()
	if cs := c.Limits.OptimalTransfer; cs > c.Limits.RequestAlign {
		c.Limits.RequestAlign = cs
	}
	return c
}

// WriteAt writes p compressed. The generic layer pads a write of the
// short last cluster to a whole one; what lies past the child's end is
// dropped (it reads as zeroes anyway).
func (f *Filter) WriteAt(ctx context.Context, p []byte, off int64, fl block.Flags) error {
	if end := f.C.Size(); off+int64(len(p)) > end && off < end {
		p = p[:end-off]
	}
	return f.C.WriteAt(ctx, p, off, fl|block.FlagCompressed)
}
