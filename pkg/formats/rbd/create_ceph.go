//go:build ceph

package rbd

import (
	"context"
	"errors"
	"fmt"
	"math/bits"

	cephrbd "github.com/ceph/go-ceph/rbd"

	"github.com/blockd/blockd/pkg/block"
)

// create makes an rbd image (blockdev-create): size, and cluster-size as
// the object size; the cluster's defaults for everything else (features
// included), as qsd does.
func create(ctx context.Context, g *block.Graph, opts *CreateOptions) error {
	if opts.Encrypt != nil {
		return errEncrypt
	}
	loc := &opts.Location
	if loc.Encrypt != nil {
		return errEncrypt
	}
	if loc.KeySecret != nil {
		return errNoSecret(*loc.KeySecret)
	}
	if loc.Snapshot != nil {
		// compat(qsd-7.2): its words.
		return errors.New("Can't use snapshot name for image creation")
	}
	order := 0
	if opts.ClusterSize != nil {
		cs := *opts.ClusterSize
		if cs&(cs-1) != 0 {
			return errors.New("obj size needs to be power of 2")
		}
		if cs < 4096 {
			return errors.New("obj size too small")
		}
		order = bits.TrailingZeros64(cs)
	}
	c, err := connect(loc, false)
	if err != nil {
		return err
	}
	defer c.close()
	ro := cephrbd.NewRbdImageOptions()
	defer ro.Destroy()
	if order != 0 {
		if err := ro.SetUint64(cephrbd.ImageOptionOrder, uint64(order)); err != nil {
			return fmt.Errorf("error setting the object size: %s", strerror(err))
		}
	}
	if err := cephrbd.CreateImage(c.io, loc.Image, opts.Size, ro); err != nil {
		return fmt.Errorf("error rbd create: %s", strerror(err))
	}
	return nil
}
