package blockdev

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"sort"

	"github.com/blockd/blockd/pkg/block"
	"github.com/blockd/blockd/pkg/qmp"
)

// The block-dirty-bitmap-* commands work on the named bitmaps of
// pkg/block (the same bitmaps jobs use). Each one that changes something
// is an action: run alone it is a transaction of one, and the same action
// runs inside the transaction command, where what it did is undone if a
// later action fails (a cleared bitmap gets its bits back, as QEMU's
// backup and restore do).

type bitmapAddArgs struct {
	Node        string  `json:"node"`
	Name        string  `json:"name"`
	Granularity *uint32 `json:"granularity,omitempty"`
	Persistent  *bool   `json:"persistent,omitempty"`
	Disabled    *bool   `json:"disabled,omitempty"`
}

// bitmapArgs is QMP's BlockDirtyBitmap: a bitmap by node and name.
type bitmapArgs struct {
	Node string `json:"node"`
	Name string `json:"name"`
}

type bitmapMergeArgs struct {
	Node    string        `json:"node"`
	Target  string        `json:"target"`
	Bitmaps []bitmapOrStr `json:"bitmaps"`
}

// bitmapOrStr is QMP's BlockDirtyBitmapOrStr: the name of a bitmap of the
// merge's node, or a bitmap of any node by node and name.
type bitmapOrStr struct {
	Local    string
	External *bitmapArgs
}

// UnmarshalQMP implements qmp.Unmarshaler.
func (b *bitmapOrStr) UnmarshalQMP(raw json.RawMessage, path string) error {
	raw = bytes.TrimSpace(raw)
	switch {
	case len(raw) > 0 && raw[0] == '"':
		return json.Unmarshal(raw, &b.Local)
	case len(raw) > 0 && raw[0] == '{':
		b.External = &bitmapArgs{}
		return qmp.Decode(raw, path, b.External)
	}
	// compat(qsd-7.2): the message names the element 'null', whatever
	// its path.
	return errors.New("Invalid parameter type for 'null', expected: BlockDirtyBitmapOrStr")
}

type sha256Result struct {
	SHA256 string `json:"sha256"`
}

// txnMode tells an action whether the transaction command runs it.
type txnMode struct {
	transaction bool
	grouped     bool // completion-mode "grouped", which bitmap actions refuse
}

// refuseGrouped is the check every bitmap action makes first.
func (m txnMode) refuseGrouped(typ string) error {
	if m.grouped {
		return fmt.Errorf("Action '%s' does not support Transaction property completion-mode = grouped", typ)
	}
	return nil
}

// quiesce keeps n's writers away until the transaction ends, so that an
// undo restores a bitmap's bits exactly as they were and no write is
// recorded half way through (qsd drains every node for a transaction).
// A command on its own needs no undo and, as in qsd, drains nothing.
func (m txnMode) quiesce(tx *block.Txn, n *block.Node) {
	if m.transaction {
		tx.Drain(n)
	}
}

// txnCommand is a command that is also a transaction action.
type txnCommand interface {
	handler(s *Server) qmp.Handler
	decode(data json.RawMessage, path string, m txnMode) (action, error)
	variant(name string) qmp.Variant
}

// actionOf makes a txnCommand from the constructor of its action.
type actionOf[A any] func(a A, m txnMode) action

func (mk actionOf[A]) handler(s *Server) qmp.Handler {
	return qmp.Command(func(ctx context.Context, a *A) (empty, error) {
		return empty{}, s.runActions(ctx, []action{mk(*a, txnMode{})})
	})
}

func (mk actionOf[A]) decode(data json.RawMessage, path string, m txnMode) (action, error) {
	var a A
	if err := qmp.Decode(args(data), path, &a); err != nil {
		return nil, err
	}
	return mk(a, m), nil
}

func (mk actionOf[A]) variant(name string) qmp.Variant { return wrapped[A](name) }

