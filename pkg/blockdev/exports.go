package blockdev

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"slices"

	"github.com/blockd/blockd/pkg/block"
	"github.com/blockd/blockd/pkg/fuse"
	"github.com/blockd/blockd/pkg/nbd"
	"github.com/blockd/blockd/pkg/qmp"
)

// exportState is the NBD server and the exports; guarded by Server.mu.
type exportState struct {
	srv       *nbd.Server
	unixPath  string
	serveDone chan struct{}
	stopServe chan struct{} // closed by stopNBDLocked
	// held, while not nil, keeps a new server from accepting until it is
	// closed: see HoldNBDServing.
	held    chan struct{}
	exports []*export // of every type, in creation order
}

// HoldNBDServing keeps an NBD server started from now on from accepting
// clients until release is called. The daemon holds it while it sets up
// its command line, as qsd serves nothing before: a client that connects
// to --nbd-server's socket early then waits for the handshake instead of
// finding the later --export missing.
func (s *Server) HoldNBDServing() (release func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	held := make(chan struct{})
	s.exports.held = held
	return func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		close(held)
		if s.exports.held == held {
			s.exports.held = nil
		}
	}
}

// export is one block export; exactly one of nbd and fuse is set.
type export struct {
	id   string
	typ  ExportType
	root *block.Root
	nbd  *nbd.Export
	fuse *fuse.Export
	// mountpoint is a FUSE export's mountpoint as the client gave it.
	mountpoint string
	// bitmaps are the dirty bitmaps an NBD export serves; busy while it
	// does.
	bitmaps []*block.DirtyBitmap
	// writethrough is the export's writethrough option (query-block's
	// cache.writeback is its opposite).
	writethrough bool
}

// SocketAddressLegacy is nbd-server-start's address: {"type", "data"}.
type SocketAddressLegacy struct {
	Type AddrType        `json:"type"`
	Data json.RawMessage `json:"data"`
}

// AddrType is SocketAddressType.
type AddrType string

// EnumValues implements qmp.Enum.
func (AddrType) EnumValues() []string { return []string{"inet", "unix", "vsock", "fd"} }

// UnixSocketAddress is QMP's UnixSocketAddress.
type UnixSocketAddress struct {
	Path     string `json:"path"`
	Abstract *bool  `json:"abstract,omitempty"`
	Tight    *bool  `json:"tight,omitempty"`
}

// InetSocketAddress is QMP's InetSocketAddress.
type InetSocketAddress struct {
	Host      string  `json:"host"`
	Port      string  `json:"port"`
	Numeric   *bool   `json:"numeric,omitempty"`
	To        *uint16 `json:"to,omitempty"`
	IPv4      *bool   `json:"ipv4,omitempty"`
	IPv6      *bool   `json:"ipv6,omitempty"`
	KeepAlive *bool   `json:"keep-alive,omitempty"`
	MPTCP     *bool   `json:"mptcp,omitempty"`
}

type nbdServerStartArgs struct {
	Addr           SocketAddressLegacy `json:"addr"`
	TLSCreds       *string             `json:"tls-creds,omitempty"`
	TLSAuthz       *string             `json:"tls-authz,omitempty"`
	MaxConnections *uint32             `json:"max-connections,omitempty"`
}

// listen opens the listening socket an address describes.
func listen(typ AddrType, data json.RawMessage, path string) (net.Listener, string, error) {
	switch typ {
	case "unix":
		var u UnixSocketAddress
		if err := qmp.Decode(data, path, &u); err != nil {
			return nil, "", err
		}
		if u.Abstract != nil && *u.Abstract {
			return nil, "", fmt.Errorf("abstract UNIX sockets are not supported")
		}
		_ = os.Remove(u.Path)
		l, err := net.Listen("unix", u.Path)
		if err != nil {
			return nil, "", fmt.Errorf("Failed to bind socket to %s: %s", u.Path, block.Strerror(err))
		}
		return l, u.Path, nil
	case "inet":
		var a InetSocketAddress
		if err := qmp.Decode(data, path, &a); err != nil {
			return nil, "", err
		}
		network := "tcp"
		if a.IPv4 != nil && *a.IPv4 {
			network = "tcp4"
		} else if a.IPv6 != nil && *a.IPv6 {
			network = "tcp6"
		}
		l, err := net.Listen(network, net.JoinHostPort(a.Host, a.Port))
		if err != nil {
			return nil, "", fmt.Errorf("Failed to bind socket: %s", block.Strerror(err))
		}
		return l, "", nil
	}
	return nil, "", fmt.Errorf("Socket address type '%s' is not supported by blockd's NBD server", typ)
}

