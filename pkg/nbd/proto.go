package nbd

import "github.com/blockd/blockd/pkg/nbd/wire"

// The wire constants the server uses, under the server's own short
// names. Their one definition is in pkg/nbd/wire, which the NBD client
// (the nbd block driver) shares; the names stay unexported here so the
// server code reads as before.

const (
	magicNBD        = wire.MagicNBD
	magicOpt        = wire.MagicOpt
	magicOptReply   = wire.MagicOptReply
	magicRequest    = wire.MagicRequest
	magicSimple     = wire.MagicSimple
	magicStructured = wire.MagicStructured
)

// Handshake flags (server) and client flags.
const (
	flagFixedNewstyle = wire.FlagFixedNewstyle
	flagNoZeroes      = wire.FlagNoZeroes

	clientFlagFixedNewstyle = wire.ClientFlagFixedNewstyle
	clientFlagNoZeroes      = wire.ClientFlagNoZeroes
)

// Transmission flags.
const (
	tfHasFlags        = wire.TFHasFlags
	tfReadOnly        = wire.TFReadOnly
	tfSendFlush       = wire.TFSendFlush
	tfSendFUA         = wire.TFSendFUA
	tfRotational      = wire.TFRotational
	tfSendTrim        = wire.TFSendTrim
	tfSendWriteZeroes = wire.TFSendWriteZeroes
	tfSendDF          = wire.TFSendDF
	tfCanMultiConn    = wire.TFCanMultiConn
	tfSendResize      = wire.TFSendResize
	tfSendCache       = wire.TFSendCache
	tfSendFastZero    = wire.TFSendFastZero
)

// Options.
const (
	optExportName      = wire.OptExportName
	optAbort           = wire.OptAbort
	optList            = wire.OptList
	optPeekExport      = wire.OptPeekExport
	optStartTLS        = wire.OptStartTLS
	optInfo            = wire.OptInfo
	optGo              = wire.OptGo
	optStructuredReply = wire.OptStructuredReply
	optListMetaContext = wire.OptListMetaContext
	optSetMetaContext  = wire.OptSetMetaContext
)

// Option reply types.
const (
	repAck         = wire.RepAck
	repServer      = wire.RepServer
	repInfo        = wire.RepInfo
	repMetaContext = wire.RepMetaContext

	repErrBit           = wire.RepErrBit
	repErrUnsup         = wire.RepErrUnsup
	repErrPolicy        = wire.RepErrPolicy
	repErrInvalid       = wire.RepErrInvalid
	repErrPlatform      = wire.RepErrPlatform
	repErrTLSReqd       = wire.RepErrTLSReqd
	repErrUnknown       = wire.RepErrUnknown
	repErrShutdown      = wire.RepErrShutdown
	repErrBlockSizeReqd = wire.RepErrBlockSizeReqd
	repErrTooBig        = wire.RepErrTooBig
)

// NBD_INFO types.
const (
	infoExport      = wire.InfoExport
	infoName        = wire.InfoName
	infoDescription = wire.InfoDescription
	infoBlockSize   = wire.InfoBlockSize
)

// Commands.
const (
	cmdRead        = wire.CmdRead
	cmdWrite       = wire.CmdWrite
	cmdDisc        = wire.CmdDisc
	cmdFlush       = wire.CmdFlush
	cmdTrim        = wire.CmdTrim
	cmdCache       = wire.CmdCache
	cmdWriteZeroes = wire.CmdWriteZeroes
	cmdBlockStatus = wire.CmdBlockStatus
)

// Command flags.
const (
	cmdFlagFUA      = wire.CmdFlagFUA
	cmdFlagNoHole   = wire.CmdFlagNoHole
	cmdFlagDF       = wire.CmdFlagDF
	cmdFlagReqOne   = wire.CmdFlagReqOne
	cmdFlagFastZero = wire.CmdFlagFastZero
)

// Structured reply flags and chunk types.
const (
	replyFlagDone = wire.ReplyFlagDone

	chunkNone        = wire.ChunkNone
	chunkOffsetData  = wire.ChunkOffsetData
	chunkOffsetHole  = wire.ChunkOffsetHole
	chunkBlockStatus = wire.ChunkBlockStatus
	chunkError       = wire.ChunkError
	chunkErrorOffset = wire.ChunkErrorOffset
)

// base:allocation flags.
const (
	stateHole  = wire.StateHole
	stateZero  = wire.StateZero
	stateDirty = wire.StateDirty
)

// Error values.
const (
	errnoPerm     = wire.ErrnoPerm
	errnoIO       = wire.ErrnoIO
	errnoNoMem    = wire.ErrnoNoMem
	errnoInval    = wire.ErrnoInval
	errnoNoSpc    = wire.ErrnoNoSpc
	errnoOverflow = wire.ErrnoOverflow
	errnoNotSup   = wire.ErrnoNotSup
	errnoShutdown = wire.ErrnoShutdown
)

// Metadata context names and the ids this server gives them.
const (
	ctxBaseAllocation  = wire.CtxBaseAllocation
	ctxAllocationDepth = wire.CtxAllocationDepth

	ctxDirtyBitmap = wire.CtxDirtyBitmap

	// As QEMU numbers them: the export's bitmaps get 2, 3, ... in the
	// order the export lists them.
	ctxIDBaseAllocation  = 0
	ctxIDAllocationDepth = 1
	ctxIDDirtyBitmap     = 2
)

// Sizes.
const (
	requestHeaderSize    = wire.RequestHeaderSize
	simpleReplySize      = wire.SimpleReplySize
	structuredHeaderSize = wire.StructuredHeaderSize

	maxStringLen = wire.MaxStringLen
	maxOptionLen = 64 << 10 // longest option payload we parse; longer ones are skipped

	defaultMinBlock  = wire.DefaultMinBlock
	defaultPrefBlock = wire.DefaultPrefBlock
	defaultMaxBlock  = wire.DefaultMaxBlock
)