// bitmapCommands are the bitmap commands that are transaction actions.
var bitmapCommands = map[string]txnCommand{
	"block-dirty-bitmap-add": actionOf[bitmapAddArgs](func(a bitmapAddArgs, m txnMode) action {
		return &bitmapAdd{a, m}
	}),
	"block-dirty-bitmap-remove": actionOf[bitmapArgs](func(a bitmapArgs, m txnMode) action {
		return &bitmapRemove{a, m}
	}),
	"block-dirty-bitmap-clear": actionOf[bitmapArgs](func(a bitmapArgs, m txnMode) action {
		return &bitmapClear{a, m}
	}),
	"block-dirty-bitmap-enable": actionOf[bitmapArgs](func(a bitmapArgs, m txnMode) action {
		return &bitmapRecord{a, m, true}
	}),
	"block-dirty-bitmap-disable": actionOf[bitmapArgs](func(a bitmapArgs, m txnMode) action {
		return &bitmapRecord{a, m, false}
	}),
	"block-dirty-bitmap-merge": actionOf[bitmapMergeArgs](func(a bitmapMergeArgs, m txnMode) action {
		return &bitmapMerge{a, m}
	}),
}

// bitmapVariants are the transaction cases of bitmapCommands, by name.
func bitmapVariants() []qmp.Variant {
	var vs []qmp.Variant
	for name, c := range bitmapCommands {
		vs = append(vs, c.variant(name))
	}
	sort.Slice(vs, func(i, j int) bool { return vs[i].Case < vs[j].Case })
	return vs
}

// findBitmap finds a bitmap the way every bitmap command but add does
// (QEMU's block_dirty_bitmap_lookup), with its messages.
func findBitmap(g *block.Graph, node, name string) (*block.Node, *block.DirtyBitmap, error) {
	n := g.Lookup(node)
	if n == nil {
		return nil, nil, fmt.Errorf("Node '%s' not found", node)
	}
	b := n.FindDirtyBitmap(name)
	if b == nil {
		return nil, nil, fmt.Errorf("Dirty bitmap '%s' not found", name)
	}
	return n, b, nil
}

// bitmapStore is what a format that keeps persistent bitmaps in its
// image (qcow2) offers the bitmap commands.
type bitmapStore interface {
	CanStoreBitmap(name string, granularity int64) error
	RemovePersistentBitmap(ctx context.Context, name string) error
}

// canStorePersistent says whether n can store a bitmap called name of
// granularity gran in its image: the driver is asked if it stores
// bitmaps; any other node answers what qsd answers for a driver that
// cannot (raw, file, null-co).
func canStorePersistent(n *block.Node, name string, gran int64) error {
	st, ok := n.Impl().(bitmapStore)
	if !ok {
		// compat(qsd-7.2): bdrv_can_store_new_dirty_bitmap, -ENOTSUP.
		return fmt.Errorf("Can't store persistent bitmaps to %s: Operation not supported", n.Name())
	}
	if err := st.CanStoreBitmap(name, gran); err != nil {
		// compat(qsd-7.2): the driver's reason after this prefix.
		return fmt.Errorf("Can't make bitmap '%s' persistent in '%s': %w", name, n.Name(), err)
	}
	return nil
}

type bitmapAdd struct {
	a bitmapAddArgs
	m txnMode
}

func (x *bitmapAdd) prepare(ctx context.Context, s *Server, tx *block.Txn) error {
	return x.m.refuseGrouped("block-dirty-bitmap-add")
}

