package block

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/sirupsen/logrus"
)

// Graph owns every node. Its lock serialises graph changes: adding and
// removing nodes, attaching and replacing children, permission updates,
// freezing, reopen, and the graph steps of jobs. I/O never takes it.
type Graph struct {
	mu      sync.Mutex
	nodes   map[string]*Node // guarded by mu
	list    []*Node          // creation order; guarded by mu
	seq     uint64           // for generated names; guarded by mu
	decode  Decoder
	log     logrus.FieldLogger
	emitter atomic.Pointer[emitterBox]
	objects map[string]Object // guarded by mu
}

// NewGraph returns an empty graph. dec decodes driver options strictly
// (QMP's rules); log receives driver messages.
func NewGraph(dec Decoder, log logrus.FieldLogger) *Graph {
	if log == nil {
		l := logrus.New()
		l.SetOutput(discard{})
		log = l
	}
	if dec == nil {
		dec = plainDecode
	}
	return &Graph{nodes: map[string]*Node{}, decode: dec, log: log}
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }

// plainDecode is a lenient stand-in for the QMP decoder, for tests that
// build graphs without QMP.
func plainDecode(raw json.RawMessage, path string, dsts ...any) error {
	for _, d := range dsts {
		if err := json.Unmarshal(raw, d); err != nil {
			return err
		}
	}
	return nil
}

// Logger is the graph's logger.
func (g *Graph) Logger() logrus.FieldLogger { return g.log }

// Lock takes the graph lock for a read-only walk (queries).
func (g *Graph) Lock() { g.mu.Lock() }

// Unlock releases it.
func (g *Graph) Unlock() { g.mu.Unlock() }

// Lookup finds a node by name. Call under the graph lock.
func (g *Graph) Lookup(name string) *Node { return g.nodes[name] }

// Nodes lists the nodes, newest first (the order qsd reports them in): a
// node counts as created when its open finished, so a parent comes before
// the children it opened. Call under the graph lock.
func (g *Graph) Nodes() []*Node {
	s := slices.Clone(g.list)
	slices.SortStableFunc(s, func(a, b *Node) int { return cmp.Compare(b.seq, a.seq) })
	return s
}

// FindNode resolves a node reference the way QMP commands do, with qsd's
// message when nothing matches.
func (g *Graph) FindNode(name string) (*Node, error) {
	if n := g.nodes[name]; n != nil {
		return n, nil
	}
	return nil, Errorf(ErrNotFound, "Cannot find device='%s' nor node-name='%s'", name, name)
}

// genName makes a name like QEMU's: "#block" + a counter + two random
// digits, so that names look alike but nobody can rely on their order.
func (g *Graph) genName() string {
	for {
		g.seq++
		name := fmt.Sprintf("#block%d%02d", g.seq, rand.IntN(100))
		if g.nodes[name] == nil {
			return name
		}
	}
}

// Txn is one graph change: everything it does is undone by Abort unless
// Commit succeeds. It holds the graph lock from Begin to Commit or Abort.
type Txn struct {
	g       *Graph
	undo    []func()
	after   []func() // run once committed
	started []func() // run after the commit, the graph unlocked and undrained
	sources []drainSource
	nodes   []*Node // drained nodes, to undrain
	done    bool
}

// Begin starts a graph change and takes the graph lock.
func (g *Graph) Begin() *Txn {
	g.mu.Lock()
	return &Txn{g: g}
}

// Graph is the graph the change is made to.
func (t *Txn) Graph() *Graph { return t.g }

// OnUndo records f to run if the change is aborted.
func (t *Txn) OnUndo(f func()) { t.undo = append(t.undo, f) }

// OnCommit records f to run after a successful commit, still under the
// graph lock.
func (t *Txn) OnCommit(f func()) { t.after = append(t.after, f) }

// OnStarted records f to run after a successful commit, once the graph
// lock is released and the change's drains have ended: what may use the
// graph or its I/O itself (a job's first steps).
func (t *Txn) OnStarted(f func()) { t.started = append(t.started, f) }

