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
// Example: fail the third read the format above makes, once:
//
//	"set-state": [{"event": "read_aio", "state": 1, "new_state": 2},
//	              {"event": "read_aio", "state": 2, "new_state": 3}],
//	"inject-error": [{"event": "read_aio", "state": 3, "once": true}]
//
// # Events
//
// Rules accept every BlkdebugEvent name (unknown ones: "Parameter 'event'
// does not accept value 'x'"). As in QEMU, blkdebug fires no event for
// the requests it gets, apart from "none" once when it is opened. Events
// come from above, through block.DebugEvent (Filter implements
// block.DebugEventer):
//
//   - the driver whose child the node is fires its steps into it: a
//     format reads guest data after read_aio and writes it after
//     write_aio; qcow2 also fires l2_load, l2_update, cluster_alloc,
//     refblock_load, cow_read ... (pkg/formats/qcow2 lists them);
//   - the generic layer fires pwritev (or pwritev_zero) and pwritev_done
//     around every write (write-zeroes) to the node, and flush_to_os and
//     flush_to_disk into it before the node above it is flushed.
//
// Only the node a driver fires into sees the event: under a raw format
// under qcow2, a blkdebug node sees raw's read_aio for every read,
// including qcow2's metadata reads, and never qcow2's l2_load. Directly
// under an export or a job, it sees only the generic layer's events.
// Fire, and block.DebugEvent, play a driver's event in tests.
//
// Example: fail the first read of guest data at host sector 1024 of a
// qcow2 image, once:
//
//	{"driver": "qcow2", "file": {"driver": "blkdebug",
//	  "image": {"driver": "file", "filename": "x.qcow2"},
//	  "inject-error": [{"event": "read_aio", "sector": 1024, "once": true}]}}
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
