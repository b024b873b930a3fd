package block

import (
	"context"
	"encoding/json"
	"fmt"
	"reflect"
	"sort"
	"sync"
)

// Kind says what sort of driver a node runs.
type Kind int

const (
	KindProtocol Kind = iota // stores bytes somewhere: file, null-co, nbd
	KindFormat               // interprets a child as an image: raw, qcow2
	KindFilter               // presents its one filtered child, changing only how
)

// Flags modify a single request.
type Flags uint32

const (
	// FlagFUA: the data is on stable storage when the call returns.
	FlagFUA Flags = 1 << iota
	// FlagMayUnmap: Zero may deallocate the range instead of writing zeroes.
	FlagMayUnmap
	// FlagNoFallback: Zero must fail with ErrNotSupported rather than be
	// emulated by writing a buffer of zeroes (NBD's FAST_ZERO).
	FlagNoFallback
	// FlagWriteUnchanged: the write does not change what a reader sees
	// (copy-on-read, stream); it needs only PermWriteUnchanged.
	FlagWriteUnchanged
	// FlagCompressed: WriteAt stores the data compressed (QEMU's
	// BDRV_REQ_WRITE_COMPRESSED). Only nodes whose Caps say Compressed
	// take it; the gate refuses it elsewhere with ErrNotSupported. The
	// driver sets the rules: qcow2 takes whole clusters at cluster-aligned
	// offsets (the last one may be short at the end of the image), only
	// into clusters that hold no data yet.
	FlagCompressed
)

// Limits are a node's constraints on requests. Zero values mean "none".
type Limits struct {
	// RequestAlign is the alignment of offset and length the driver needs
	// (a power of two; 0 or 1 means byte granularity). The generic layer
	// pads or splits requests so that a driver never sees less.
	RequestAlign int64
	// MaxTransfer is the largest request the driver accepts; the generic
	// layer splits larger ones. 0: no limit.
	MaxTransfer int64
	// OptimalTransfer is a hint for copy loops (e.g. the cluster size).
	OptimalTransfer int64
}

// Caps is what a node does natively. The generic layer asks once, at open
// (and after reopen), caches the answer, and emulates what is missing.
type Caps struct {
	Zero        bool // Zero is cheaper than writing zeroes
	Discard     bool // Discard can deallocate
	FUA         bool // WriteAt honours FlagFUA itself; else the gate flushes after
	BlockStatus bool // BlockStatus reports real allocation; else all data
	// Compressed: WriteAt takes FlagCompressed (the node itself, or the
	// node a filter passes it to).
	Compressed bool
	Limits     Limits
}

// Status describes an extent for BlockStatus.
type Status uint8

const (
	// StatusData: the extent reads as data from this node (or below, see
	// StatusRecurse).
	StatusData Status = 1 << iota
	// StatusZero: the extent reads as zeroes.
	StatusZero
	// StatusAllocated: this node itself answers reads of the extent; when
	// clear the reads fall through to the COW child.
	StatusAllocated
	// StatusRecurse: the extent maps 1:1 (plus Offset) onto Extent.Child;
	// ask that child for the real status (raw over file, a filter).
	StatusRecurse
	// StatusOffsetValid: Offset is where the data lives in Child.
	StatusOffsetValid
)

// Extent is the status of the first Len bytes of a queried range.
type Extent struct {
	Len    int64
	Status Status
	Offset int64  // with StatusOffsetValid or StatusRecurse
	Child  *Child // where Offset points, when known
}

