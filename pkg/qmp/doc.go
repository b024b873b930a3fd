// Package qmp is the server side of the QEMU Machine Protocol as
// qemu-storage-daemon 7.2 speaks it: framing, greeting, capabilities
// negotiation, request checks, dispatch to registered handlers, errors and
// events. It knows nothing about block devices; pkg/blockdev registers the
// commands.
//
// # Model
//
//	client ──► reader ──► checks ──┐                  ┌──► writer ──► client
//	client ──► reader ──► checks ──┼─► executor ──────┼──► writer ──► client
//	client ──► reader ──► checks ──┘   (one command   └──► writer ──► client
//	                                    at a time)      ▲   bounded queues
//	                     jobs, exports ── Emit ─────────┘
//
// Every connection has a reader goroutine that parses the input stream and
// checks each request, and a writer goroutine that owns the socket's write
// side and drains a bounded queue of replies and events. Requests that pass
// the checks go to a single executor that runs commands one at a time,
// across all connections, as QEMU's main loop does: handlers never run
// concurrently with each other, so the graph code behind them sees one
// command at a time, and long work belongs in jobs. A reader submits its
// next request only after the previous one was answered, so each
// connection's replies keep request order.
//
// Emit puts an event into the queue of every negotiated connection at once,
// with one timestamp for all copies. A command's reply is queued after the
// handler returns, so the events a command causes (a job's "created" and
// "running", a whole lifecycle for a job with nothing to do) reach its
// client before the reply, exactly as with qsd. Queuing never blocks: a
// client that lets its queue overflow, or that sends a value larger than
// MaxMessageSize, is disconnected alone; a client that disconnects while
// its command runs does not stop the command, whose reply is dropped.
// Handlers get a context that only Close cancels.
//
// 'quit' calls ServerOptions.Quit (the daemon tears down and emits the
// matching events), queues the reply, flushes and closes every connection,
// stops the listeners and closes Done. Close does the same without a reply
// or flush (SIGTERM) and waits for every goroutine of the server.
//
// Unlike qsd, which serves one client per socket and keeps further ones
// waiting, every socket serves any number of clients at once.
//
// # Input
//
// Input is a stream of JSON values, not lines: a request may span lines,
// several may share one, and none needs a newline (go-qemu sends none).
// The parser is QEMU's grammar: single-quoted strings, \' escapes, modified
// UTF-8, duplicate keys rejected, nesting limited to 1024, integers beyond
// 64 bits and numbers with a fraction or exponent held as doubles. A syntax
// error is answered when the streamer sees the value end, and the lexer
// resynchronises at the next structural or control character, so one bad
// line may give several errors, with qsd's wording.
//
// Requests are checked in qsd's order and with its messages: not an object,
// unexpected members, execute/arguments/exec-oob types, negotiation, the
// command's existence, OOB. Arguments reach a handler as plain JSON; Decode
// and Command decode them strictly with QEMU's wording for missing,
// unexpected and mistyped parameters.
//
// # Output
//
// Every message is one line ending in CRLF, formatted as qsd formats it:
// `", "` between members and `": "` after keys, no other spaces, every
// non-ASCII or control character as \uXXXX with upper-case hex, no HTML
// escaping, doubles as C's "%.17g". Replies are {"return": R, "id": ID}
// and {"id": ID, "error": {"class": C, "desc": D}}; events are
// {"timestamp": {"seconds": S, "microseconds": U}, "event": N, "data": D}.
// Members of objects are written in the order qsd's hash table iterates
// them (ServerOptions.KeepMemberOrder turns that off for returned values
// and event data), which makes the output of a command that returns the
// same values as qsd identical to qsd's byte for byte. A monitor served
// with MonitorOptions.Pretty writes qsd's pretty=on layout instead.
package qmp