func (s *Server) nbdServerStart(ctx context.Context, a *nbdServerStartArgs) (empty, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.exports.srv != nil {
		return empty{}, errors.New("NBD server already running")
	}
	if a.TLSCreds != nil || a.TLSAuthz != nil {
		return empty{}, errors.New("TLS is not supported by blockd's NBD server yet")
	}
	l, path, err := listen(a.Addr.Type, a.Addr.Data, "addr.data")
	if err != nil {
		return empty{}, err
	}
	return empty{}, s.startNBDLocked(l, path, a.MaxConnections)
}

func (s *Server) startNBDLocked(l net.Listener, path string, maxConn *uint32) error {
	// compat(qsd-7.2): without max-connections qsd 7.2.22 serves at most
	// 100 clients at once (its CVE-2024-7409 fix); 0 means no limit.
	o := nbd.ServerOptions{Logger: s.log.WithField("component", "nbd"), MaxConnections: 100}
	if maxConn != nil {
		o.MaxConnections = int(*maxConn)
	}
	srv := nbd.NewServer(o)
	done, stop, held := make(chan struct{}), make(chan struct{}), s.exports.held
	go func() {
		defer close(done)
		if held != nil {
			select {
			case <-held:
			case <-stop:
				l.Close()
				return
			}
		}
		err := srv.Serve(l)
		if errors.Is(err, nbd.ErrServerClosed) {
			l.Close() // Serve closes it only when it was accepting
		} else if err != nil {
			s.log.WithError(err).Warn("nbd: serve")
		}
	}()
	s.exports.srv, s.exports.unixPath, s.exports.serveDone, s.exports.stopServe = srv, path, done, stop
	return nil
}

func (s *Server) nbdServerStop(ctx context.Context, a *struct{}) (empty, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.exports.srv == nil {
		return empty{}, errors.New("NBD server not running")
	}
	s.stopNBDLocked()
	return empty{}, nil
}

// stopNBDLocked deletes every NBD export (BLOCK_EXPORT_DELETED each, in
// the order they were made, as qsd), then closes the server. Exports of
// other types stay.
func (s *Server) stopNBDLocked() {
	for _, e := range slices.Clone(s.exports.exports) {
		if e.nbd != nil {
			s.deleteExportLocked(e, true)
		}
	}
	close(s.exports.stopServe)
	s.exports.srv.Close()
	<-s.exports.serveDone
	if s.exports.unixPath != "" {
		_ = os.Remove(s.exports.unixPath)
	}
	s.exports.srv, s.exports.unixPath, s.exports.serveDone, s.exports.stopServe = nil, "", nil, nil
}

// stopExports deletes every export, in the order they were made (FUSE
// exports are unmounted), then stops the NBD server.
func (s *Server) stopExports(ctx context.Context) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, e := range slices.Clone(s.exports.exports) {
		s.deleteExportLocked(e, true)
	}
	if s.exports.srv != nil {
		s.stopNBDLocked()
	}
}

// ExportType is BlockExportType.
type ExportType string

// EnumValues implements qmp.Enum.
func (ExportType) EnumValues() []string {
	return []string{"nbd", "vhost-user-blk", "fuse", "vduse-blk"}
}

// ExportArgs are block-export-add's common members.
type ExportArgs struct {
	Type          ExportType `json:"type"`
	ID            string     `json:"id"`
	FixedIOThread *bool      `json:"fixed-iothread,omitempty"`
	IOThread      *string    `json:"iothread,omitempty"`
	NodeName      string     `json:"node-name"`
	Writable      *bool      `json:"writable,omitempty"`
	Writethrough  *bool      `json:"writethrough,omitempty"`
}

// NBDExportArgs are block-export-add's members for type nbd.
type NBDExportArgs struct {
	Name            *string       `json:"name,omitempty"`
	Description     *string       `json:"description,omitempty"`
	Bitmaps         []bitmapOrStr `json:"bitmaps,omitempty"`
	AllocationDepth *bool         `json:"allocation-depth,omitempty"`
}

