package nbd

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
)

// ExportOptions describe an export. Zero values select defaults; the
// caller's value is never modified.
type ExportOptions struct {
	// Name is what clients ask for in NBD_OPT_GO / NBD_OPT_EXPORT_NAME.
	// There is no default export: a client asking for "" gets the export
	// named "" if there is one, as with QEMU.
	Name string
	// Description is shown by NBD_OPT_LIST and NBD_INFO_DESCRIPTION.
	Description string
	// Writable exports accept WRITE, TRIM and WRITE_ZEROES; others are
	// advertised read-only and refuse those with EPERM.
	Writable bool
	// AllocationDepth offers the qemu:allocation-depth metadata context.
	AllocationDepth bool
	// Bitmaps are offered as qemu:dirty-bitmap:NAME metadata contexts,
	// in this order. As in QEMU a name may repeat (two nodes' bitmaps of
	// the same name); a query then selects the first.
	Bitmaps []ExportBitmap
	// MultiConn advertises NBD_FLAG_CAN_MULTI_CONN: a flush or FUA write on
	// one connection is visible on all of them.
	MultiConn bool
	// Block size constraints advertised with NBD_INFO_BLOCK_SIZE; zero
	// means 1, 4096 and 32 MiB. MinBlock is enforced (EINVAL for
	// unaligned requests) only for clients that asked for block sizes;
	// MaxBlock is enforced for READ and WRITE.
	MinBlock, PrefBlock, MaxBlock uint32
	// SparseReadMin: a structured READ of at least this many bytes asks
	// the backend for block status first and sends the ranges that read
	// as zeroes as hole chunks, without reading them. Zero selects the
	// default (64 KiB); a negative value never does.
	SparseReadMin int
}

const defaultSparseReadMin = 64 << 10

// Export is one named export of a Server.
type Export struct {
	srv  *Server
	opts ExportOptions // defaults applied

	backend  atomic.Pointer[backendBox]
	gate     gate
	lastSize atomic.Int64 // size last read, for handshakes while quiesced

	mu struct {
		sync.Mutex
		conns   map[*conn]struct{}
		removed bool
	}
}

type backendBox struct{ b Backend }

// Name returns the export name.
func (e *Export) Name() string { return e.opts.Name }

// Options returns the export's options, with defaults filled in.
func (e *Export) Options() ExportOptions { return e.opts }

// Backend returns the backend the export currently serves.
func (e *Export) Backend() Backend { return e.backend.Load().b }

// Clients returns the number of clients in transmission phase on the export.
func (e *Export) Clients() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return len(e.mu.conns)
}

// InFlight returns the number of backend calls in flight on the export
// (a caller checking the gate counts for an instant too).
func (e *Export) InFlight() int64 { return e.gate.n.Load() }

// Quiesce stops the export from starting backend calls and waits until
// every call in flight has returned. Requests that arrive meanwhile wait.
// Calls nest: each Quiesce needs its Resume.
func (e *Export) Quiesce() { e.gate.quiesce() }

// Resume undoes one Quiesce. When the last one is undone, waiting requests
// proceed.
func (e *Export) Resume() { e.gate.resume() }

// SetBackend replaces the backend of a live export, atomically for its
// clients: it quiesces the export, so that no call is in flight on the old
// backend when it returns, swaps and resumes. It may be called while the
// export is already quiesced (inside the caller's drained section).
//
// The new backend should have the same size: clients were told the size
// at the handshake. Requests are checked against the size of the backend
// current at the time of the request.
func (e *Export) SetBackend(b Backend) {
	if b == nil {
		panic("nbd: SetBackend(nil)")
	}
	e.gate.quiesce()
	e.backend.Store(&backendBox{b})
	e.lastSize.Store(b.Size())
	e.gate.resume()
}

// enter starts a backend call; leave must follow when it returns.
func (e *Export) enter(ctx context.Context) (Backend, error) {
	if err := e.gate.enter(ctx); err != nil {
		return nil, err
	}
	return e.backend.Load().b, nil
}

func (e *Export) leave() { e.gate.leave() }

// size returns the backend's size for the handshake. It does not wait for
// a quiesced export: then the size last seen is used.
func (e *Export) size() (int64, error) {
	if !e.gate.tryEnter() {
		if e.gate.isDead() {
			return 0, errGateClosed
		}
		return e.lastSize.Load(), nil
	}
	defer e.leave()
	n := e.backend.Load().b.Size()
	e.lastSize.Store(n)
	return n, nil
}

func (e *Export) attach(c *conn) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.mu.removed {
		return false
	}
	e.mu.conns[c] = struct{}{}
	return true
}

func (e *Export) detach(c *conn) {
	e.mu.Lock()
	delete(e.mu.conns, c)
	e.mu.Unlock()
}

// transmissionFlags are the flags sent with NBD_INFO_EXPORT and after
// NBD_OPT_EXPORT_NAME. They follow qemu-storage-daemon 7.2: flush, FUA and
// cache always; trim and (fast) write zeroes only when writable.
func (e *Export) transmissionFlags(structured bool) uint16 {
	f := uint16(tfHasFlags | tfSendFlush | tfSendFUA | tfSendCache)
	if e.opts.Writable {
		f |= tfSendTrim | tfSendWriteZeroes | tfSendFastZero
	} else {
		f |= tfReadOnly
	}
	if structured {
		f |= tfSendDF
	}
	if e.opts.MultiConn {
		f |= tfCanMultiConn
	}
	return f
}

