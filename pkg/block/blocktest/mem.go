// Package blocktest has in-memory drivers and helpers for tests of the
// block layer and of drivers built on it. Importing it registers the
// drivers "blocktest-mem", "blocktest-filter" and "blocktest-cow"; only
// tests import it.
package blocktest

import (
	"context"
	"encoding/json"
	"sync"
	"testing"

	"github.com/blockd/blockd/pkg/block"
	"github.com/blockd/blockd/pkg/qmp"
)

// MemOptions configure a memory node.
type MemOptions struct {
	Size int64 `json:"size"`
	// Align is the request alignment the node claims (to test the gate).
	Align int64 `json:"align,omitempty"`
	// MaxTransfer is the largest request the node accepts.
	MaxTransfer int64 `json:"max-transfer,omitempty"`
	// Pattern, when set, fills the node with this byte at open.
	Pattern byte `json:"pattern,omitempty"`
	// Compressed, when set, is a cluster size: the node takes
	// block.FlagCompressed writes of whole clusters (stored plain, and
	// counted), as qcow2 does.
	Compressed int64 `json:"compressed,omitempty"`
}

// Mem is an in-memory protocol node that tracks which 512-byte sectors
// hold data, so block status is meaningful.
type Mem struct {
	mu    sync.RWMutex
	data  []byte
	alloc []bool // per sector
	opts  MemOptions

	// Reads and Writes count the requests the driver saw;
	// CompressedWrites the writes with block.FlagCompressed.
	Reads, Writes, CompressedWrites int
	// WritingBehind is how many users turned write-behind on and not
	// off again (block.WriteBehinder).
	WritingBehind int
}

// WriteBehind implements block.WriteBehinder by counting.
func (m *Mem) WriteBehind(on bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if on {
		m.WritingBehind++
	} else {
		m.WritingBehind--
	}
}

const sector = 512

func openMem(ctx context.Context, o *block.Opener, opts *MemOptions) (block.Impl, error) {
	m := &Mem{data: make([]byte, opts.Size), alloc: make([]bool, (opts.Size+sector-1)/sector), opts: *opts}
	if opts.Pattern != 0 {
		for i := range m.data {
			m.data[i] = opts.Pattern
		}
		for i := range m.alloc {
			m.alloc[i] = true
		}
	}
	return m, nil
}

func (m *Mem) Caps() block.Caps {
	return block.Caps{Zero: true, Discard: true, BlockStatus: true, Compressed: m.opts.Compressed > 0,
		Limits: block.Limits{RequestAlign: m.opts.Align, MaxTransfer: m.opts.MaxTransfer, OptimalTransfer: m.opts.Compressed}}
}

func (m *Mem) Size(ctx context.Context) (int64, error) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return int64(len(m.data)), nil
}

func (m *Mem) check(off, n int64) {
	if a := m.opts.Align; a > 1 && (off%a != 0 || n%a != 0) {
		panic("blocktest: unaligned request reached the driver")
	}
	if mt := m.opts.MaxTransfer; mt > 0 && n > mt {
		panic("blocktest: request above max-transfer reached the driver")
	}
}

func (m *Mem) ReadAt(ctx context.Context, p []byte, off int64, f block.Flags) error {
	m.check(off, int64(len(p)))
	m.mu.Lock()
	defer m.mu.Unlock()
	m.Reads++
	n := copy(p, m.data[min(off, int64(len(m.data))):])
	clear(p[n:])
	return nil
}

func (m *Mem) grow(end int64) {
	if end > int64(len(m.data)) {
		m.data = append(m.data, make([]byte, end-int64(len(m.data)))...)
		m.alloc = append(m.alloc, make([]bool, (end+sector-1)/sector-int64(len(m.alloc)))...)
	}
}

func (m *Mem) mark(off, n int64, v bool) {
	for s := off / sector; s < (off+n+sector-1)/sector; s++ {
		m.alloc[s] = v
	}
}

