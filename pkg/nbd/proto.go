package nbd

// Wire constants of the NBD protocol, named after the protocol document
// (doc/proto.md of the NetworkBlockDevice/nbd project) in Go style.

const (
	magicNBD        = 0x4e42444d41474943 // "NBDMAGIC"
	magicOpt        = 0x49484156454F5054 // "IHAVEOPT"
	magicOptReply   = 0x0003e889045565a9
	magicRequest    = 0x25609513
	magicSimple     = 0x67446698
	magicStructured = 0x668e33ef
)

// Handshake flags (server) and client flags.
const (
	flagFixedNewstyle = 1 << 0
	flagNoZeroes      = 1 << 1

	clientFlagFixedNewstyle = 1 << 0
	clientFlagNoZeroes      = 1 << 1
)

// Transmission flags.
const (
	tfHasFlags        = 1 << 0
	tfReadOnly        = 1 << 1
	tfSendFlush       = 1 << 2
	tfSendFUA         = 1 << 3
	tfRotational      = 1 << 4
	tfSendTrim        = 1 << 5
	tfSendWriteZeroes = 1 << 6
	tfSendDF          = 1 << 7
	tfCanMultiConn    = 1 << 8
	tfSendResize      = 1 << 9
	tfSendCache       = 1 << 10
	tfSendFastZero    = 1 << 11
)

// Options.
const (
	optExportName      = 1
	optAbort           = 2
	optList            = 3
	optPeekExport      = 4
	optStartTLS        = 5
	optInfo            = 6
	optGo              = 7
	optStructuredReply = 8
	optListMetaContext = 9
	optSetMetaContext  = 10
)

// Option reply types.
const (
	repAck         = 1
	repServer      = 2
	repInfo        = 3
	repMetaContext = 4

	repErrBit           = 1 << 31
	repErrUnsup         = repErrBit + 1
	repErrPolicy        = repErrBit + 2
	repErrInvalid       = repErrBit + 3
	repErrPlatform      = repErrBit + 4
	repErrTLSReqd       = repErrBit + 5
	repErrUnknown       = repErrBit + 6
	repErrShutdown      = repErrBit + 7
	repErrBlockSizeReqd = repErrBit + 8
	repErrTooBig        = repErrBit + 9
)

// NBD_INFO types.
const (
	infoExport      = 0
	infoName        = 1
	infoDescription = 2
	infoBlockSize   = 3
)

// Commands.
const (
	cmdRead        = 0
	cmdWrite       = 1
	cmdDisc        = 2
	cmdFlush       = 3
	cmdTrim        = 4
	cmdCache       = 5
	cmdWriteZeroes = 6
	cmdBlockStatus = 7
)

// Command flags.
const (
	cmdFlagFUA      = 1 << 0
	cmdFlagNoHole   = 1 << 1
	cmdFlagDF       = 1 << 2
	cmdFlagReqOne   = 1 << 3
	cmdFlagFastZero = 1 << 4
)

// Structured reply flags and chunk types.
const (
	replyFlagDone = 1 << 0

	chunkNone        = 0
	chunkOffsetData  = 1
	chunkOffsetHole  = 2
	chunkBlockStatus = 5
	chunkError       = 1<<15 + 1
	chunkErrorOffset = 1<<15 + 2
)

// base:allocation flags.
const (
	stateHole = 1 << 0
	stateZero = 1 << 1
)

// Error values.
const (
	errnoPerm     = 1
	errnoIO       = 5
	errnoNoMem    = 12
	errnoInval    = 22
	errnoNoSpc    = 28
	errnoOverflow = 75
	errnoNotSup   = 95
	errnoShutdown = 108
)

// Metadata context names and the ids this server gives them.
const (
	ctxBaseAllocation  = "base:allocation"
	ctxAllocationDepth = "qemu:allocation-depth"

	ctxIDBaseAllocation  = 0
	ctxIDAllocationDepth = 1
)

// Sizes.
const (
	requestHeaderSize    = 28
	simpleReplySize      = 16
	structuredHeaderSize = 20

	maxStringLen = 4096     // the longest string (name, query) the protocol allows
	maxOptionLen = 64 << 10 // longest option payload we parse; longer ones are skipped

	defaultMinBlock  = 1
	defaultPrefBlock = 4096
	defaultMaxBlock  = 32 << 20
)