// Commit checks and applies permissions for the new graph. If they do not
// hold, the change is undone and the error returned.
func (t *Txn) Commit() error {
	if t.done {
		return nil
	}
	if err := t.g.refreshPerms(); err != nil {
		t.Abort()
		return err
	}
	for _, f := range t.after {
		f()
	}
	if len(t.after) > 0 {
		// Removals only drop permissions; this cannot conflict.
		if err := t.g.refreshPerms(); err != nil {
			t.g.log.WithError(err).Error("block: permissions after removing nodes")
		}
	}
	t.finish()
	for _, f := range t.started {
		f()
	}
	return nil
}

// Abort undoes everything the change did. It is a no-op after Commit.
func (t *Txn) Abort() {
	if t.done {
		return
	}
	if err := t.rollback(0, 0); err != nil {
		t.g.log.WithError(err).Error("block: permissions do not hold after undoing a graph change")
	}
	t.finish()
}

// atomic runs one step of a change that may fail after it has changed
// something (a filter opened but not yet linked, a node made read-only
// before its child refused): on failure what the step did is undone at
// once, so that a failed step leaves the graph as it found it and the
// caller may go on with the change as well as abort it. Drains that the
// step began still last until the change ends. Steps nest.
func (t *Txn) atomic(step func() error) error {
	undo, after, started := len(t.undo), len(t.after), len(t.started)
	err := step()
	if err != nil {
		t.started = t.started[:started]
		// Permissions may not hold before the step either (steps such
		// as Replace leave them to Commit), so their error is not the
		// step's: Commit or Abort will tell.
		_ = t.rollback(undo, after)
	}
	return err
}

// rollback undoes, newest first, what the change did since it had undo
// undos and after commit hooks recorded, and brings permissions up to
// date with the graph as it is again.
func (t *Txn) rollback(undo, after int) error {
	for i := len(t.undo) - 1; i >= undo; i-- {
		t.undo[i]()
	}
	t.undo, t.after = t.undo[:undo], t.after[:after]
	if undo == 0 && after == 0 {
		t.started = nil
	}
	return t.g.refreshPerms()
}

func (t *Txn) finish() {
	t.done = true
	t.undrain()
	t.g.mu.Unlock()
}

// Open opens a node from QMP BlockdevOptions. Top-level nodes (blockdev-add)
// are monitor-owned and must be named. A failed open leaves nothing behind.
func (t *Txn) Open(ctx context.Context, raw json.RawMessage, monitorOwned bool) (*Node, error) {
	var n *Node
	err := t.atomic(func() (err error) {
		n, err = t.open(ctx, raw, "", monitorOwned, nil, false)
		return err
	})
	if err != nil {
		return nil, err
	}
	return n, nil
}

// peekDriver reads the discriminator of BlockdevOptions.
func peekDriver(raw json.RawMessage, path string) (string, error) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(raw, &m); err != nil {
		return "", fmt.Errorf("Invalid parameter type for '%s', expected: object", pathOr(path, "options"))
	}
	d, ok := m["driver"]
	if !ok {
		return "", fmt.Errorf("Parameter '%s' is missing", join(path, "driver"))
	}
	var s string
	if err := json.Unmarshal(d, &s); err != nil {
		return "", fmt.Errorf("Invalid parameter type for '%s', expected: string", join(path, "driver"))
	}
	return s, nil
}

func join(path, name string) string {
	if path == "" {
		return name
	}
	return path + "." + name
}

func pathOr(path, def string) string {
	if path == "" {
		return def
	}
	return path
}

// open opens a node; implicitOK lets it use drivers users cannot name
// (the filters jobs insert).
func (t *Txn) open(ctx context.Context, raw json.RawMessage, path string, monitorOwned bool, parent *Opener, implicitOK bool) (*Node, error) {
	g := t.g
	name, err := peekDriver(raw, path)
	if err != nil {
		return nil, err
	}
	d := LookupDriver(name)
	if d == nil || d.Implicit && !implicitOK {
		return nil, fmt.Errorf("Parameter '%s' does not accept value '%s'", join(path, "driver"), name)
	}
	n := &Node{g: g, drv: d, raw: raw}
	n.caps.Store(&Caps{Limits: Limits{RequestAlign: 1}})
	o := &Opener{tx: t, node: n, path: path, parent: parent}
	// Decode common and driver options together: a member is unexpected
	// only if neither knows it.
	impl, err := d.open(ctx, o, raw, func(raw json.RawMessage, path string, dsts ...any) error {
		if err := g.decode(raw, path, dsts...); err != nil {
			return err
		}
		return t.register(n, o, monitorOwned)
	})
	if err != nil {
		return nil, err
	}
	n.impl = impl
	n.opts = o.opts
	g.stamp(n)
	n.RefreshCaps()
	if err := n.RefreshSize(ctx); err != nil {
		return nil, err
	}
	// The node is complete: its own perms on its children can now be the
	// driver's (ChildPermer), and a PermChecker sees its first state.
	if err := g.refreshPerms(); err != nil {
		return nil, err
	}
	return n, nil
}

