//go:build !ceph

package rbd

import (
	"context"
	"errors"

	"github.com/blockd/blockd/pkg/block"
)

// Without the build tag "ceph" the driver is a stub: its options are
// known (the schema matches qsd's and mistakes in them are reported as
// usual), but every open and create says how to get the real driver.

func init() {
	block.Register("rbd", block.KindProtocol, func(ctx context.Context, o *block.Opener, opts *Options) (block.Impl, error) {
		if err := opts.check(o.ReadOnly()); err != nil {
			return nil, err
		}
		return nil, block.Errorf(block.ErrNotSupported, "%s", buildHint)
	})
	block.RegisterCreate("rbd", func(ctx context.Context, g *block.Graph, opts *CreateOptions) error {
		return errors.New(buildHint)
	})
}