func (s *Server) blockExportAdd(ctx context.Context, raw json.RawMessage) (any, error) {
	var a ExportArgs
	var n NBDExportArgs
	var head struct {
		Type ExportType `json:"type"`
	}
	if err := qmp.Decode(args(raw), "", &head, &map[string]json.RawMessage{}); err != nil {
		return nil, err
	}
	switch head.Type {
	case "nbd":
		if err := qmp.Decode(args(raw), "", &a, &n); err != nil {
			return nil, err
		}
		return empty{}, s.addExport(ctx, &a, &n)
	case "fuse":
		var f FuseExportArgs
		if err := qmp.Decode(args(raw), "", &a, &f); err != nil {
			return nil, err
		}
		return empty{}, s.addFuseExport(ctx, &a, &f)
	}
	return nil, fmt.Errorf("Export type '%s' is not supported by blockd", head.Type)
}

// exportVariants are the Go types of block-export-add's members for each
// export type blockd serves: the common ones, then the type's own.
var exportVariants = map[ExportType][]reflect.Type{
	"nbd":  {reflect.TypeOf(ExportArgs{}), reflect.TypeOf(NBDExportArgs{})},
	"fuse": {reflect.TypeOf(ExportArgs{}), reflect.TypeOf(FuseExportArgs{})},
}

// KeyvalExport turns the command line's --export key=value tree into
// block-export-add's arguments, typed by the export type's members.
func KeyvalExport(tree map[string]any) (json.RawMessage, error) {
	typ, _ := tree["type"].(string)
	types, ok := exportVariants[ExportType(typ)]
	if !ok {
		types = exportVariants["nbd"] // the command names what is wrong
	}
	return KeyvalTyped(tree, types...)
}

func (s *Server) addExport(ctx context.Context, a *ExportArgs, n *NBDExportArgs) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.checkExportIDLocked(a); err != nil {
		return err
	}
	writable := a.Writable != nil && *a.Writable
	tx := s.G.Begin()
	defer tx.Abort()
	// compat(qsd-7.2): the node, read-only against writable and the
	// iothread are checked before anything of the NBD server's.
	node := tx.Graph().Lookup(a.NodeName)
	if node == nil {
		return fmt.Errorf("Cannot find device='' nor node-name='%s'", a.NodeName)
	}
	if writable && node.ReadOnly() {
		return errors.New("Cannot export read-only node as writable")
	}
	if err := checkIOThreadLocked(tx.Graph(), a); err != nil {
		return err
	}
	if s.exports.srv == nil {
		return errors.New("NBD server not running")
	}
	name := a.NodeName
	if n.Name != nil {
		name = *n.Name
	}
	if len(name) > 4096 {
		return errors.New("export name too long")
	}
	if s.exports.srv.Export(name) != nil {
		return fmt.Errorf("NBD server already has export named '%s'", name)
	}
	perm := block.PermConsistentRead
	if writable {
		perm |= block.PermWrite
	}
	// compat(qsd-7.2): an export lets others do anything but resize.
	root, err := tx.NewRoot(node, block.RootOptions{Perm: perm, Shared: block.PermAll &^ block.PermResize})
	if err != nil {
		return err
	}
	bitmaps, err := exportBitmaps(tx.Graph(), node, n.Bitmaps, writable)
	if err != nil {
		return err
	}
	desc := ""
	if n.Description != nil {
		desc = *n.Description
	}
	be := &nodeBackend{root: root, writethrough: a.Writethrough != nil && *a.Writethrough}
	ex, err := s.exports.srv.AddExport(be, nbd.ExportOptions{
		Name:            name,
		Description:     desc,
		Writable:        writable,
		AllocationDepth: n.AllocationDepth != nil && *n.AllocationDepth,
		Bitmaps:         nbdBitmaps(bitmaps),
		MultiConn:       true,
		// compat(qsd-7.2): the node's request alignment is the minimum
		// block size a client that asks for block sizes must honour.
		MinBlock: minBlock(node),
	})
	if err != nil {
		return err
	}
	if err := tx.Commit(); err != nil {
		_ = s.exports.srv.RemoveExport(name, true)
		return err
	}
	// compat(qsd-7.2): every bitmap is checked before any turns busy, so
	// that one listed twice is exported twice.
	for _, b := range bitmaps {
		b.SetBusy(true)
	}
	s.exports.exports = append(s.exports.exports, &export{id: a.ID, typ: a.Type, root: root, nbd: ex, bitmaps: bitmaps,
		writethrough: a.Writethrough != nil && *a.Writethrough})
	return nil
}

