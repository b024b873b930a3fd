package block

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"
)

var (
	nodeRefType       = reflect.TypeOf(NodeRef{})
	nodeRefOrNullType = reflect.TypeOf(NodeRefOrNull{})
)

// Reopen changes a node's options in place (blockdev-reopen). raw holds
// the node's complete new options: what is omitted returns to its default,
// and a child link that is omitted is an error rather than "unchanged".
// Children may be switched to other existing nodes (or, for backing, to
// none); the driver's own options change only if it implements Reopener.
// A reopen that fails changes nothing.
func (t *Txn) Reopen(ctx context.Context, raw json.RawMessage) (*Node, error) {
	var n *Node
	err := t.atomic(func() (err error) {
		n, err = t.reopen(ctx, raw)
		return err
	})
	if err != nil {
		return nil, err
	}
	return n, nil
}

func (t *Txn) reopen(ctx context.Context, raw json.RawMessage) (*Node, error) {
	var head map[string]json.RawMessage
	if err := json.Unmarshal(raw, &head); err != nil {
		return nil, errors.New("Invalid parameter type for 'options', expected: object")
	}
	var name string
	if v, ok := head["node-name"]; !ok || json.Unmarshal(v, &name) != nil || name == "" {
		return nil, errors.New("node-name not specified")
	}
	n := t.g.nodes[name]
	if n == nil {
		return nil, Errorf(ErrNotFound, "Failed to find node with node-name='%s'", name)
	}
	if _, ok := head["backing"]; !ok && hasBacking(n) {
		// compat(qsd-7.2): qsd checks this before anything else.
		return nil, fmt.Errorf("backing is missing for '%s'", name)
	}
	drv, err := peekDriver(raw, "")
	if err != nil {
		return nil, err
	}
	if drv != n.drv.Name {
		return nil, errors.New("Cannot change the option 'driver'")
	}
	var common CommonOptions
	opts := n.drv.NewOptions()
	if err := t.g.decode(raw, "", &common, opts); err != nil {
		return nil, err
	}
	if c := n.common; !sameCache(c.Cache, common.Cache) {
		return nil, errors.New("Cannot change the option 'cache'")
	}
	if !boolEq(n.common.ForceShare, common.ForceShare) {
		return nil, errors.New("Cannot change the option 'force-share'")
	}
	if _, ok := n.impl.(ReopenRefuser); ok {
		// compat(qsd-7.2): bdrv_reopen_prepare without a driver handler.
		return nil, fmt.Errorf("Block format '%s' used by node '%s' does not support reopening files", n.drv.Name, name)
	}
	t.Drain(n)

	// Read-only goes parent first (it writes its caches back while its
	// file is still writable), read-write children first (the parent
	// prepares its image through them). Children the node opened itself
	// inherit the new state, as in QEMU.
	ro := common.ReadOnly != nil && *common.ReadOnly
	if ro {
		if err := t.ChangeReadOnly(ctx, n, true); err != nil {
			return nil, err
		}
	}
	if err := t.reopenChildren(ctx, n, opts, ro, common.ReadOnly != nil); err != nil {
		return nil, err
	}
	if !ro {
		if err := t.ChangeReadOnly(ctx, n, false); err != nil {
			return nil, err
		}
	}
	// The driver's own options.
	if field := changedOption(n.opts, opts); field != "" {
		r, ok := n.impl.(Reopener)
		if !ok {
			return nil, fmt.Errorf("Cannot change the option '%s'", field)
		}
		commit, abort, err := r.PrepareReopen(ctx, opts)
		if err != nil {
			return nil, err
		}
		t.OnCommit(commit)
		t.OnUndo(abort)
	}
	oldOpts, oldCommon, oldRaw := n.opts, n.common, n.raw
	common.NodeName = name
	n.opts, n.common, n.raw = opts, common, raw
	t.OnUndo(func() { n.opts, n.common, n.raw = oldOpts, oldCommon, oldRaw })
	return n, nil
}