func (x *bitmapAdd) apply(ctx context.Context, s *Server, tx *block.Txn) error {
	a := &x.a
	if a.Name == "" {
		return errors.New("Bitmap name cannot be empty")
	}
	n, err := tx.Graph().FindNode(a.Node)
	if err != nil {
		return err
	}
	gran := block.DefaultBitmapGranularity(ctx, n)
	if a.Granularity != nil {
		// A uint32 cannot exceed 2^31 and be a power of 2.
		gran = int64(*a.Granularity)
		if gran < 512 || gran&(gran-1) != 0 {
			return errors.New("Granularity must be power of 2 and at least 512")
		}
	}
	persistent := a.Persistent != nil && *a.Persistent
	if persistent {
		if err := canStorePersistent(n, a.Name, gran); err != nil {
			return err
		}
	}
	x.m.quiesce(tx, n)
	b, err := n.AddDirtyBitmap(a.Name, gran)
	if err != nil {
		return err
	}
	tx.OnUndo(func() { n.RemoveDirtyBitmap(b) })
	b.SetPersistent(persistent)
	if a.Disabled != nil && *a.Disabled {
		// A write racing the command may have been recorded before the
		// bitmap stopped: it counts as one from before the bitmap.
		b.SetRecording(false)
		b.Clear()
	}
	return nil
}

type bitmapRemove struct {
	a bitmapArgs
	m txnMode
}

func (x *bitmapRemove) prepare(ctx context.Context, s *Server, tx *block.Txn) error {
	return x.m.refuseGrouped("block-dirty-bitmap-remove")
}

// apply marks the bitmap busy, so that the rest of the transaction cannot
// use it (as in qsd), and removes it once the transaction commits.
func (x *bitmapRemove) apply(ctx context.Context, s *Server, tx *block.Txn) error {
	n, b, err := findBitmap(tx.Graph(), x.a.Node, x.a.Name)
	if err != nil {
		return err
	}
	if err := b.CheckUse(block.RemoveBitmap); err != nil {
		return err
	}
	// As in QEMU, a persistent bitmap leaves the image at once; if the
	// transaction fails it stays on the node, persistent, and is stored
	// again when the node closes.
	if st, ok := n.Impl().(bitmapStore); ok && b.Persistent() {
		if err := st.RemovePersistentBitmap(ctx, b.Name()); err != nil {
			return err
		}
	}
	b.SetBusy(true)
	tx.OnUndo(func() { b.SetBusy(false) })
	tx.OnCommit(func() {
		b.SetBusy(false)
		n.RemoveDirtyBitmap(b)
	})
	return nil
}

type bitmapClear struct {
	a bitmapArgs
	m txnMode
}

func (x *bitmapClear) prepare(ctx context.Context, s *Server, tx *block.Txn) error {
	return x.m.refuseGrouped("block-dirty-bitmap-clear")
}

func (x *bitmapClear) apply(ctx context.Context, s *Server, tx *block.Txn) error {
	n, b, err := findBitmap(tx.Graph(), x.a.Node, x.a.Name)
	if err != nil {
		return err
	}
	if err := b.CheckUse(block.ChangeBits); err != nil {
		return err
	}
	x.m.quiesce(tx, n)
	x.m.backup(tx, b)
	b.Clear()
	return nil
}

// backup records, inside a transaction, how to give b back its bits.
func (m txnMode) backup(tx *block.Txn, b *block.DirtyBitmap) {
	if m.transaction {
		old := b.Copy()
		tx.OnUndo(func() { b.Restore(old) })
	}
}

// bitmapRecord is block-dirty-bitmap-enable (on) and -disable.
type bitmapRecord struct {
	a  bitmapArgs
	m  txnMode
	on bool
}

func (x *bitmapRecord) prepare(ctx context.Context, s *Server, tx *block.Txn) error {
	if x.on {
		return x.m.refuseGrouped("block-dirty-bitmap-enable")
	}
	return x.m.refuseGrouped("block-dirty-bitmap-disable")
}

func (x *bitmapRecord) apply(ctx context.Context, s *Server, tx *block.Txn) error {
	n, b, err := findBitmap(tx.Graph(), x.a.Node, x.a.Name)
	if err != nil {
		return err
	}
	if err := b.CheckUse(block.UseBits); err != nil {
		return err
	}
	x.m.quiesce(tx, n)
	was := b.Recording()
	b.SetRecording(x.on)
	tx.OnUndo(func() { b.SetRecording(was) })
	return nil
}

