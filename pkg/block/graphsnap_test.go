package block_test

import (
	"fmt"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/blockd/blockd/pkg/block"
)

// A picture of a graph: everything a Txn may change, in order. Two
// pictures of one graph are equal only if the graph is: the same nodes,
// each with its read-only, ownership and permission state, and its
// children and its parents in list order, each edge with its role,
// permissions, freeze count and blocker. Edges are numbered the first
// time a snapper sees them, so that an undo that puts back a look-alike
// edge, or the right edge at the wrong place, shows in the picture.
type snapper struct {
	g     *block.Graph
	roots []*block.Root // their Edges lists are pictured too
	ids   map[*block.Child]int
}

func newSnapper(g *block.Graph, roots ...*block.Root) *snapper {
	return &snapper{g: g, roots: roots, ids: map[*block.Child]int{}}
}

// picture maps each node's name to its lines; the key "" holds the node
// list and the roots' edges.
type picture map[string]string

// take pictures the graph; call it under the graph lock (Graph.Lock, or
// with a Txn open).
func (s *snapper) take() picture {
	p := picture{}
	var names []string
	for _, n := range s.g.Nodes() {
		names = append(names, n.Name())
		p[n.Name()] = s.node(n)
	}
	head := "nodes " + strings.Join(names, " ") + "\n"
	for _, r := range s.roots {
		var edges []string
		for _, c := range r.Edges() {
			edges = append(edges, fmt.Sprintf("#%d %s->%s", s.id(c), c.Name(), c.Node().Name()))
		}
		_, name := r.ParentInfo()
		head += fmt.Sprintf("root %s: %s\n", name, strings.Join(edges, ", "))
	}
	p[""] = head
	return p
}

// snap takes the graph lock and pictures the graph.
func (s *snapper) snap() picture {
	s.g.Lock()
	defer s.g.Unlock()
	return s.take()
}

func (s *snapper) id(c *block.Child) int {
	if _, ok := s.ids[c]; !ok {
		s.ids[c] = len(s.ids) + 1
	}
	return s.ids[c]
}

func (s *snapper) node(n *block.Node) string {
	var b strings.Builder
	perm, shared := n.Perm()
	var own []string
	for _, c := range block.OwnFrozen(n) {
		own = append(own, fmt.Sprintf("#%d", s.id(c)))
	}
	fmt.Fprintf(&b, "ro=%v owned=%v implicit=%v perm=%s shared=%s ownfrozen=[%s]\n",
		n.ReadOnly(), n.MonitorOwned(), n.Implicit(), perms(perm), perms(shared), strings.Join(own, " "))
	for _, c := range n.Children() {
		fmt.Fprintf(&b, "child %s\n", s.edge(c))
	}
	for _, c := range n.Parents() {
		fmt.Fprintf(&b, "parent %s\n", s.edge(c))
	}
	return b.String()
}

// edge is "#3 mid.backing->base cow c/cuwr frozen=1 blocked-by="..."".
func (s *snapper) edge(c *block.Child) string {
	kind, pname := c.Parent().ParentInfo()
	if kind != "block-driver" {
		pname = kind + ":" + pname
	}
	to := c.Node().Name()
	if s.g.Lookup(to) != c.Node() {
		to += "(gone)"
	}
	p, sh := c.Perm()
	role := c.Role().String()
	if role == "" {
		role = "-"
	}
	line := fmt.Sprintf("#%d %s.%s->%s %s %s/%s", s.id(c), pname, c.Name(), to, role, perms(p), perms(sh))
	if k := block.FrozenCount(c); k != 0 {
		line += fmt.Sprintf(" frozen=%d", k)
	}
	if reason, allows := block.EdgeBlocker(c); reason != "" || allows != 0 {
		line += fmt.Sprintf(" blocker=%q allows=%s", reason, opNames(allows))
	}
	return line
}

// perms writes a permission set as letters: c consistent-read, w write,
// u write-unchanged, r resize; "-" for none.
func perms(p block.Perm) string {
	s := ""
	for _, x := range []struct {
		p block.Perm
		l string
	}{{block.PermConsistentRead, "c"}, {block.PermWrite, "w"}, {block.PermWriteUnchanged, "u"}, {block.PermResize, "r"}} {
		if p&x.p != 0 {
			s += x.l
		}
	}
	if s == "" {
		return "-"
	}
	return s
}

// backingAllows is what the blocker of a COW edge lets through; pictures
// name it rather than spell it out.
const backingAllows = block.OpCommitTarget | block.OpStream | block.OpBackupSource | block.OpBackupTarget

func opNames(ops block.Op) string {
	if ops == backingAllows {
		return "backing"
	}
	var s []string
	for _, x := range []struct {
		op   block.Op
		name string
	}{
		{block.OpBackupSource, "backup-source"}, {block.OpBackupTarget, "backup-target"},
		{block.OpChange, "change"}, {block.OpCommitSource, "commit-source"},
		{block.OpCommitTarget, "commit-target"}, {block.OpDelete, "delete"},
		{block.OpExternalSnapshot, "external-snapshot"}, {block.OpInternalSnapshot, "internal-snapshot"},
		{block.OpInternalSnapshotDelete, "internal-snapshot-delete"}, {block.OpMirrorSource, "mirror-source"},
		{block.OpMirrorTarget, "mirror-target"}, {block.OpReplace, "replace"},
		{block.OpResize, "resize"}, {block.OpStream, "stream"},
	} {
		if ops&x.op != 0 {
			s = append(s, x.name)
		}
	}
	if len(s) == 0 {
		return "none"
	}
	return strings.Join(s, "|")
}

// diff lists, node by node, where two pictures differ ("" if nowhere).
func (a picture) diff(b picture) string {
	var keys []string
	for k := range a {
		keys = append(keys, k)
	}
	for k := range b {
		if _, ok := a[k]; !ok {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	var out strings.Builder
	for _, k := range keys {
		if a[k] != b[k] {
			fmt.Fprintf(&out, "%s:\n--- was\n%s--- now\n%s", pictureKey(k), a[k], b[k])
		}
	}
	return out.String()
}

func pictureKey(k string) string {
	if k == "" {
		return "(graph)"
	}
	return "node " + k
}

var edgeID = regexp.MustCompile(`#\d+ ?`)

// plain drops the edge numbers, for comparing with expected text.
func plain(s string) string { return edgeID.ReplaceAllString(s, "") }

// sameGraph fails the test if the graph is no longer as pictured.
func sameGraph(t *testing.T, what string, was, now picture) {
	t.Helper()
	if d := was.diff(now); d != "" {
		t.Errorf("%s changed the graph:\n%s", what, d)
	}
}
