package qcow2

import (
	"context"
	"fmt"

	"github.com/blockd/blockd/pkg/block"
)

// AmendOptions are BlockdevAmendOptionsQcow2's members: in qsd 7.2 only
// the encryption (its keyslots) can be amended.
type AmendOptions struct {
	Encrypt *CryptoAmendOptions `json:"encrypt,omitempty"`
}

// CryptoAmendOptions is QCryptoBlockAmendOptions, a union on format; only
// its luks variant has members. pkg/blockdev decodes it.
type CryptoAmendOptions struct {
	Format CryptoFormat      `json:"format"`
	LUKS   *LUKSAmendOptions `json:"-"` // when Format is luks
}

// CryptoFormat is QCryptoBlockFormat.
type CryptoFormat string

// EnumValues implements qmp.Enum.
func (CryptoFormat) EnumValues() []string { return []string{"qcow", "luks"} }

// LUKSAmendOptions is QCryptoBlockAmendOptionsLUKS (also the luks
// driver's BlockdevAmendOptionsLUKS). blockd has no encryption: these are
// decoded so that bad arguments get qsd's messages.
type LUKSAmendOptions struct {
	State     LUKSKeyslotState `json:"state"`
	NewSecret *string          `json:"new-secret,omitempty"`
	OldSecret *string          `json:"old-secret,omitempty"`
	Keyslot   *int64           `json:"keyslot,omitempty"`
	IterTime  *int64           `json:"iter-time,omitempty"`
	Secret    *string          `json:"secret,omitempty"`
}

// LUKSKeyslotState is QCryptoBlockLUKSKeyslotState.
type LUKSKeyslotState string

// EnumValues implements qmp.Enum.
func (LUKSKeyslotState) EnumValues() []string { return []string{"active", "inactive"} }

// Amend implements block.Amender. blockd opens only images without
// encryption, so there is never anything to amend: options without
// encrypt change nothing, and encrypt gets qsd's answer for an image that
// has none.
func (q *image) Amend(ctx context.Context, opts any, force bool) error {
	o, ok := opts.(*AmendOptions)
	if !ok {
		return fmt.Errorf("qcow2: amend options of type %T: %w", opts, block.ErrInternal)
	}
	if o.Encrypt != nil && q.hdr.cryptMethod == 0 {
		// compat(qsd-7.2)
		return block.Errorf(block.ErrNotSupported, "image is not encrypted, can't amend")
	}
	if o.Encrypt != nil {
		return block.Errorf(block.ErrNotSupported, "Encrypted qcow2 images are not supported by blockd")
	}
	return nil
}