// exportBitmaps finds the bitmaps an NBD export of node is to serve and
// checks that it may, as qsd 7.2's nbd_export_create does: a bitmap by
// name is the first of that name on node or down its chain (filters and
// backing files); one by node and name is looked up as the bitmap
// commands do. A read-only export may not serve a recording bitmap
// (found by name) of a writable node, whose bits could change under the
// client; a busy or inconsistent bitmap is refused. The graph lock must
// be held.
func exportBitmaps(g *block.Graph, node *block.Node, refs []bitmapOrStr, writable bool) ([]*block.DirtyBitmap, error) {
	var out []*block.DirtyBitmap
	for _, ref := range refs {
		var b *block.DirtyBitmap
		if ref.External != nil {
			var err error
			if _, b, err = findBitmap(g, ref.External.Node, ref.External.Name); err != nil {
				return nil, err
			}
		} else {
			var owner *block.Node
			for x := node; x != nil && b == nil; {
				if b = x.FindDirtyBitmap(ref.Local); b != nil {
					owner = x
				} else if c := block.FilteredOrCOWChild(x); c != nil {
					x = c.Node()
				} else {
					x = nil
				}
			}
			if b == nil {
				// compat(qsd-7.2): nbd_export_create's wording.
				return nil, fmt.Errorf("Bitmap '%s' is not found", ref.Local)
			}
			if !writable && !owner.ReadOnly() && b.Recording() {
				return nil, fmt.Errorf("Enabled bitmap '%s' incompatible with readonly export", ref.Local)
			}
		}
		if err := b.CheckUse(block.UseBits); err != nil {
			return nil, err
		}
		out = append(out, b)
	}
	return out, nil
}

// nbdBitmaps are an export's bitmaps as the NBD server serves them.
func nbdBitmaps(bms []*block.DirtyBitmap) []nbd.ExportBitmap {
	var out []nbd.ExportBitmap
	for _, b := range bms {
		out = append(out, nbd.ExportBitmap{Name: b.Name(), Map: b})
	}
	return out
}

// checkExportIDLocked checks a new export's id, as every export type does
// first. s.mu must be held.
func (s *Server) checkExportIDLocked(a *ExportArgs) error {
	if !block.ValidID(a.ID) {
		return errors.New("Invalid block export id")
	}
	if s.findExport(a.ID) != nil {
		return fmt.Errorf("Block export id '%s' is already in use", a.ID)
	}
	return nil
}

// checkIOThreadLocked checks, with the graph lock held, that a new
// export's iothread exists.
func checkIOThreadLocked(g *block.Graph, a *ExportArgs) error {
	if a.IOThread == nil {
		return nil
	}
	// blockd schedules I/O on goroutines; an iothread only has to exist.
	if _, ok := g.Object(*a.IOThread).(*iothread); !ok {
		return fmt.Errorf("iothread \"%s\" not found", *a.IOThread)
	}
	return nil
}

// FuseAllowOther is FuseExportAllowOther.
type FuseAllowOther string

// EnumValues implements qmp.Enum.
func (FuseAllowOther) EnumValues() []string { return []string{"off", "on", "auto"} }

// FuseExportArgs are block-export-add's members for type fuse.
type FuseExportArgs struct {
	Mountpoint string          `json:"mountpoint"`
	Growable   *bool           `json:"growable,omitempty"`
	AllowOther *FuseAllowOther `json:"allow-other,omitempty"`
}