// reopenChildren applies the child links of the new options.
// A child named by its current name follows ro only when the options set
// read-only explicitly (roGiven); otherwise it keeps its state (QEMU keeps
// a referenced child's options and passes down only what was given).
func (t *Txn) reopenChildren(ctx context.Context, n *Node, opts any, ro, roGiven bool) error {
	v := reflect.ValueOf(opts).Elem()
	for i := 0; i < v.NumField(); i++ {
		f := v.Type().Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		fv := v.Field(i)
		var ref NodeRef
		switch {
		case f.Type == nodeRefType:
			ref = fv.Interface().(NodeRef)
		case f.Type == reflect.PointerTo(nodeRefOrNullType):
			if fv.IsNil() {
				continue
			}
			ref = fv.Interface().(*NodeRefOrNull).NodeRef
		default:
			continue
		}
		cur := n.ChildNamed(name)
		if ref.Inline != nil {
			// New options for a child the node opened itself (QEMU's
			// reopen queue takes them so); never a new node.
			if err := t.reopenInline(ctx, n, name, cur, ref.Inline, ro); err != nil {
				return err
			}
			continue
		}
		var target *Node
		if !ref.Null {
			var err error
			if target, err = t.g.FindNode(ref.Name); err != nil {
				return err
			}
		}
		switch {
		case cur != nil && target == cur.Node():
			// The same child: one the node opened itself follows the
			// node's read-only state.
			if roGiven && !target.monitorOwned && cur.role&RoleCOW == 0 {
				if err := t.ChangeReadOnly(ctx, target, ro); err != nil {
					return err
				}
			}
			continue
		case cur != nil && cur.frozen > 0:
			return frozenError(cur)
		case name == "backing" && n.drv.SupportsBacking:
			if err := t.SetBacking(n, target); err != nil {
				return err
			}
		case cur != nil && target != nil:
			if err := t.Replace(cur, target); err != nil {
				return err
			}
		default:
			return fmt.Errorf("Cannot change the option '%s'", name)
		}
	}
	return nil
}

// changedOption names the first driver option (other than child links)
// whose value differs, or "".
func changedOption(old, new any) string {
	ov, nv := reflect.ValueOf(old).Elem(), reflect.ValueOf(new).Elem()
	for i := 0; i < nv.NumField(); i++ {
		f := nv.Type().Field(i)
		t := f.Type
		if t == nodeRefType || t == reflect.PointerTo(nodeRefOrNullType) || t == reflect.SliceOf(nodeRefType) {
			continue
		}
		if !reflect.DeepEqual(ov.Field(i).Interface(), nv.Field(i).Interface()) {
			name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
			return name
		}
	}
	return ""
}

func boolEq(a, b *bool) bool { return (a != nil && *a) == (b != nil && *b) }

func sameCache(a, b *CacheOptions) bool {
	get := func(c *CacheOptions) (bool, bool) {
		if c == nil {
			return false, false
		}
		return c.Direct != nil && *c.Direct, c.NoFlush != nil && *c.NoFlush
	}
	ad, an := get(a)
	bd, bn := get(b)
	return ad == bd && an == bn
}

// hasBacking reports whether a reopen of n must say what its backing is:
// it has one, or its image header names one.
func hasBacking(n *Node) bool {
	if COWChild(n) != nil {
		return true
	}
	if bf, ok := n.impl.(BackingFiler); ok {
		name, _ := bf.BackingFile()
		return name != ""
	}
	return false
}

// reopenInline reopens the child called name of n with inline options.
func (t *Txn) reopenInline(ctx context.Context, n *Node, name string, cur *Child, raw json.RawMessage, ro bool) error {
	if cur == nil || cur.Node().monitorOwned {
		return fmt.Errorf("Cannot create a new node with blockdev-reopen: '%s' of '%s' must name an existing node", name, n.name)
	}
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		return fmt.Errorf("Invalid parameter type for '%s', expected: object", name)
	}
	if nn, ok := m["node-name"]; ok && nn != cur.Node().name {
		return fmt.Errorf("Cannot change the option 'node-name' of '%s'", cur.Node().name)
	}
	m["node-name"] = cur.Node().name
	if _, ok := m["read-only"]; !ok && cur.role&RoleCOW == 0 {
		m["read-only"] = ro
	}
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	_, err = t.Reopen(ctx, b)
	return err
}
