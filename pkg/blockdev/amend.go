package blockdev

import (
	"context"
	"encoding/json"
	"slices"

	"github.com/blockd/blockd/pkg/block"
	"github.com/blockd/blockd/pkg/formats/qcow2"
	"github.com/blockd/blockd/pkg/jobs"
	"github.com/blockd/blockd/pkg/qmp"
)

// amendArgs are x-blockdev-amend's arguments.
type amendArgs struct {
	JobID    string       `json:"job-id"`
	NodeName string       `json:"node-name"`
	Options  AmendOptions `json:"options"`
	Force    *bool        `json:"force,omitempty"`
}

// AmendOptions is BlockdevAmendOptions, a union on driver. In qsd 7.2
// only qcow2's and luks's variants have members; the other drivers' are
// empty.
type AmendOptions struct {
	Driver qcow2.DriverName `json:"driver"`
	// Qcow2 is the variant when Driver is qcow2.
	Qcow2 *qcow2.AmendOptions `json:"-"`
	// LUKS is the variant when Driver is luks (blockd has no luks driver;
	// it is decoded so that bad arguments get qsd's messages).
	LUKS *qcow2.LUKSAmendOptions `json:"-"`
}

// UnmarshalQMP decodes the driver, then the variant's members with it, so
// that errors come in the order QEMU's visitor gives them.
func (o *AmendOptions) UnmarshalQMP(raw json.RawMessage, path string) error {
	var head struct {
		Driver qcow2.DriverName `json:"driver"`
	}
	if err := qmp.Decode(raw, path, &head, &map[string]json.RawMessage{}); err != nil {
		return err
	}
	o.Driver = head.Driver
	switch head.Driver {
	case "qcow2":
		var v struct {
			Encrypt *cryptoAmend `json:"encrypt,omitempty"`
		}
		if err := qmp.Decode(raw, path, &head, &v); err != nil {
			return err
		}
		o.Qcow2 = &qcow2.AmendOptions{}
		if v.Encrypt != nil {
			o.Qcow2.Encrypt = &v.Encrypt.CryptoAmendOptions
		}
		return nil
	case "luks":
		o.LUKS = new(qcow2.LUKSAmendOptions)
		return qmp.Decode(raw, path, &head, o.LUKS)
	}
	return qmp.Decode(raw, path, &head)
}

// variant is what the node's driver receives.
func (o *AmendOptions) variant() any {
	switch {
	case o.Qcow2 != nil:
		return o.Qcow2
	case o.LUKS != nil:
		return o.LUKS
	}
	return nil
}

// cryptoAmend decodes QCryptoBlockAmendOptions, a union on format.
type cryptoAmend struct{ qcow2.CryptoAmendOptions }

func (c *cryptoAmend) UnmarshalQMP(raw json.RawMessage, path string) error {
	var head struct {
		Format qcow2.CryptoFormat `json:"format"`
	}
	if err := qmp.Decode(raw, path, &head, &map[string]json.RawMessage{}); err != nil {
		return err
	}
	c.Format = head.Format
	if head.Format != "luks" {
		return qmp.Decode(raw, path, &head)
	}
	c.LUKS = new(qcow2.LUKSAmendOptions)
	return qmp.Decode(raw, path, &head, c.LUKS)
}

// notBuiltInQSD are drivers of qsd 7.2's BlockdevDriver enum that its
// build (Debian's 7.2) does not have, for which x-blockdev-amend says
// the driver is not found rather than that it differs from the node's.
var notBuiltInQSD = []string{"blkreplay"}

// xBlockdevAmend is x-blockdev-amend: with qsd's checks in qsd's order,
// it starts an "amend" job (not a block job; it stays concluded until
// job-dismiss) in which the node's driver changes the image's options.
// blockd opens no encrypted image, so a qcow2 amend has nothing to do
// without encrypt and fails, as qsd does for an unencrypted image, with
// it.
func (s *Server) xBlockdevAmend(ctx context.Context, a *amendArgs) (empty, error) {
	s.G.Lock()
	n := s.G.Lookup(a.NodeName)
	s.G.Unlock()
	drv := string(a.Options.Driver)
	// compat(qsd-7.2): the messages of qmp_x_blockdev_amend, in order.
	switch {
	case n == nil:
		return empty{}, qmp.Errorf("Cannot find device='' nor node-name='%s'", a.NodeName)
	case slices.Contains(notBuiltInQSD, drv):
		return empty{}, qmp.Errorf("Block driver '%s' not found or not supported", drv)
	case n.Driver().Name != drv:
		return empty{}, qmp.Errorf("x-blockdev-amend doesn't support changing the block driver")
	}
	am, ok := n.Impl().(block.Amender)
	if !ok {
		return empty{}, qmp.Errorf("Driver does not support x-blockdev-amend")
	}
	opts, force := a.Options.variant(), a.Force != nil && *a.Force
	// The job body is one call, as a create job's is (progress 0/1, then
	// 1/1 however it ends).
	_, err := s.Jobs.Start(ctx, a.JobID, "amend", &jobs.CreateBody{Create: func(ctx context.Context) error {
		return am.Amend(ctx, opts, force)
	}}, jobs.Options{AutoFinalize: true, AutoDismiss: false})
	return empty{}, err
}