// addFuseExport mounts a FUSE export. As in qsd, the export takes the
// node's resize permission when it is writable or growable (a client may
// truncate the file) and shares everything.
func (s *Server) addFuseExport(ctx context.Context, a *ExportArgs, f *FuseExportArgs) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.checkExportIDLocked(a); err != nil {
		return err
	}
	writable := a.Writable != nil && *a.Writable
	growable := f.Growable != nil && *f.Growable
	perm := block.PermConsistentRead
	if writable {
		perm |= block.PermWrite
	}
	root, err := s.newExportRoot(a, perm, block.PermAll)
	if err != nil {
		return err
	}
	// compat(qsd-7.2): resize is taken in a step of its own, so that a
	// conflict over write is reported without it.
	if writable || growable {
		err = s.setRootPerm(root, perm|block.PermResize, block.PermAll)
	}
	var ex *fuse.Export
	if err == nil {
		ex, err = s.mountFuseLocked(root, writable, growable, a, f)
	}
	if err != nil {
		s.detachRoot(root)
		return err
	}
	s.exports.exports = append(s.exports.exports, &export{id: a.ID, typ: a.Type, root: root, fuse: ex, mountpoint: f.Mountpoint,
		writethrough: a.Writethrough != nil && *a.Writethrough})
	return nil
}

// newExportRoot makes a new export's user of its node, after the checks
// qsd 7.2 makes for every export type, in its order: the node, writable
// on a read-only node, the iothread.
func (s *Server) newExportRoot(a *ExportArgs, perm, shared block.Perm) (*block.Root, error) {
	tx := s.G.Begin()
	defer tx.Abort()
	node := tx.Graph().Lookup(a.NodeName)
	if node == nil {
		return nil, fmt.Errorf("Cannot find device='' nor node-name='%s'", a.NodeName)
	}
	if perm&block.PermWrite != 0 && node.ReadOnly() {
		return nil, errors.New("Cannot export read-only node as writable")
	}
	if err := checkIOThreadLocked(tx.Graph(), a); err != nil {
		return nil, err
	}
	root, err := tx.NewRoot(node, block.RootOptions{Perm: perm, Shared: shared})
	if err != nil {
		return nil, err
	}
	return root, tx.Commit()
}

func (s *Server) setRootPerm(root *block.Root, perm, shared block.Perm) error {
	tx := s.G.Begin()
	defer tx.Abort()
	tx.SetRootPerm(root, perm, shared)
	return tx.Commit()
}

// mountFuseLocked mounts root's node over the mountpoint f names.
func (s *Server) mountFuseLocked(root *block.Root, writable, growable bool, a *ExportArgs, f *FuseExportArgs) (*fuse.Export, error) {
	// compat(qsd-7.2): qsd compares the mountpoint strings; blockd also
	// compares the absolute paths (qsd hangs stat()ing its own mount).
	abs, _ := filepath.Abs(f.Mountpoint)
	for _, e := range s.exports.exports {
		if e.fuse != nil && (e.mountpoint == f.Mountpoint || e.fuse.Mountpoint() == abs) {
			return nil, fmt.Errorf("There already is a FUSE export on '%s'", f.Mountpoint)
		}
	}
	allow := fuse.AllowOtherAuto
	if f.AllowOther != nil {
		allow = fuse.AllowOther(*f.AllowOther)
	}
	be := &nodeBackend{root: root, writethrough: a.Writethrough != nil && *a.Writethrough}
	return fuse.Mount(be, fuse.Options{
		Mountpoint: f.Mountpoint,
		Writable:   writable,
		Growable:   growable,
		AllowOther: allow,
		Logger:     s.log.WithField("component", "fuse").WithField("export", a.ID),
	})
}

// minBlock is the NBD minimum block size of an export of n: its request
// alignment where NBD can express it (a power of two up to 64 KiB).
func minBlock(n *block.Node) uint32 {
	a := n.Caps().Limits.RequestAlign
	if a <= 1 || a > 64<<10 || a&(a-1) != 0 {
		return 0
	}
	return uint32(a)
}

// findExport returns the export with id, or nil. s.mu must be held.
func (s *Server) findExport(id string) *export {
	for _, e := range s.exports.exports {
		if e.id == id {
			return e
		}
	}
	return nil
}

// ExportDelMode is BlockExportRemoveMode.
type ExportDelMode string

// EnumValues implements qmp.Enum.
func (ExportDelMode) EnumValues() []string { return []string{"safe", "hard"} }

type exportDelArgs struct {
	ID   string         `json:"id"`
	Mode *ExportDelMode `json:"mode,omitempty"`
}