// register checks the decoded common options and enters the node into the
// graph (undone on abort), before the driver opens its children.
func (t *Txn) register(n *Node, o *Opener, monitorOwned bool) error {
	g := t.g
	c := &o.common
	if c.NodeName == "" {
		if monitorOwned {
			return errors.New("'node-name' must be specified for the root node")
		}
		c.NodeName = g.genName()
		n.autoName = true
	} else if !validNodeName(c.NodeName) {
		return fmt.Errorf("Invalid node-name: '%s'", c.NodeName)
	} else if len(c.NodeName) > maxNodeName {
		return errors.New("Node name too long")
	}
	if g.nodes[c.NodeName] != nil {
		return fmt.Errorf("Duplicate nodes with node-name='%s'", c.NodeName)
	}
	if c.DetectZeroes == DetectZeroesUnmap && c.Discard != DiscardUnmap {
		return errors.New("setting detect-zeroes to unmap is not allowed without setting discard operation to unmap")
	}
	ro := c.ReadOnly != nil && *c.ReadOnly
	if c.ForceShare != nil && *c.ForceShare && !ro {
		return errors.New("force-share=on can only be used with read-only images")
	}
	n.name = c.NodeName
	n.common = *c
	n.readOnly.Store(ro)
	n.monitorOwned = monitorOwned
	g.nodes[n.name] = n
	g.list = append(g.list, n)
	t.OnUndo(func() { t.g.removeNode(n) })
	return nil
}

// removeNode takes n out of the graph and closes it. Its children edges
// are detached first; children left without parents that the monitor does
// not own are removed too (QEMU's reference counting).
func (g *Graph) removeNode(n *Node) {
	if n.closed {
		return
	}
	n.closed = true
	for _, c := range n.ownFrozen {
		c.frozen--
	}
	n.ownFrozen = nil
	// Close the driver while its children are still there: a format
	// flushes its caches and clears its dirty flag through them.
	if n.impl != nil {
		if err := n.impl.Close(); err != nil {
			g.log.WithError(err).WithField("node", n.name).Warn("block: closing node")
		}
	}
	for _, c := range n.Children() {
		g.detachLocked(c)
	}
	n.setChildren(nil)
	if g.nodes[n.name] == n {
		delete(g.nodes, n.name)
	}
	g.list = slices.DeleteFunc(g.list, func(x *Node) bool { return x == n })
}

// detachLocked removes edge c from its node's parents and frees the node
// if nothing holds it any more. It returns where c was among the parents
// (-1: nowhere), for an undo to put it back there.
func (g *Graph) detachLocked(c *Child) int {
	cn := c.Node()
	if cn == nil {
		return -1
	}
	i := cn.removeParent(c)
	if len(cn.parents) == 0 && !cn.monitorOwned {
		g.removeNode(cn)
	}
	return i
}

// stamp records when n counts as created (see Nodes), once.
func (g *Graph) stamp(n *Node) {
	if n.seq == 0 {
		g.seq++
		n.seq = g.seq
	}
}

// Opener is handed to a driver's open function: it attaches children and
// tells the driver about the node being opened.
type Opener struct {
	tx     *Txn
	node   *Node
	common CommonOptions
	opts   any
	path   string
	parent *Opener
}

// Node is the node being opened (its name and read-only state are set).
func (o *Opener) Node() *Node { return o.node }

// Txn is the graph change the open is part of.
func (o *Opener) Txn() *Txn { return o.tx }

// ReadOnly reports whether the node is opened read-only.
func (o *Opener) ReadOnly() bool { return o.node.ReadOnly() }

// SetReadOnly changes the node's read-only state during open
// (auto-read-only, images that cannot be written).
func (o *Opener) SetReadOnly(ro bool) { o.node.readOnly.Store(ro) }

