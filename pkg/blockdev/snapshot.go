package blockdev

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"

	"github.com/blockd/blockd/pkg/block"
	"github.com/blockd/blockd/pkg/qmp"
)

type snapshotArgs struct {
	Node    string `json:"node"`
	Overlay string `json:"overlay"`
}

// SnapshotMode is NewImageMode.
type SnapshotMode string

// EnumValues implements qmp.Enum.
func (SnapshotMode) EnumValues() []string { return []string{"existing", "absolute-paths"} }

type snapshotSyncArgs struct {
	Device           *string       `json:"device,omitempty"`
	NodeName         *string       `json:"node-name,omitempty"`
	SnapshotFile     string        `json:"snapshot-file"`
	SnapshotNodeName *string       `json:"snapshot-node-name,omitempty"`
	Format           *string       `json:"format,omitempty"`
	Mode             *SnapshotMode `json:"mode,omitempty"`
}

// action is one prepared step of a transaction: everything that could
// fail before the graph changes (creating image files) is done by
// prepare; apply changes the graph inside the shared change.
type action interface {
	prepare(ctx context.Context, s *Server) error
	apply(ctx context.Context, s *Server, tx *block.Txn) error
}

func (s *Server) blockdevSnapshot(ctx context.Context, a *snapshotArgs) (empty, error) {
	return empty{}, s.runActions(ctx, []action{&snapshotAction{a: *a}})
}

func (s *Server) blockdevSnapshotSync(ctx context.Context, a *snapshotSyncArgs) (empty, error) {
	return empty{}, s.runActions(ctx, []action{&snapshotSyncAction{a: *a}})
}

// runActions prepares every action, then applies them all in one graph
// change: either all take effect or none does.
func (s *Server) runActions(ctx context.Context, acts []action) error {
	for _, a := range acts {
		if err := a.prepare(ctx, s); err != nil {
			return err
		}
	}
	tx := s.G.Begin()
	defer tx.Abort()
	for _, a := range acts {
		if err := a.apply(ctx, s, tx); err != nil {
			return err
		}
	}
	return tx.Commit()
}

type snapshotAction struct{ a snapshotArgs }

func (x *snapshotAction) prepare(ctx context.Context, s *Server) error { return nil }

func (x *snapshotAction) apply(ctx context.Context, s *Server, tx *block.Txn) error {
	g := tx.Graph()
	old, err := g.FindNode(x.a.Node)
	if err != nil {
		return err
	}
	ov, err := g.FindNode(x.a.Overlay)
	if err != nil {
		return err
	}
	return appendOverlay(ctx, tx, old, ov)
}

// appendOverlay checks and makes the snapshot, with qsd's messages.
func appendOverlay(ctx context.Context, tx *block.Txn, old, ov *block.Node) error {
	if b := old.OpBlocker(); b != "" {
		return fmt.Errorf("Node '%s' is busy: %s", old.Name(), b)
	}
	// An overlay may be in use only by users that do not read it yet
	// (a mirror target); anything else would see its data change.
	if perm, _ := ov.Perm(); perm&block.PermConsistentRead != 0 || ov == old {
		return errors.New("The overlay is already in use")
	}
	if ov.IsFilter() {
		return errors.New("Filters cannot be used as overlays")
	}
	if block.COWChild(ov) != nil {
		return errors.New("The overlay already has a backing image")
	}
	if !ov.Driver().SupportsBacking {
		return errors.New("The overlay does not support backing images")
	}
	if !old.ReadOnly() {
		if err := old.Flush(ctx); err != nil {
			return fmt.Errorf("Write to node '%s' failed: %s", old.Name(), err)
		}
	}
	tx.Drain(old, ov)
	if err := tx.Append(ov, old); err != nil {
		return err
	}
	tx.SetReadOnly(old, true)
	return nil
}

type snapshotSyncAction struct {
	a       snapshotSyncArgs
	old     *block.Node
	created bool
}

func (x *snapshotSyncAction) prepare(ctx context.Context, s *Server) error {
	a := &x.a
	s.G.Lock()
	old, err := s.lookupDeviceOrNode(a.Device, a.NodeName)
	var size int64
	var oldFile, oldFormat string
	if err == nil {
		size, oldFile, oldFormat = old.Size(), Filename(old), old.Driver().Name
		if a.NodeName != nil && a.SnapshotNodeName == nil {
			err = errors.New("New overlay node-name missing")
		} else if a.SnapshotNodeName != nil && s.G.Lookup(*a.SnapshotNodeName) != nil {
			err = errors.New("New overlay node-name already in use")
		} else if b := old.OpBlocker(); b != "" {
			err = fmt.Errorf("Node '%s' is busy: %s", old.Name(), b)
		}
	}
	s.G.Unlock()
	if err != nil {
		return err
	}
	x.old = old
	format := "qcow2"
	if a.Format != nil {
		format = *a.Format
	}
	if a.Mode != nil && *a.Mode == "existing" {
		return nil
	}
	// absolute-paths: make the image, naming the old image by its full
	// name and format as its backing file.
	return s.createImage(ctx, a.SnapshotFile, format, size, oldFile, oldFormat)
}