func checkExportOptions(o *ExportOptions, maxInFlight int64) error {
	if len(o.Name) > maxStringLen {
		return fmt.Errorf("export name is longer than %d bytes", maxStringLen)
	}
	if len(o.Description) > maxStringLen {
		return fmt.Errorf("export description is longer than %d bytes", maxStringLen)
	}
	o.Bitmaps = slices.Clone(o.Bitmaps) // the caller's slice stays theirs
	for _, b := range o.Bitmaps {
		if b.Map == nil {
			return fmt.Errorf("bitmap '%s' has no map", b.Name)
		}
		if len(ctxDirtyBitmap)+len(b.Name) > maxStringLen {
			return fmt.Errorf("bitmap name is longer than %d bytes", maxStringLen-len(ctxDirtyBitmap))
		}
	}
	if o.MinBlock == 0 {
		o.MinBlock = defaultMinBlock
	}
	if o.PrefBlock == 0 {
		o.PrefBlock = max(defaultPrefBlock, o.MinBlock)
	}
	if o.MaxBlock == 0 {
		// 32 MiB, or less if the connection buffer limit is smaller.
		m := uint32(min(int64(defaultMaxBlock), maxInFlight))
		o.MaxBlock = max(m-m%o.MinBlock, o.PrefBlock)
	}
	pow2 := func(v uint32) bool { return v&(v-1) == 0 }
	switch {
	case !pow2(o.MinBlock) || o.MinBlock > 64<<10:
		return fmt.Errorf("minimum block size %d is not a power of 2 up to 64 KiB", o.MinBlock)
	case !pow2(o.PrefBlock) || o.PrefBlock < max(o.MinBlock, 512):
		return fmt.Errorf("preferred block size %d is not a power of 2 of at least 512 and the minimum block size", o.PrefBlock)
	case o.MaxBlock%o.MinBlock != 0 || o.MaxBlock < o.PrefBlock:
		return fmt.Errorf("maximum block size %d is not a multiple of the minimum block size or is below the preferred one", o.MaxBlock)
	case int64(o.MaxBlock) > maxInFlight:
		return fmt.Errorf("maximum block size %d is larger than the per-connection buffer limit %d", o.MaxBlock, maxInFlight)
	}
	if o.SparseReadMin == 0 {
		o.SparseReadMin = defaultSparseReadMin
	}
	return nil
}

// errGateClosed is returned to requests on an export that was removed.
var errGateClosed = fmt.Errorf("export is being removed: %w", errShutdown)

var errShutdown = errors.New("server is shutting down")

// gate counts backend calls in flight on one export and lets Quiesce and
// removal wait for them. The fast path of enter/leave is two atomic
// operations.
type gate struct {
	n       atomic.Int64 // calls in flight, plus callers that are checking
	blocked atomic.Bool  // set while quiesced or closed

	mu      sync.Mutex
	cond    sync.Cond     // L is &mu; broadcast when n reaches 0 while blocked
	depth   int           // guarded by mu: Quiesce nesting
	dead    bool          // guarded by mu: closed for good
	resumed chan struct{} // guarded by mu: closed when quiescing ends
}

func (g *gate) enter(ctx context.Context) error {
	for {
		g.n.Add(1)
		if !g.blocked.Load() {
			return nil
		}
		g.leave()
		g.mu.Lock()
		if g.dead {
			g.mu.Unlock()
			return errGateClosed
		}
		if g.depth == 0 {
			g.mu.Unlock()
			continue
		}
		ch := g.resumed
		g.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func (g *gate) tryEnter() bool {
	g.n.Add(1)
	if !g.blocked.Load() {
		return true
	}
	g.leave()
	return false
}

func (g *gate) isDead() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.dead
}

func (g *gate) leave() {
	if g.n.Add(-1) == 0 && g.blocked.Load() {
		g.mu.Lock()
		g.cond.Broadcast()
		g.mu.Unlock()
	}
}

// waitIdleLocked waits, with mu held and blocked set, until n is zero.
func (g *gate) waitIdleLocked() {
	for g.n.Load() != 0 {
		g.cond.Wait()
	}
}

func (g *gate) quiesce() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.depth++
	if g.depth == 1 && !g.dead {
		g.resumed = make(chan struct{})
		g.blocked.Store(true)
	}
	g.waitIdleLocked()
}

func (g *gate) resume() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.depth == 0 {
		return
	}
	g.depth--
	if g.depth == 0 && !g.dead {
		g.blocked.Store(false)
		close(g.resumed)
		g.resumed = nil
	}
}

// close makes every later enter fail and waits for calls in flight.
func (g *gate) close() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.dead {
		g.dead = true
		g.blocked.Store(true)
		if g.resumed != nil {
			close(g.resumed) // wake waiters so they see dead
			g.resumed = nil
		}
	}
	g.waitIdleLocked()
}