// Impl is one open driver instance: what a driver's open function returns.
//
// Before any call the generic layer (the Child methods) has checked that the
// range lies inside the node and honours Caps().Limits, that the caller
// holds the needed permission, and that ctx is not nil. Requests are all or
// nothing: a nil error means len(p) bytes moved. Implementations must not
// retain p. Every method may be called from many goroutines at once; a
// driver protects its own metadata.
type Impl interface {
	Caps() Caps
	// Size is the node's virtual size in bytes.
	Size(ctx context.Context) (int64, error)
	ReadAt(ctx context.Context, p []byte, off int64, f Flags) error
	WriteAt(ctx context.Context, p []byte, off int64, f Flags) error
	// Zero makes the range read as zeroes. Return ErrNotSupported to have
	// the generic layer write zeroes instead (unless FlagNoFallback).
	Zero(ctx context.Context, off, n int64, f Flags) error
	// Discard is advisory: it may do nothing; reads of the range return
	// unspecified data afterwards (zeroes for every driver we have).
	Discard(ctx context.Context, off, n int64) error
	Flush(ctx context.Context) error
	// BlockStatus describes the range starting at off, at most n bytes and
	// at least one byte, in one extent.
	BlockStatus(ctx context.Context, off, n int64) (Extent, error)
	// Truncate changes the virtual size. exact=false lets a protocol driver
	// keep a larger size where it cannot shrink.
	Truncate(ctx context.Context, size int64, exact bool) error
	// Close releases everything; the node is drained and has no parents.
	Close() error
}

// PermChecker is implemented by drivers that act on permission changes
// (file: image locks). CheckPerm may refuse; SetPerm applies a state that
// CheckPerm accepted. Both run under the graph lock.
type PermChecker interface {
	CheckPerm(perm, shared Perm) error
	SetPerm(perm, shared Perm)
}

// ChildPermer is implemented by drivers that take other permissions on a
// child than the role defaults (see DefaultChildPerm). perm and shared are
// what the node's own parents need of it.
type ChildPermer interface {
	ChildPerm(c *Child, perm, shared Perm) (Perm, Perm)
}

// Drainer is implemented by drivers that hold requests (throttle): while
// drained they must let held requests go at once. A node that a change
// closes while it drains it gets no DrainEnd: Close is the last call.
type Drainer interface {
	DrainBegin()
	DrainEnd()
}

// Infoer is implemented by drivers with more to say in
// query-named-block-nodes: the "image" member's extras.
type Infoer interface {
	ImageInfo(ctx context.Context) ImageInfo
}

// ClusterSize is the cluster size n's driver reports (Infoer), looked
// for down through filters as QEMU's bdrv_get_info does; 0 for none.
func ClusterSize(ctx context.Context, n *Node) int64 {
	if inf, ok := n.impl.(Infoer); ok {
		return inf.ImageInfo(ctx).ClusterSize
	}
	if c := FilteredChild(n); c != nil {
		return ClusterSize(ctx, c.Node())
	}
	return 0
}

// DefaultBitmapGranularity is the granularity of a dirty bitmap on (or
// for) n when none is given: the node's cluster size, kept between
// 4 KiB and 64 KiB; 64 KiB for a node without clusters (QEMU's
// bdrv_get_default_bitmap_granularity, which block-dirty-bitmap-add and
// the mirror's target use).
func DefaultBitmapGranularity(ctx context.Context, n *Node) int64 {
	if cs := ClusterSize(ctx, n); cs > 0 {
		return min(max(cs, 4096), 65536)
	}
	return 65536
}

// ImageInfo is the part of QMP's ImageInfo a driver supplies.
type ImageInfo struct {
	ClusterSize    int64          // 0: not reported
	DirtyFlag      *bool          // nil: not reported
	FormatSpecific map[string]any // {"type": ..., "data": {...}} or nil
	ActualSize     *int64         // nil: from the storage child / not reported
}

// DriverStatser is implemented by drivers with their own statistics for
// query-blockstats' "driver-specific" member.
type DriverStatser interface {
	DriverStats(st *Stats) map[string]any
}

// BackingFiler is implemented by formats whose image header names a
// backing file. The strings are the header's, unchanged by graph changes.
type BackingFiler interface {
	BackingFile() (name, format string)
}

