// Package blkdebug is the "blkdebug" filter driver: it passes requests to
// its child ("image") and fails chosen ones with an errno, and it can
// claim request limits other than its child's, to test how the layers
// above cope. Tests of other packages use it as the fault injector (Inject,
// Of(n).Fire, State).
//
// # Rules
//
// Options inject-error and set-state hold rules (BlkdebugInjectErrorOptions,
// BlkdebugSetStateOptions); "config" names a file with more, in QEMU's
// format:
//
//	[inject-error]
//	event = "read_aio"
//	errno = "28"
//	sector = "1024"
//	once = "on"
//
// Every rule belongs to an event. The node has a state, 1 after open. When
// an event happens, the inject-error rules of that event whose "state" is
// the current one (or unset) become the armed rules, replacing those armed
// before; if the event has none, the armed rules stay. Then the first
// set-state rule of the event whose "state" matches moves the node to its
// "new_state". A request fails with the "errno" (default 5, EIO) of the
// first armed rule that matches it: its "iotype" (read, write,
// write-zeroes, discard, flush, block-status; unset: all but block-status)
// is the request's kind, and, if it has a "sector", the request contains
// the first byte of that 512-byte sector (flushes have no range: only
// rules without a sector fail them). An errno of 0 lets the request pass.
// A rule with "once" is deleted after it failed a request. "immediately"
// changes nothing in blockd: an injected error never reaches the child.
// Errors are syscall.Errno values wrapped so that errors.As finds them
// and Error() is strerror's text ("Input/output error", as qsd reports it).
//
// Example: fail the third read of the node, once:
//
//	"set-state": [{"event": "read_aio", "state": 1, "new_state": 2},
//	              {"event": "read_aio", "state": 2, "new_state": 3}],
//	"inject-error": [{"event": "read_aio", "state": 3, "once": true}]
//
// # Events
//
// Rules accept every BlkdebugEvent name (unknown ones: "Parameter 'event'
// does not accept value 'x'"). Most of them are fired by QEMU's qcow2 from
// inside the driver above blkdebug (l2_load, cluster_alloc, ...); blockd's
// formats fire none, so rules on them only arm through Fire. blkdebug
// fires, on its own requests:
//
//	"none"                         once, when the node is opened
//	"read_aio"                     before every read
//	"write_aio", "pwritev"         before every write
//	"pwritev_zero"                 before every write-zeroes
//	"pwritev_done"                 after every write and write-zeroes
//	"flush_to_os", "flush_to_disk" before every flush
//
// In QEMU, read_aio and write_aio come from the format above (qcow2, for
// guest data) rather than from blkdebug itself, so under a format a rule
// armed by read_aio also sees that format's metadata reads in blockd.
//
// # Limits
//
// "align" (a power of two) becomes the node's request alignment and
// "max-transfer" its largest request, so the generic layer pads and splits
// requests before they reach the node. "opt-write-zero"/"max-write-zero"
// and "opt-discard"/"max-discard" are enforced by the node itself: the
// aligned part of a write-zeroes is passed on in pieces of at most
// max-write-zero and the unaligned head and tail are written as zeroes
// (with FlagNoFallback, they fail with block.ErrNotSupported); the aligned
// part of a discard is passed on in pieces of at most max-discard and the
// rest dropped. Each limit must be a multiple of the alignment in force
// ("Cannot meet constraints with max-transfer 1000").
//
// # Permissions
//
// Those of a filter: what the parents take and share passes through to
// the image, plus "take-child-perms", minus "unshare-child-perms".
package blkdebug