func (m *Mem) WriteAt(ctx context.Context, p []byte, off int64, f block.Flags) error {
	m.check(off, int64(len(p)))
	m.mu.Lock()
	defer m.mu.Unlock()
	if f&block.FlagCompressed != 0 {
		c := m.opts.Compressed
		if off%c != 0 || (int64(len(p))%c != 0 && off+int64(len(p)) < int64(len(m.data))) {
			return block.Errorf(block.ErrInvalid, "compressed write of %d bytes at %d: not whole clusters", len(p), off)
		}
		m.CompressedWrites++
	}
	m.Writes++
	m.grow(off + int64(len(p)))
	copy(m.data[off:], p)
	m.mark(off, int64(len(p)), true)
	return nil
}

func (m *Mem) Zero(ctx context.Context, off, n int64, f block.Flags) error {
	m.check(off, n)
	m.mu.Lock()
	defer m.mu.Unlock()
	m.grow(off + n)
	clear(m.data[off : off+n])
	m.mark(off, n, false)
	return nil
}

func (m *Mem) Discard(ctx context.Context, off, n int64) error { return m.Zero(ctx, off, n, 0) }

func (m *Mem) Flush(ctx context.Context) error { return nil }

func (m *Mem) BlockStatus(ctx context.Context, off, n int64) (block.Extent, error) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	first := m.alloc[off/sector]
	end := off + n
	for s := off/sector + 1; s*sector < end; s++ {
		if m.alloc[s] != first {
			end = s * sector
			break
		}
	}
	st := block.StatusAllocated | block.StatusOffsetValid
	if first {
		st |= block.StatusData
	} else {
		st |= block.StatusZero
	}
	return block.Extent{Len: end - off, Status: st, Offset: off}, nil
}

func (m *Mem) Truncate(ctx context.Context, size int64, exact bool) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if size < int64(len(m.data)) {
		m.data = m.data[:size]
		m.alloc = m.alloc[:(size+sector-1)/sector]
		return nil
	}
	m.grow(size)
	return nil
}

func (m *Mem) Close() error { return nil }

func (m *Mem) Filename() string { return "blocktest-mem://" }

// FilterOptions configure a pass-through test filter. FreezeTo names a
// node of its chain: the filter freezes the links down to it for its
// lifetime, as copy-on-read does with bottom.
type FilterOptions struct {
	File     block.NodeRef `json:"file"`
	FreezeTo string        `json:"freeze-to,omitempty"`
}

type filter struct{ block.Forward }

func openFilter(ctx context.Context, o *block.Opener, opts *FilterOptions) (block.Impl, error) {
	c, err := o.Attach(ctx, "file", opts.File, block.RoleFilter)
	if err != nil {
		return nil, err
	}
	if opts.FreezeTo != "" {
		if err := o.FreezeChain(o.Txn().Graph().Lookup(opts.FreezeTo)); err != nil {
			return nil, err
		}
	}
	return &filter{block.Forward{C: c}}, nil
}

// COWOptions configure a minimal copy-on-write format: data in "file",
// a per-sector allocation map in memory, unallocated reads from "backing".
// Like QEMU's formats, it fires read_aio, read_backing_aio and write_aio
// into its file (block.DebugEvent).
type COWOptions struct {
	File    block.NodeRef        `json:"file"`
	Backing *block.NodeRefOrNull `json:"backing,omitempty"`
}

type cow struct {
	file, backing *block.Child
	mu            sync.RWMutex
	alloc         []bool
}

func openCOW(ctx context.Context, o *block.Opener, opts *COWOptions) (block.Impl, error) {
	f, err := o.Attach(ctx, "file", opts.File, block.RoleImage)
	if err != nil {
		return nil, err
	}
	c := &cow{file: f, alloc: make([]bool, (f.Size()+sector-1)/sector)}
	if opts.Backing != nil && !opts.Backing.Null {
		if c.backing, err = o.Attach(ctx, "backing", opts.Backing.NodeRef, block.RoleCOW); err != nil {
			return nil, err
		}
	}
	return c, nil
}

func (c *cow) Caps() block.Caps                        { return block.Caps{BlockStatus: true} }
func (c *cow) Size(ctx context.Context) (int64, error) { return c.file.Size(), nil }

