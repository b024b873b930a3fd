package blkdebug

import (
	"slices"

	"github.com/blockd/blockd/pkg/block"
)

// Options are BlockdevOptionsBlkdebug's members.
type Options struct {
	Image             block.NodeRef        `json:"image"`
	Config            *string              `json:"config,omitempty"`
	Align             *int64               `json:"align,omitempty"`
	MaxTransfer       *int64               `json:"max-transfer,omitempty"`
	OptWriteZero      *int64               `json:"opt-write-zero,omitempty"`
	MaxWriteZero      *int64               `json:"max-write-zero,omitempty"`
	OptDiscard        *int64               `json:"opt-discard,omitempty"`
	MaxDiscard        *int64               `json:"max-discard,omitempty"`
	InjectError       []InjectErrorOptions `json:"inject-error,omitempty"`
	SetState          []SetStateOptions    `json:"set-state,omitempty"`
	TakeChildPerms    []Permission         `json:"take-child-perms,omitempty"`
	UnshareChildPerms []Permission         `json:"unshare-child-perms,omitempty"`
}

// InjectErrorOptions is BlkdebugInjectErrorOptions: fail requests with an
// errno once Event has happened (in State, if given).
type InjectErrorOptions struct {
	Event Event `json:"event"`
	// State: the rule is armed by Event only in this state; 0 or unset:
	// in any state.
	State *int64 `json:"state,omitempty"`
	// IOType: the kind of request that fails; unset: every kind but
	// block-status.
	IOType *IOType `json:"iotype,omitempty"`
	// Errno is the error (default EIO, 5); 0 lets requests succeed.
	Errno *int64 `json:"errno,omitempty"`
	// Sector: only requests that contain the first byte of this 512-byte
	// sector fail; unset (or -1): every request.
	Sector *int64 `json:"sector,omitempty"`
	// Once: the rule is deleted after it failed a request.
	Once *bool `json:"once,omitempty"`
	// Immediately: QEMU fails the request before yielding; blockd fails
	// every injected request before it reaches the child either way.
	Immediately *bool `json:"immediately,omitempty"`
}

// SetStateOptions is BlkdebugSetStateOptions: move to NewState when
// Event happens (in State, if given).
type SetStateOptions struct {
	Event    Event  `json:"event"`
	State    *int64 `json:"state,omitempty"`
	NewState int64  `json:"new_state"`
}

// Event is QMP's BlkdebugEvent.
type Event string

// events are the values of BlkdebugEvent in qsd 7.2, in schema order.
var events = []string{
	"l1_update", "l1_grow_alloc_table", "l1_grow_write_table", "l1_grow_activate_table",
	"l2_load", "l2_update", "l2_update_compressed", "l2_alloc_cow_read", "l2_alloc_write",
	"read_aio", "read_backing_aio", "read_compressed", "write_aio", "write_compressed",
	"vmstate_load", "vmstate_save", "cow_read", "cow_write",
	"reftable_load", "reftable_grow", "reftable_update",
	"refblock_load", "refblock_update", "refblock_update_part", "refblock_alloc",
	"refblock_alloc_hookup", "refblock_alloc_write", "refblock_alloc_write_blocks",
	"refblock_alloc_write_table", "refblock_alloc_switch_table",
	"cluster_alloc", "cluster_alloc_bytes", "cluster_free", "flush_to_os", "flush_to_disk",
	"pwritev_rmw_head", "pwritev_rmw_after_head", "pwritev_rmw_tail", "pwritev_rmw_after_tail",
	"pwritev", "pwritev_zero", "pwritev_done", "empty_image_prepare",
	"l1_shrink_write_table", "l1_shrink_free_l2_clusters", "cor_write", "cluster_alloc_space", "none",
}

// EnumValues implements qmp.Enum.
func (Event) EnumValues() []string { return events }

// Names of some events (block's Debug* constants list all that blockd
// fires): formats fire read_aio and write_aio into their file, the
// generic layer fires pwritev, pwritev_zero and pwritev_done on the node
// written and flush_to_os and flush_to_disk into the primary child of the
// node flushed, and blkdebug fires none when it opens.
const (
	EventReadAIO     Event = "read_aio"
	EventWriteAIO    Event = "write_aio"
	EventPwritev     Event = "pwritev"
	EventPwritevZero Event = "pwritev_zero"
	EventPwritevDone Event = "pwritev_done"
	EventFlushToOS   Event = "flush_to_os"
	EventFlushToDisk Event = "flush_to_disk"
	EventNone        Event = "none"
)

// IOType is QMP's BlkdebugIOType.
type IOType string

const (
	IORead        IOType = "read"
	IOWrite       IOType = "write"
	IOWriteZeroes IOType = "write-zeroes"
	IODiscard     IOType = "discard"
	IOFlush       IOType = "flush"
	IOBlockStatus IOType = "block-status"
)

var ioTypes = []string{"read", "write", "write-zeroes", "discard", "flush", "block-status"}

// EnumValues implements qmp.Enum.
func (IOType) EnumValues() []string { return ioTypes }

func (t IOType) bit() uint { return 1 << slices.Index(ioTypes, string(t)) }

// defaultIOTypes: a rule without iotype fails every kind of request but
// block status (QEMU's default, kept from before iotype existed).
const defaultIOTypes = 1<<0 | 1<<1 | 1<<2 | 1<<3 | 1<<4

// Permission is QMP's BlockPermission.
type Permission string

var permissions = []struct {
	name string
	perm block.Perm
}{
	{"consistent-read", block.PermConsistentRead},
	{"write", block.PermWrite},
	{"write-unchanged", block.PermWriteUnchanged},
	{"resize", block.PermResize},
}

// EnumValues implements qmp.Enum.
func (Permission) EnumValues() []string {
	s := make([]string, len(permissions))
	for i, p := range permissions {
		s[i] = p.name
	}
	return s
}

func (p Permission) perm() (block.Perm, bool) {
	for _, x := range permissions {
		if x.name == string(p) {
			return x.perm, true
		}
	}
	return 0, false
}

// enumError is the message of the QMP decoder for a value outside an
// enum; open repeats the check for callers that decode leniently.
func enumError(member, value string) error {
	return block.Errorf(block.ErrInvalid, "Parameter '%s' does not accept value '%s'", member, value)
}
