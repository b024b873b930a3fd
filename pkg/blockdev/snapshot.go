package blockdev

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"

	"github.com/blockd/blockd/pkg/block"
	"github.com/blockd/blockd/pkg/jobs"
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
	prepare(ctx context.Context, s *Server, tx *block.Txn) error
	apply(ctx context.Context, s *Server, tx *block.Txn) error
}

func (s *Server) blockdevSnapshot(ctx context.Context, a *snapshotArgs) (empty, error) {
	return empty{}, s.runActions(ctx, []action{&snapshotAction{a: *a}})
}

func (s *Server) blockdevSnapshotSync(ctx context.Context, a *snapshotSyncArgs) (empty, error) {
	return empty{}, s.runActions(ctx, []action{&snapshotSyncAction{a: *a}})
}

// runActions runs the actions one after the other inside one graph
// change, each seeing what the ones before it did: either all take effect
// or none does (image files already created stay, as with QEMU).
func (s *Server) runActions(ctx context.Context, acts []action) error {
	tx := s.G.Begin()
	defer tx.Abort()
	for _, a := range acts {
		if err := a.prepare(ctx, s, tx); err != nil {
			return err
		}
		if err := a.apply(ctx, s, tx); err != nil {
			return err
		}
	}
	return tx.Commit()
}

type snapshotAction struct{ a snapshotArgs }

func (x *snapshotAction) prepare(ctx context.Context, s *Server, tx *block.Txn) error { return nil }

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
	if err := old.Blocked(block.OpExternalSnapshot); err != nil {
		return err
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
	tx.Drain(old, ov)
	if err := tx.Append(ov, old); err != nil {
		return err
	}
	// Its users moved to the overlay: nothing writes old any more.
	if err := tx.Graph().RefreshPerms(); err != nil {
		return err
	}
	return tx.ChangeReadOnly(ctx, old, true)
}

type snapshotSyncAction struct {
	a   snapshotSyncArgs
	old *block.Node
}

func (x *snapshotSyncAction) prepare(ctx context.Context, s *Server, tx *block.Txn) error {
	a := &x.a
	g := tx.Graph()
	old, err := s.lookupDeviceOrNode(a.Device, a.NodeName)
	if err != nil {
		return err
	}
	if err := old.Blocked(block.OpExternalSnapshot); err != nil {
		return err
	}
	if a.NodeName != nil && a.SnapshotNodeName == nil {
		return errors.New("New overlay node-name missing")
	}
	if a.SnapshotNodeName != nil && g.Lookup(*a.SnapshotNodeName) != nil {
		return errors.New("New overlay node-name already in use")
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
	return s.createImage(ctx, a.SnapshotFile, format, old.Size(), Filename(old), old.Driver().Name)
}

// createImage makes an image file like qemu-img create, through the
// drivers' blockdev-create implementations. It works in a private graph
// of its own, so that it can run while the daemon's graph is locked by
// the change it is part of.
func (s *Server) createImage(ctx context.Context, filename, format string, size int64, backing, backingFormat string) error {
	if d := block.LookupDriver(format); d != nil && backing != "" && !d.SupportsBacking {
		return fmt.Errorf("Backing file not supported for file format '%s'", format)
	}
	run, err := block.LookupCreator("file").Decode(mustJSON(map[string]any{"driver": "file", "filename": filename, "size": 0}), qmp.Decode)
	if err != nil {
		return err
	}
	priv := block.NewGraph(block.Decoder(qmp.Decode), s.log)
	if err := run(ctx, priv); err != nil {
		return err
	}
	c := block.LookupCreator(format)
	if c == nil {
		return fmt.Errorf("Driver '%s' does not support image creation", format)
	}
	tx := priv.Begin()
	if _, err := tx.Open(ctx, mustJSON(map[string]any{"driver": "file", "node-name": "image", "filename": filename}), true); err != nil {
		tx.Abort()
		return err
	}
	if err := tx.Commit(); err != nil {
		return err
	}
	defer func() {
		tx := priv.Begin()
		tx.CloseAll()
		_ = tx.Commit()
	}()
	opts := map[string]any{"driver": format, "file": "image", "size": size}
	if backing != "" {
		opts["backing-file"] = backing
		opts["backing-fmt"] = backingFormat
	}
	run, err = c.Decode(mustJSON(opts), qmp.Decode)
	if err != nil {
		return err
	}
	return run(ctx, priv)
}

func (x *snapshotSyncAction) apply(ctx context.Context, s *Server, tx *block.Txn) error {
	a := &x.a
	if _, err := os.Stat(a.SnapshotFile); err != nil {
		return fmt.Errorf("Could not open '%s': %s", a.SnapshotFile, block.Strerror(err))
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

func (abortAction) prepare(ctx context.Context, s *Server, tx *block.Txn) error {
	return errors.New("Transaction aborted using Abort action")
}
func (abortAction) apply(ctx context.Context, s *Server, tx *block.Txn) error { return nil }

func (s *Server) transaction(ctx context.Context, a *transactionArgs) (empty, error) {
	if p := a.Properties; p != nil && p.CompletionMode != nil && *p.CompletionMode != "individual" && *p.CompletionMode != "grouped" {
		return empty{}, fmt.Errorf("Parameter 'completion-mode' does not accept value '%s'", *p.CompletionMode)
	}
	grouped := a.Properties != nil && a.Properties.CompletionMode != nil && *a.Properties.CompletionMode == "grouped"
	var acts []action
	var group *jobs.Group // the jobs of a grouped transaction
	for i, ta := range a.Actions {
		path := fmt.Sprintf("actions[%d].data", i)
		known := false
		for _, t := range transactionTypes {
			known = known || t == ta.Type
		}
		if !known {
			return empty{}, fmt.Errorf("Parameter 'type' does not accept value '%s'", ta.Type)
		}
		if c, ok := bitmapCommands[ta.Type]; ok {
			x, err := c.decode(ta.Data, path, txnMode{transaction: true, grouped: grouped})
			if err != nil {
				return empty{}, err
			}
			acts = append(acts, x)
			continue
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
		case "blockdev-snapshot-internal-sync":
			x := &internalSnapshotAction{grouped: a.Properties != nil && a.Properties.CompletionMode != nil && *a.Properties.CompletionMode == "grouped"}
			if err := qmp.Decode(args(ta.Data), path, &x.a); err != nil {
				return empty{}, err
			}
			acts = append(acts, x)
		case "blockdev-backup", "drive-backup":
			if grouped && group == nil {
				group = jobs.NewGroup()
			}
			x := &backupAction{group: group}
			dst := any(&x.a)
			if ta.Type == "drive-backup" {
				x.drive = &driveBackupArgs{}
				dst = x.drive
			}
			if err := qmp.Decode(args(ta.Data), path, dst); err != nil {
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
	Options []qmp.RawAs[BlockdevOptions] `json:"options"`
}

// blockdevReopen reopens every listed node in one graph change: all
// succeed or nothing changes.
func (s *Server) blockdevReopen(ctx context.Context, a *reopenArgs) (empty, error) {
	tx := s.G.Begin()
	defer tx.Abort()
	for _, raw := range a.Options {
		if _, err := tx.Reopen(ctx, json.RawMessage(raw)); err != nil {
			return empty{}, err
		}
	}
	return empty{}, tx.Commit()
}