// BackingSetter is implemented by drivers with SupportsBacking: the graph
// tells the driver its COW child changed (nil: none). It is called with
// the node drained, under the graph lock, and on undo with the old child.
type BackingSetter interface {
	SetBacking(c *Child)
}

// Reopener is implemented by drivers whose own options can change at run
// time (blockdev-reopen). Prepare checks the new options (a pointer to the
// driver's options struct) and returns functions that apply or drop them;
// it must not change anything visible itself. It runs drained, under the
// graph lock.
type Reopener interface {
	PrepareReopen(ctx context.Context, opts any) (commit, abort func(), err error)
}

// ReopenRefuser is implemented by drivers that cannot be reopened at all
// (QEMU's drivers without a reopen handler, such as quorum): blockdev-reopen
// of such a node fails, even with unchanged options.
type ReopenRefuser interface {
	RefuseReopen()
}

// ReadOnlyChanger is implemented by drivers that must act when their
// node's read-only state changes at run time (reopen, snapshots): a file
// opened read-only reopens its descriptor read-write; a format writes its
// caches back before it becomes read-only. It is called drained, under the
// graph lock, children before parents when going read-write and parents
// before children when going read-only; undo reverses it on abort.
type ReadOnlyChanger interface {
	ChangeReadOnly(ctx context.Context, ro bool) (undo func(), err error)
}

// Filenamer is implemented by protocol drivers: the name QMP reports.
type Filenamer interface {
	Filename() string
}

// Decoder decodes a JSON object strictly into dsts (QMP's rules: unknown
// members are an error unless some dst knows them). The QMP layer injects
// it; block does not know QMP.
type Decoder func(raw json.RawMessage, path string, dsts ...any) error

// OpenFunc builds a node's Impl from decoded options. It attaches children
// through o, so roles and permissions are set in one place.
type OpenFunc[O any] func(ctx context.Context, o *Opener, opts *O) (Impl, error)

// Driver is a registered driver.
type Driver struct {
	Name string
	Kind Kind
	// Implicit drivers (mirror_top, commit_top) cannot be added by users.
	Implicit bool
	// SupportsBacking: nodes of this driver can have a COW child that is
	// set after open (snapshots, reopen); the Impl implements
	// BackingSetter.
	SupportsBacking bool
	// Probe scores how likely the first bytes of an image belong to this
	// format (0: not at all). Used for backing files without a format.
	Probe func(head []byte) int

	open    func(ctx context.Context, o *Opener, raw json.RawMessage, dec Decoder) (Impl, error)
	newOpts func() any
	prepare PrepareFunc // see prepare.go; nil for most drivers
}

var registry = struct {
	sync.RWMutex
	m map[string]*Driver
}{m: map[string]*Driver{}}

// Register adds a driver. O is the options struct the driver's own QMP
// members are decoded into, strictly, beside CommonOptions.
func Register[O any](name string, kind Kind, open OpenFunc[O]) *Driver {
	d := &Driver{
		Name: name,
		Kind: kind,
		open: func(ctx context.Context, o *Opener, raw json.RawMessage, dec Decoder) (Impl, error) {
			opts := new(O)
			if err := dec(raw, o.path, &o.common, opts); err != nil {
				return nil, err
			}
			o.opts = opts
			return open(ctx, o, opts)
		},
		newOpts: func() any { return new(O) },
	}
	registry.Lock()
	defer registry.Unlock()
	if _, dup := registry.m[name]; dup {
		panic(fmt.Sprintf("block: driver %q registered twice", name))
	}
	registry.m[name] = d
	return d
}

// LookupDriver finds a registered driver by name.
func LookupDriver(name string) *Driver {
	registry.RLock()
	defer registry.RUnlock()
	return registry.m[name]
}

// Drivers lists the registered drivers sorted by name.
func Drivers() []*Driver {
	registry.RLock()
	defer registry.RUnlock()
	ds := make([]*Driver, 0, len(registry.m))
	for _, d := range registry.m {
		ds = append(ds, d)
	}
	sort.Slice(ds, func(i, j int) bool { return ds[i].Name < ds[j].Name })
	return ds
}