// createImage makes an image file like qemu-img create, through the
// drivers' blockdev-create implementations.
func (s *Server) createImage(ctx context.Context, filename, format string, size int64, backing, backingFormat string) error {
	fileCreate := block.LookupCreator("file")
	run, err := fileCreate.Decode(mustJSON(map[string]any{"driver": "file", "filename": filename, "size": 0}), qmp.Decode)
	if err != nil {
		return err
	}
	if err := run(ctx, s.G); err != nil {
		return err
	}
	c := block.LookupCreator(format)
	if c == nil {
		return fmt.Errorf("Driver '%s' does not support image creation", format)
	}
	tx := s.G.Begin()
	fnode, err := tx.Open(ctx, mustJSON(map[string]any{"driver": "file", "filename": filename}), false)
	if err != nil {
		tx.Abort()
		return err
	}
	if err := tx.Commit(); err != nil {
		return err
	}
	defer func() {
		tx := s.G.Begin()
		tx.SetMonitorOwned(fnode, false)
		if err := tx.Commit(); err != nil {
			s.log.WithError(err).Warn("removing a temporary node")
		}
	}()
	opts := map[string]any{"driver": format, "file": fnode.Name(), "size": size}
	if backing != "" {
		opts["backing-file"] = backing
		opts["backing-fmt"] = backingFormat
	}
	run, err = c.Decode(mustJSON(opts), qmp.Decode)
	if err != nil {
		return err
	}
	return run(ctx, s.G)
}

func (x *snapshotSyncAction) apply(ctx context.Context, s *Server, tx *block.Txn) error {
	a := &x.a
	if _, err := os.Stat(a.SnapshotFile); err != nil {
		return fmt.Errorf("Could not open '%s': %s", a.SnapshotFile, strerror(err))
	}
	format := "qcow2"
	if a.Format != nil {
		format = *a.Format
	}
	opts := map[string]any{"driver": format, "file": map[string]any{"driver": "file", "filename": a.SnapshotFile}}
	if a.SnapshotNodeName != nil {
		opts["node-name"] = *a.SnapshotNodeName
	}
	if d := block.LookupDriver(format); d != nil && d.SupportsBacking {
		opts["backing"] = nil
	}
	ov, err := tx.Open(ctx, mustJSON(opts), a.SnapshotNodeName != nil)
	if err != nil {
		return err
	}
	if err := appendOverlay(ctx, tx, x.old, ov); err != nil {
		return err
	}
	// The overlay belongs to whoever used the old node; with no users it
	// is dropped again, as qsd drops it.
	tx.SetMonitorOwned(ov, false)
	return nil
}

// transaction

type transactionArgs struct {
	Actions    []transactionAction `json:"actions"`
	Properties *struct {
		CompletionMode *string `json:"completion-mode,omitempty"`
	} `json:"properties,omitempty"`
}

type transactionAction struct {
	Type string          `json:"type"`
	Data json.RawMessage `json:"data"`
}

var transactionTypes = []string{"abort", "block-dirty-bitmap-add", "block-dirty-bitmap-remove",
	"block-dirty-bitmap-clear", "block-dirty-bitmap-enable", "block-dirty-bitmap-disable",
	"block-dirty-bitmap-merge", "blockdev-backup", "blockdev-snapshot", "blockdev-snapshot-internal-sync",
	"blockdev-snapshot-sync", "drive-backup"}

type abortAction struct{}

func (abortAction) prepare(ctx context.Context, s *Server) error {
	return errors.New("Transaction aborted using Abort action")
}
func (abortAction) apply(ctx context.Context, s *Server, tx *block.Txn) error { return nil }

func (s *Server) transaction(ctx context.Context, a *transactionArgs) (empty, error) {
	if p := a.Properties; p != nil && p.CompletionMode != nil && *p.CompletionMode != "individual" && *p.CompletionMode != "grouped" {
		return empty{}, fmt.Errorf("Parameter 'completion-mode' does not accept value '%s'", *p.CompletionMode)
	}
	var acts []action
	for i, ta := range a.Actions {
		path := fmt.Sprintf("actions[%d].data", i)
		known := false
		for _, t := range transactionTypes {
			known = known || t == ta.Type
		}
		if !known {
			return empty{}, fmt.Errorf("Parameter 'type' does not accept value '%s'", ta.Type)
		}
		switch ta.Type {
		case "abort":
			acts = append(acts, abortAction{})
		case "blockdev-snapshot":
			x := &snapshotAction{}
			if err := qmp.Decode(args(ta.Data), path, &x.a); err != nil {
				return empty{}, err
			}
			acts = append(acts, x)
		case "blockdev-snapshot-sync":
			x := &snapshotSyncAction{}
			if err := qmp.Decode(args(ta.Data), path, &x.a); err != nil {
				return empty{}, err
			}
			acts = append(acts, x)
		default:
			return empty{}, fmt.Errorf("Transaction action '%s' is not supported by blockd", ta.Type)
		}
	}
	return empty{}, s.runActions(ctx, acts)
}

type reopenArgs struct {
	Options []json.RawMessage `json:"options"`
}

// blockdevReopen reopens every listed node in one graph change: all
// succeed or nothing changes.
func (s *Server) blockdevReopen(ctx context.Context, a *reopenArgs) (empty, error) {
	tx := s.G.Begin()
	defer tx.Abort()
	for _, raw := range a.Options {
		if _, err := tx.Reopen(ctx, raw); err != nil {
			return empty{}, err
		}
	}
	return empty{}, tx.Commit()
}