func (c *cow) ReadAt(ctx context.Context, p []byte, off int64, f block.Flags) error {
	for len(p) > 0 {
		s := off / sector
		k := min(int64(len(p)), (s+1)*sector-off)
		c.mu.RLock()
		a := c.alloc[s]
		c.mu.RUnlock()
		var err error
		switch {
		case a:
			block.DebugEvent(c.file, block.DebugReadAIO)
			err = c.file.ReadAt(ctx, p[:k], off, f)
		case c.backing != nil:
			block.DebugEvent(c.file, block.DebugReadBackingAIO)
			err = c.backing.ReadAt(ctx, p[:k], off, f)
		default:
			clear(p[:k])
		}
		if err != nil {
			return err
		}
		p, off = p[k:], off+k
	}
	return nil
}

// WriteAt writes whole sectors only (tests use aligned writes).
func (c *cow) WriteAt(ctx context.Context, p []byte, off int64, f block.Flags) error {
	block.DebugEvent(c.file, block.DebugWriteAIO)
	if err := c.file.WriteAt(ctx, p, off, f); err != nil {
		return err
	}
	c.mu.Lock()
	for s := off / sector; s < (off+int64(len(p))+sector-1)/sector; s++ {
		c.alloc[s] = true
	}
	c.mu.Unlock()
	return nil
}

func (c *cow) Zero(ctx context.Context, off, n int64, f block.Flags) error {
	return block.ErrNotSupported
}
func (c *cow) Discard(ctx context.Context, off, n int64) error { return nil }
func (c *cow) Flush(ctx context.Context) error                 { return c.file.Flush(ctx) }

func (c *cow) BlockStatus(ctx context.Context, off, n int64) (block.Extent, error) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	first := c.alloc[off/sector]
	end := off + n
	for s := off/sector + 1; s*sector < end; s++ {
		if c.alloc[s] != first {
			end = s * sector
			break
		}
	}
	if !first {
		return block.Extent{Len: end - off}, nil
	}
	return block.Extent{Len: end - off, Status: block.StatusData | block.StatusAllocated | block.StatusOffsetValid, Offset: off, Child: c.file}, nil
}

func (c *cow) Truncate(ctx context.Context, size int64, exact bool) error {
	return block.ErrNotSupported
}
func (c *cow) Close() error { return nil }

// SetBacking implements block.BackingSetter.
func (c *cow) SetBacking(b *block.Child) { c.backing = b }

func init() {
	block.Register("blocktest-mem", block.KindProtocol, openMem)
	block.Register("blocktest-filter", block.KindFilter, openFilter)
	d := block.Register("blocktest-cow", block.KindFormat, openCOW)
	d.SupportsBacking = true
}

// Open adds a monitor-owned node from JSON options, failing the test on error.
func Open(t testing.TB, g *block.Graph, options string) *block.Node {
	t.Helper()
	n, err := TryOpen(g, options)
	if err != nil {
		t.Fatalf("open %s: %v", options, err)
	}
	return n
}

// TryOpen adds a monitor-owned node from JSON options.
func TryOpen(g *block.Graph, options string) (*block.Node, error) {
	tx := g.Begin()
	defer tx.Abort()
	n, err := tx.Open(context.Background(), json.RawMessage(options), true)
	if err != nil {
		return nil, err
	}
	return n, tx.Commit()
}

// NewRoot attaches a root user with the given permissions.
func NewRoot(t testing.TB, n *block.Node, perm, shared block.Perm) *block.Root {
	t.Helper()
	tx := n.Graph().Begin()
	defer tx.Abort()
	r, err := tx.NewRoot(n, block.RootOptions{Perm: perm, Shared: shared})
	if err != nil {
		t.Fatalf("root on %s: %v", n.Name(), err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatalf("root on %s: %v", n.Name(), err)
	}
	return r
}

// NewGraph returns an empty graph that decodes options with QMP's strict
// rules, as the daemon does.
func NewGraph() *block.Graph { return block.NewGraph(block.Decoder(qmp.Decode), nil) }