func (s *Server) blockExportDel(ctx context.Context, a *exportDelArgs) (empty, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e := s.findExport(a.ID)
	if e == nil {
		return empty{}, fmt.Errorf("Export '%s' is not found", a.ID)
	}
	hard := a.Mode != nil && *a.Mode == "hard"
	// compat(qsd-7.2): a FUSE export has no clients to wait for; its
	// open files get ENOTCONN once it is unmounted.
	if !hard && e.nbd != nil && e.nbd.Clients() > 0 {
		return empty{}, fmt.Errorf("export '%s' still in use", a.ID)
	}
	s.deleteExportLocked(e, hard)
	return empty{}, nil
}

// deleteExportLocked stops serving e (a FUSE export is unmounted),
// releases its node and emits BLOCK_EXPORT_DELETED.
func (s *Server) deleteExportLocked(e *export, hard bool) {
	switch {
	case e.nbd != nil:
		if err := s.exports.srv.RemoveExport(e.nbd.Name(), true); err != nil {
			s.log.WithError(err).WithField("export", e.id).Warn("nbd: removing export")
		}
	case e.fuse != nil:
		e.fuse.Close()
	}
	s.exports.exports = slices.DeleteFunc(s.exports.exports, func(x *export) bool { return x == e })
	for _, b := range e.bitmaps {
		b.SetBusy(false)
	}
	s.detachRoot(e.root)
	s.emit.Emit("BLOCK_EXPORT_DELETED", map[string]any{"id": e.id})
}

type exportInfo struct {
	Type         string `json:"type"`
	ID           string `json:"id"`
	NodeName     string `json:"node-name"`
	ShuttingDown bool   `json:"shutting-down"`
}

func (s *Server) queryBlockExports(ctx context.Context, a *struct{}) ([]exportInfo, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.G.Lock()
	defer s.G.Unlock()
	out := []exportInfo{}
	// compat(qsd-7.2): newest export first.
	for i := len(s.exports.exports) - 1; i >= 0; i-- {
		e := s.exports.exports[i]
		out = append(out, exportInfo{Type: string(e.typ), ID: e.id, NodeName: e.root.Node().Name()})
	}
	return out, nil
}

// ExportLoad is one NBD export's load, for metrics.
type ExportLoad struct {
	ID, Node string
	Clients  int   // clients in transmission phase
	InFlight int64 // requests being served
}

// NBDLoad returns the NBD server's connections (0 when it is not
// running) and every export's load.
func (s *Server) NBDLoad() (conns int, exports []ExportLoad) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.exports.srv == nil {
		return 0, nil
	}
	s.G.Lock()
	defer s.G.Unlock()
	for _, e := range s.exports.exports {
		if e.nbd == nil {
			continue
		}
		exports = append(exports, ExportLoad{ID: e.id, Node: e.root.Node().Name(),
			Clients: e.nbd.Clients(), InFlight: e.nbd.InFlight()})
	}
	return s.exports.srv.Connections(), exports
}

// nodeBackend serves a node through its export's root.
type nodeBackend struct {
	root         *block.Root
	writethrough bool
}

func (b *nodeBackend) Size() int64 { return b.root.Size() }

func (b *nodeBackend) ReadAt(ctx context.Context, p []byte, off int64) error {
	return b.root.ReadAt(ctx, p, off, 0)
}

// ReadToPipe implements nbd.PipeReader through block.Splicer: where the
// chain under the export can splice (raw over file), large read replies
// leave without a copy.
func (b *nodeBackend) ReadToPipe(ctx context.Context, pipe int, off int64, n int) (int, error) {
	k, err := b.root.SpliceRead(ctx, pipe, off, n)
	if errors.Is(err, block.ErrNoSplice) {
		return k, fmt.Errorf("%w: %w", nbd.ErrNotSupported, err)
	}
	return k, err
}

// ReadNoWait implements nbd.NoWaitReader through block.NoWaitReader.
func (b *nodeBackend) ReadNoWait(ctx context.Context, p []byte, off int64) error {
	err := b.root.ReadNoWait(ctx, p, off)
	if errors.Is(err, block.ErrWouldBlock) {
		return fmt.Errorf("%w: %w", nbd.ErrWouldBlock, err)
	}
	return err
}

func (b *nodeBackend) flags(fua bool) block.Flags {
	if fua || b.writethrough {
		return block.FlagFUA
	}
	return 0
}

func (b *nodeBackend) WriteAt(ctx context.Context, p []byte, off int64, fua bool) error {
	return b.root.WriteAt(ctx, p, off, b.flags(fua))
}