// Common are the node's common options.
func (o *Opener) Common() CommonOptions { return o.common }

// Path is where the node's options sit in the QMP arguments, for messages.
func (o *Opener) Path() string { return o.path }

// Logger is the graph's logger with the node's name.
func (o *Opener) Logger() logrus.FieldLogger { return o.tx.g.log.WithField("node", o.node.name) }

// Attach links a child called name with the given role. ref names an
// existing node or holds the options of a new one, which inherits the
// parent's read-only, cache and discard options where it does not set them.
// Permissions default from the role (DefaultChildPerm); adj changes them.
func (o *Opener) Attach(ctx context.Context, name string, ref NodeRef, role Role, adj ...PermAdjust) (*Child, error) {
	var def map[string]any
	if role&RoleCOW == 0 {
		def = inheritable(o.common)
	}
	return o.attach(ctx, name, ref, role, def, adj)
}

func inheritable(c CommonOptions) map[string]any {
	def := map[string]any{}
	if c.ReadOnly != nil && *c.ReadOnly {
		def["read-only"] = true
	}
	if c.Cache != nil {
		def["cache"] = c.Cache
	}
	if c.Discard != "" {
		def["discard"] = c.Discard
	}
	if c.AutoReadOnly != nil {
		def["auto-read-only"] = *c.AutoReadOnly
	}
	if c.ForceShare != nil {
		def["force-share"] = *c.ForceShare
	}
	return def
}

func (o *Opener) attach(ctx context.Context, name string, ref NodeRef, role Role, def map[string]any, adj []PermAdjust) (*Child, error) {
	t := o.tx
	if role&RoleCOW != 0 {
		// QEMU enters a node in its list when the driver has opened it,
		// before it opens the backing chain: keep that order for queries.
		t.g.stamp(o.node)
	}
	var cn *Node
	switch {
	case ref.Name != "":
		var err error
		if cn, err = t.g.FindNode(ref.Name); err != nil {
			return nil, err
		}
	case ref.Inline != nil:
		raw := ref.Inline
		if len(def) > 0 {
			var err error
			if raw, err = setDefaults(raw, def); err != nil {
				return nil, fmt.Errorf("Invalid parameter type for '%s', expected: object", join(o.path, name))
			}
		}
		var err error
		if cn, err = t.open(ctx, raw, join(o.path, name), false, o, false); err != nil {
			return nil, err
		}
	default:
		return nil, fmt.Errorf("Parameter '%s' is missing", join(o.path, name))
	}
	var a PermAdjust
	for _, x := range adj {
		a.Need |= x.Need
		a.Share |= x.Share
		a.Unshare |= x.Unshare
	}
	c, err := t.AttachChild(o.node, name, cn, role, a)
	if err != nil {
		return nil, err
	}
	return c, nil
}

// AttachChild links node cn under parent p as name with role, refreshing
// permissions at once so that the parent may do I/O on it.
func (t *Txn) AttachChild(p *Node, name string, cn *Node, role Role, adj PermAdjust) (*Child, error) {
	if !ValidRole(role) {
		return nil, fmt.Errorf("invalid role %v for child '%s': %w", role, name, ErrInternal)
	}
	if reaches(cn, p) {
		return nil, Errorf(ErrInvalid, "Making '%s' a %s child of '%s' would create a cycle", cn.name, name, p.name)
	}
	c := &Child{name: name, role: role, parent: p, adj: adj}
	c.node.Store(cn)
	if role&RoleCOW != 0 {
		c.blocker = backingBlocker(p)
	}
	p.setChildren(append(p.Children(), c))
	cn.parents = append(cn.parents, c)
	if err := t.g.refreshPerms(); err != nil {
		t.undoAttach(p, c)
		return nil, err
	}
	t.OnUndo(func() { t.undoAttach(p, c) })
	return c, nil
}

func (t *Txn) undoAttach(p *Node, c *Child) {
	p.removeChild(c)
	t.g.detachLocked(c)
}

// reaches reports whether to is from or below it.
func reaches(from, to *Node) bool {
	if from == to {
		return true
	}
	for _, c := range from.Children() {
		if reaches(c.Node(), to) {
			return true
		}
	}
	return false
}
