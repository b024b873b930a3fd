// Package wire is the NBD wire format shared by blockd's NBD server
// (pkg/nbd) and its NBD client (the nbd block driver): magics, option,
// command and reply numbers, flags and fixed sizes, named after the
// protocol document (doc/proto.md of the NetworkBlockDevice/nbd project)
// in Go style. It holds numbers only, so that both ends agree on one
// definition of them.
package wire

// Magics.
const (
	MagicNBD        = 0x4e42444d41474943 // "NBDMAGIC"
	MagicOpt        = 0x49484156454F5054 // "IHAVEOPT"
	MagicOptReply   = 0x0003e889045565a9
	MagicRequest    = 0x25609513
	MagicSimple     = 0x67446698
	MagicStructured = 0x668e33ef
)

// Handshake flags (server) and client flags.
const (
	FlagFixedNewstyle = 1 << 0
	FlagNoZeroes      = 1 << 1

	ClientFlagFixedNewstyle = 1 << 0
	ClientFlagNoZeroes      = 1 << 1
)

// Transmission flags.
const (
	TFHasFlags        = 1 << 0
	TFReadOnly        = 1 << 1
	TFSendFlush       = 1 << 2
	TFSendFUA         = 1 << 3
	TFRotational      = 1 << 4
	TFSendTrim        = 1 << 5
	TFSendWriteZeroes = 1 << 6
	TFSendDF          = 1 << 7
	TFCanMultiConn    = 1 << 8
	TFSendResize      = 1 << 9
	TFSendCache       = 1 << 10
	TFSendFastZero    = 1 << 11
)

// Options.
const (
	OptExportName      = 1
	OptAbort           = 2
	OptList            = 3
	OptPeekExport      = 4
	OptStartTLS        = 5
	OptInfo            = 6
	OptGo              = 7
	OptStructuredReply = 8
	OptListMetaContext = 9
	OptSetMetaContext  = 10
)

// Option reply types.
const (
	RepAck         = 1
	RepServer      = 2
	RepInfo        = 3
	RepMetaContext = 4

	RepErrBit           = 1 << 31
	RepErrUnsup         = RepErrBit + 1
	RepErrPolicy        = RepErrBit + 2
	RepErrInvalid       = RepErrBit + 3
	RepErrPlatform      = RepErrBit + 4
	RepErrTLSReqd       = RepErrBit + 5
	RepErrUnknown       = RepErrBit + 6
	RepErrShutdown      = RepErrBit + 7
	RepErrBlockSizeReqd = RepErrBit + 8
	RepErrTooBig        = RepErrBit + 9
)

// NBD_INFO types.
const (
	InfoExport      = 0
	InfoName        = 1
	InfoDescription = 2
	InfoBlockSize   = 3
)

// Commands.
const (
	CmdRead        = 0
	CmdWrite       = 1
	CmdDisc        = 2
	CmdFlush       = 3
	CmdTrim        = 4
	CmdCache       = 5
	CmdWriteZeroes = 6
	CmdBlockStatus = 7
)

// Command flags.
const (
	CmdFlagFUA      = 1 << 0
	CmdFlagNoHole   = 1 << 1
	CmdFlagDF       = 1 << 2
	CmdFlagReqOne   = 1 << 3
	CmdFlagFastZero = 1 << 4
)

// Structured reply flags and chunk types.
const (
	ReplyFlagDone = 1 << 0

	ChunkNone        = 0
	ChunkOffsetData  = 1
	ChunkOffsetHole  = 2
	ChunkBlockStatus = 5
	ChunkError       = 1<<15 + 1
	ChunkErrorOffset = 1<<15 + 2
)

// base:allocation flags.
const (
	StateHole = 1 << 0
	StateZero = 1 << 1
)

// qemu:dirty-bitmap:NAME flag. It is bit 0, as StateHole is: a client
// that reads a dirty bitmap through a base:allocation-minded block status
// (QEMU's x-dirty-bitmap) sees dirty ranges as holes.
const StateDirty = 1 << 0

// Error values.
const (
	ErrnoPerm     = 1
	ErrnoIO       = 5
	ErrnoNoMem    = 12
	ErrnoInval    = 22
	ErrnoNoSpc    = 28
	ErrnoOverflow = 75
	ErrnoNotSup   = 95
	ErrnoShutdown = 108
)

// Metadata context names.
const (
	CtxBaseAllocation  = "base:allocation"
	CtxAllocationDepth = "qemu:allocation-depth"
	CtxDirtyBitmap     = "qemu:dirty-bitmap:" // + the bitmap's name
)

// Sizes.
const (
	RequestHeaderSize    = 28
	SimpleReplySize      = 16
	StructuredHeaderSize = 20

	MaxStringLen = 4096 // the longest string (name, query) the protocol allows

	// The block sizes that apply when a server sends no NBD_INFO_BLOCK_SIZE.
	DefaultMinBlock  = 1
	DefaultPrefBlock = 4096
	DefaultMaxBlock  = 32 << 20
)
