// Package nbd is an NBD protocol server: it serves Backends as named
// exports to NBD clients (qemu-img, qemu-io, nbdinfo, nbdcopy, the Linux
// kernel, QEMU's nbd driver) and answers the way qemu-storage-daemon 7.2
// does where the protocol leaves a choice. It imports nothing of blockd's:
// the block layer is reached only through the Backend interface.
//
// # Handshake
//
// Only the fixed newstyle handshake is spoken, with NBD_FLAG_NO_ZEROES.
// Options:
//
//   - NBD_OPT_EXPORT_NAME, NBD_OPT_GO, NBD_OPT_INFO. There is no default
//     export: "" names the export called "" if there is one (as in QEMU).
//     NBD_INFO_BLOCK_SIZE is always sent (minimum 1 unless the client asked
//     for block sizes), NBD_INFO_NAME when asked, NBD_INFO_DESCRIPTION
//     whenever the export has one. An unknown export gets
//     NBD_REP_ERR_UNKNOWN (NBD_OPT_EXPORT_NAME: the connection is closed).
//   - NBD_OPT_LIST: one NBD_REP_SERVER per export, name then description.
//   - NBD_OPT_STRUCTURED_REPLY (once; again or with data: ERR_INVALID).
//   - NBD_OPT_LIST_META_CONTEXT and NBD_OPT_SET_META_CONTEXT with
//     "base:allocation", "qemu:allocation-depth" when the export enables
//     it, and "qemu:dirty-bitmap:NAME" for each of the export's
//     ExportOptions.Bitmaps. Listing with no query, or with the "base:",
//     "qemu:" and "qemu:dirty-bitmap:" wildcards, lists what the export
//     offers (of that namespace); in a SET the wildcards select nothing;
//     other queries are ignored. Contexts are answered base, depth, then
//     bitmaps in the export's order, with QEMU's ids (0, 1, then 2 and up
//     by the bitmap's position). SET needs structured replies, LIST does
//     not (as in QEMU). Contexts selected for one export are dropped when
//     the client then opens another.
//   - NBD_OPT_ABORT (ACK, then close); NBD_OPT_STARTTLS is refused with
//     NBD_REP_ERR_POLICY; anything else gets NBD_REP_ERR_UNSUP. Options are
//     parsed up to 64 KiB; longer ones are skipped without buffering and
//     answered ERR_INVALID (ERR_UNSUP if unknown).
//
// Transmission flags: HAS_FLAGS, SEND_FLUSH, SEND_FUA, SEND_CACHE always;
// SEND_TRIM, SEND_WRITE_ZEROES and SEND_FAST_ZERO when writable, READ_ONLY
// otherwise; SEND_DF with structured replies; CAN_MULTI_CONN when the
// export's MultiConn option says so.
//
// # Transmission: one reader, a pool of workers, one writer
//
// Each connection in transmission has:
//
//   - a reader goroutine that parses request headers and WRITE payloads.
//     Before it reads a WRITE payload or hands on a READ, it takes that
//     many bytes from the connection's buffer budget
//     (ServerOptions.MaxBufferBytes, 64 MiB by default) and, for a WRITE, a
//     pooled buffer of the next power-of-two size; when the budget is spent
//     it stops reading, so a client cannot make the server allocate without
//     bound.
//   - ServerOptions.Workers worker goroutines (16 by default) that validate
//     requests and run them on the backend, so that many requests are in
//     flight and complete in any order. A READ of at most 32 KiB from a
//     backend that is a NoWaitReader is first tried by the reader itself
//     (a read that must not wait: the page cache or nothing); when that
//     works it is answered on the spot, with no hand-off, and the replies
//     of a burst of such reads go out in one write when the reader next
//     waits for the client. A read that would wait goes to the workers,
//     so a slow disk never stalls the reader.
//   - a single writer, the connection's write lock: a worker whose request
//     finished takes it and appends its reply frames to a batch buffer, so
//     each reply goes out as soon as its work has finished, never before,
//     and frames never interleave. The last of the workers queued on the
//     lock writes the batch, so replies that complete together share one
//     write; a large READ payload goes out with writev together with the
//     bytes in front of it. The buffer and the budget are returned then.
//   - for READs of 64 KiB and more from a backend that is a PipeReader
//     (raw over a file in blockd), the worker assembles the whole reply
//     in a pipe instead of a buffer (headers written, data spliced in
//     from the page cache) and the writer splices the pipe into the
//     socket: the payload is never copied by the server. Anything that
//     stops the splice (a filter in the chain, O_DIRECT, a short file, a
//     reply too big for the pipe) sends the request down the buffer path.
//     UNIX connections get a 4 MiB send buffer, so a large reply goes
//     out in one call rather than in pieces with waits between them.
//     (A writer goroutine fed by a channel would cost one more goroutine
//     hand-off per request; the lock keeps the same serialisation.)
//
// NBD_CMD_DISC, end of input and protocol violations (bad magic) all end
// the connection the same way: the reader stops, requests in flight finish
// and their replies are sent if the socket still works, then the socket is
// closed. Backend calls get a context that is cancelled only when the
// server closes the connection (Server.Close, a hard RemoveExport).
//
// # Commands
//
// READ (DF), WRITE (FUA), FLUSH, TRIM, WRITE_ZEROES (NO_HOLE, FAST_ZERO,
// FUA), CACHE, BLOCK_STATUS (REQ_ONE) and DISC. With structured replies a
// READ of at least ExportOptions.SparseReadMin bytes asks BlockStatus first
// and sends the ranges that read as zeroes as OFFSET_HOLE chunks without
// reading them (if BlockStatus fails, other than with ErrNotSupported, so
// does the READ, as in qsd); other reads, and DF reads, are one
// OFFSET_DATA chunk.
// BLOCK_STATUS sends one chunk per selected context, in the order above,
// merging extents with equal values, at most 8192 per chunk (1 with
// REQ_ONE); a backend without block status is reported as allocated data.
// A bitmap's chunk comes from its DirtyMap (dirty ranges flagged
// NBD_STATE_DIRTY, 1), not from the backend, which is asked only when an
// allocation context is selected. Successful replies to other commands are simple replies; errors are
// ERROR chunks carrying a message when structured replies were negotiated.
//
// Checks, each failing only its request: flags not valid for the command
// (EINVAL); a range past the end of the export (EINVAL for every command,
// as qsd 7.2 answers, though the protocol suggests ENOSPC for writes);
// READ, WRITE and CACHE longer than the maximum block size (EINVAL; the
// WRITE payload is read and dropped, keeping the stream in sync); writes,
// trims and write-zeroes on a read-only export (EPERM; qsd 7.2 sends
// EINVAL); BLOCK_STATUS without a selected context or of length 0
// (EINVAL); an unknown command (EINVAL); requests not aligned to the
// minimum block size, for clients that asked for block sizes (EINVAL).
//
// # Errors
//
// A backend error is sent as an NBD error for that request, and the
// connection stays up (see ErrnoOf): syscall.Errno values map to their NBD
// equivalents (EPERM, EIO, ENOMEM, EINVAL, ENOSPC, EOVERFLOW, ENOTSUP,
// ESHUTDOWN; EROFS to EPERM, EACCES to EINVAL as qsd does (a snapshot
// view's refusal), EDQUOT and EFBIG to ENOSPC),
// ErrNotSupported to ENOTSUP, a cancelled context to ESHUTDOWN, anything
// else to EIO. ENOTSUP from Trim, Cache and Flush counts as success (they
// are hints, or there is nothing to flush); from a Zero without FAST_ZERO
// the server writes zero buffers instead, since the protocol does not
// allow ENOTSUP there.
//
// # Exports, draining and graph changes
//
// Every backend call goes through the export's gate, which counts calls in
// flight. Export.Quiesce stops new calls and waits for those in flight;
// requests that arrive meanwhile wait (Resume releases them). SetBackend
// quiesces, swaps and resumes, so no call runs on the old backend once it
// returns; it also works inside a Quiesce. RemoveExport with hard
// disconnects the clients; without it, it refuses while clients are
// connected (ErrExportInUse). Once RemoveExport returns, no call on the
// backend is in flight or will start. Server.Close closes listeners and
// connections and waits for every goroutine.
package nbd