type bitmapMerge struct {
	a bitmapMergeArgs
	m txnMode
}

func (x *bitmapMerge) prepare(ctx context.Context, s *Server, tx *block.Txn) error {
	return x.m.refuseGrouped("block-dirty-bitmap-merge")
}

// apply checks every source, in qsd's order (each source is looked up,
// then the target checked, then the source and its size), before it
// merges any: a failed merge leaves the target as it was.
func (x *bitmapMerge) apply(ctx context.Context, s *Server, tx *block.Txn) error {
	g := tx.Graph()
	n, dst, err := findBitmap(g, x.a.Node, x.a.Target)
	if err != nil {
		return err
	}
	srcs := make([]*block.DirtyBitmap, 0, len(x.a.Bitmaps))
	for _, ref := range x.a.Bitmaps {
		var src *block.DirtyBitmap
		if ref.External != nil {
			_, src, err = findBitmap(g, ref.External.Node, ref.External.Name)
		} else if src = n.FindDirtyBitmap(ref.Local); src == nil {
			err = fmt.Errorf("Dirty bitmap '%s' not found", ref.Local)
		}
		if err != nil {
			return err
		}
		if err := dst.CheckUse(block.ChangeBits); err != nil {
			return err
		}
		if err := src.CheckUse(block.UseBits); err != nil {
			return err
		}
		if src.Size() != dst.Size() {
			// compat(qsd-7.2): bdrv_merge_dirty_bitmap's wording.
			return fmt.Errorf("Bitmaps are of different sizes (destination size is %d, source size is %d) and can't be merged", dst.Size(), src.Size())
		}
		srcs = append(srcs, src)
	}
	x.m.quiesce(tx, n)
	x.m.backup(tx, dst)
	for _, src := range srcs {
		if err := dst.Merge(src); err != nil {
			return err // the sizes were checked: not reached
		}
	}
	return nil
}

// xDebugBitmapSHA256 is x-debug-block-dirty-bitmap-sha256.
func (s *Server) xDebugBitmapSHA256(ctx context.Context, a *bitmapArgs) (sha256Result, error) {
	s.G.Lock()
	defer s.G.Unlock()
	_, b, err := findBitmap(s.G, a.Node, a.Name)
	if err != nil {
		return sha256Result{}, err
	}
	return sha256Result{SHA256: b.SHA256()}, nil
}

// BlockDirtyInfo is QMP's BlockDirtyInfo, one bitmap of a node in
// query-named-block-nodes; anonymous bitmaps (jobs') have no name.
type BlockDirtyInfo struct {
	Name         string `json:"name,omitempty"`
	Count        int64  `json:"count"`
	Granularity  int64  `json:"granularity"`
	Recording    bool   `json:"recording"`
	Busy         bool   `json:"busy"`
	Persistent   bool   `json:"persistent"`
	Inconsistent bool   `json:"inconsistent,omitempty"`
}

// dirtyBitmaps describes n's bitmaps, newest first as qsd lists them.
func dirtyBitmaps(n *block.Node) []BlockDirtyInfo {
	bms := n.DirtyBitmaps()
	out := make([]BlockDirtyInfo, 0, len(bms))
	for i := len(bms) - 1; i >= 0; i-- {
		b := bms[i]
		out = append(out, BlockDirtyInfo{
			Name: b.Name(), Count: b.Count(), Granularity: b.Granularity(),
			Recording: b.Recording(), Busy: b.Busy(), Persistent: b.Persistent(),
			Inconsistent: b.Inconsistent(),
		})
	}
	return out
}

// declareBitmapSchema declares what reflection cannot see of the bitmap
// commands' arguments.
func declareBitmapSchema(q *qmp.Server) {
	q.DeclareType(reflect.TypeFor[bitmapOrStr](), qmp.Alternate{Name: "BlockDirtyBitmapOrStr",
		Types: []reflect.Type{reflect.TypeFor[string](), reflect.TypeFor[bitmapArgs]()}})
}