func (b *nodeBackend) Zero(ctx context.Context, off, n int64, mayTrim, fua, fast bool) error {
	f := b.flags(fua)
	if mayTrim {
		f |= block.FlagMayUnmap
	}
	if fast {
		f |= block.FlagNoFallback
	}
	err := b.root.Zero(ctx, off, n, f)
	if errors.Is(err, block.ErrNotSupported) {
		return fmt.Errorf("%w: %w", nbd.ErrNotSupported, err)
	}
	return err
}

func (b *nodeBackend) Trim(ctx context.Context, off, n int64, fua bool) error {
	if err := b.root.Discard(ctx, off, n); err != nil {
		return err
	}
	if fua || b.writethrough {
		return b.root.Flush(ctx)
	}
	return nil
}

func (b *nodeBackend) Flush(ctx context.Context) error { return b.root.Flush(ctx) }

func (b *nodeBackend) Cache(ctx context.Context, off, n int64) error { return nil }

// Truncate resizes the node; the export's root holds the resize
// permission when it may be asked to.
func (b *nodeBackend) Truncate(ctx context.Context, size int64) error {
	return b.root.Truncate(ctx, size, true)
}

// AllocatedSize is what query-block reports as the node's actual size.
func (b *nodeBackend) AllocatedSize() int64 {
	var n int64
	_ = b.root.Do(func(c *block.Child) error {
		if v := actualSize(c.Node()); v != nil {
			n = *v
		}
		return nil
	})
	return n
}

func (b *nodeBackend) RequestAlign() int64 {
	return int64(b.root.Node().Caps().Limits.RequestAlign)
}

// DataAt looks through the whole chain, as BlockStatus does.
func (b *nodeBackend) DataAt(ctx context.Context, off int64) (data bool, n int64, err error) {
	err = b.root.Do(func(c *block.Child) error {
		top := c.Node()
		st, err := block.StatusAbove(ctx, top, nil, off, top.Size()-off)
		data, n = st.Data, st.Len
		return err
	})
	return data, n, err
}

// BlockStatus reports what the node's whole chain says, looking through
// filters: holes are ranges no layer allocates.
func (b *nodeBackend) BlockStatus(ctx context.Context, off, n int64) ([]nbd.Extent, error) {
	var out []nbd.Extent
	err := b.root.Do(func(c *block.Child) error {
		top := c.Node()
		end := min(off+n, top.Size())
		for off < end && len(out) < 64 {
			st, err := block.StatusAbove(ctx, top, nil, off, end-off)
			if err != nil {
				return err
			}
			e := nbd.Extent{Length: st.Len, Hole: !st.Data, Zero: st.Zero, Depth: st.Depth}
			if k := len(out); k > 0 && out[k-1].Hole == e.Hole && out[k-1].Zero == e.Zero && out[k-1].Depth == e.Depth {
				out[k-1].Length += e.Length
			} else {
				out = append(out, e)
			}
			off += st.Len
		}
		return nil
	})
	return out, err
}

type nbdServerAddArgs struct {
	Device      string  `json:"device"`
	Name        *string `json:"name,omitempty"`
	Description *string `json:"description,omitempty"`
	Writable    *bool   `json:"writable,omitempty"`
	Bitmap      *string `json:"bitmap,omitempty"`
}

// nbdServerAdd is the deprecated nbd-server-add: an NBD export whose id
// is its name.
func (s *Server) nbdServerAdd(ctx context.Context, a *nbdServerAddArgs) (empty, error) {
	name := a.Device
	if a.Name != nil {
		name = *a.Name
	}
	n := &NBDExportArgs{Name: &name, Description: a.Description}
	if a.Bitmap != nil {
		n.Bitmaps = []bitmapOrStr{{Local: *a.Bitmap}}
	}
	return empty{}, s.addExport(ctx, &ExportArgs{Type: "nbd", ID: name, NodeName: a.Device, Writable: a.Writable}, n)
}

type nbdServerRemoveArgs struct {
	Name string         `json:"name"`
	Mode *ExportDelMode `json:"mode,omitempty"`
}

// nbdServerRemove is the deprecated nbd-server-remove.
func (s *Server) nbdServerRemove(ctx context.Context, a *nbdServerRemoveArgs) (empty, error) {
	return s.blockExportDel(ctx, &exportDelArgs{ID: a.Name, Mode: a.Mode})
}