// AllocatedSizer is implemented by protocol drivers that can tell how much
// storage the node occupies (QMP's actual-size).
type AllocatedSizer interface {
	AllocatedSize() (int64, error)
}

// CreateFunc creates an image (blockdev-create). It runs in a job's
// goroutine; it takes the graph lock itself when it needs nodes.
type CreateFunc[O any] func(ctx context.Context, g *Graph, opts *O) error

// Creator is a registered blockdev-create implementation.
type Creator struct {
	Driver string
	// Decode checks the options (synchronously, before the job starts)
	// and returns the function the job runs.
	Decode func(raw json.RawMessage, dec Decoder) (func(ctx context.Context, g *Graph) error, error)
	// Options is the type Decode decodes the driver's members into
	// (for query-qmp-schema).
	Options reflect.Type
}

var creators = struct {
	sync.RWMutex
	m map[string]*Creator
}{m: map[string]*Creator{}}

// RegisterCreate adds a blockdev-create implementation for driver. O is
// the driver's BlockdevCreateOptions member set (without "driver").
func RegisterCreate[O any](driver string, create CreateFunc[O]) {
	c := &Creator{
		Driver:  driver,
		Options: reflect.TypeFor[O](),
		Decode: func(raw json.RawMessage, dec Decoder) (func(ctx context.Context, g *Graph) error, error) {
			var common struct {
				Driver string `json:"driver"`
			}
			opts := new(O)
			if err := dec(raw, "options", &common, opts); err != nil {
				return nil, err
			}
			return func(ctx context.Context, g *Graph) error { return create(ctx, g, opts) }, nil
		},
	}
	creators.Lock()
	defer creators.Unlock()
	creators.m[driver] = c
}

// LookupCreator finds the blockdev-create implementation of a driver.
func LookupCreator(driver string) *Creator {
	creators.RLock()
	defer creators.RUnlock()
	return creators.m[driver]
}

// Creators lists the blockdev-create implementations sorted by driver.
func Creators() []*Creator {
	creators.RLock()
	defer creators.RUnlock()
	cs := make([]*Creator, 0, len(creators.m))
	for _, c := range creators.m {
		cs = append(cs, c)
	}
	sort.Slice(cs, func(i, j int) bool { return cs[i].Driver < cs[j].Driver })
	return cs
}

// NewOptions returns a new, empty options struct of the driver (a pointer),
// for tools that need the option types (command-line key=value parsing).
func (d *Driver) NewOptions() any { return d.newOpts() }

// BackingFileChanger is implemented by formats that can rewrite the
// backing file name in their image header (stream, commit and
// change-backing-file do; graph changes alone never do). It is found by
// type assertion on the node's own Impl, never through a filter.
//
// It is called with the node drained, under the graph lock, and only on a
// writable node; a read-only or corrupt image refuses with an error.
// name is written as given (BackingFileName builds it); format is the
// backing's driver name. name "" removes both the backing file name and
// the backing format from the header; format "" with a name writes the
// name without a format (readers then probe).
//
// Guarantees:
//   - Everything written to the image before the call (guest data and
//     the driver's cached metadata) is durable before the header names the
//     new backing, so that a crash never leaves an overlay that points at
//     a backing its data does not yet depend on.
//   - The header change itself is one write of (a prefix of) the header
//     cluster followed by a flush: after a crash the image has either the
//     old header or the new one.
//   - Every other part of the header is kept, header extensions the
//     driver does not know included.
//   - An error leaves the header as it was: a name or format that does not
//     fit is refused before anything is written (ErrInvalid, ErrNoSpace);
//     an I/O error during the write may leave either header, as a crash
//     would.
//
// BackingFile reports the new strings once the call has succeeded.
type BackingFileChanger interface {
	ChangeBackingFile(ctx context.Context, name, format string) error
}
