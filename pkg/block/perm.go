package block

import (
	"fmt"
	"strings"
)

// DefaultChildPerm is what a node n takes on a child of the given role,
// given what n's own parents need of n (perm) and share (shared). These are
// QEMU's rules, so that qemu tools and qsd see the same image locks:
//
//   - filtered (and role-less) children pass the parents' needs through;
//   - a COW child is read consistently only if the parents read, and may
//     change under n only if the parents allow writes;
//   - metadata storage is always read, written and resized when n is
//     writable, and nobody else may write or resize it;
//   - data storage may not be resized by others, and writing it implies
//     the right to grow it.
func DefaultChildPerm(n *Node, role Role, perm, shared Perm) (Perm, Perm) {
	switch {
	case role&RoleCOW != 0:
		p := perm & PermConsistentRead
		s := PermConsistentRead | PermWriteUnchanged
		if shared&PermWrite != 0 {
			s |= PermWrite | PermResize
		}
		return p, s
	case role&(RoleData|RoleMetadata) == 0:
		return perm, shared
	}
	p, s := perm, shared
	if role&RoleMetadata != 0 {
		if !n.ReadOnly() {
			p |= PermWrite | PermResize
		}
		p |= PermConsistentRead
		s &^= PermWrite | PermResize
	}
	if role&RoleData != 0 {
		s &^= PermResize
		if p&PermWriteUnchanged != 0 {
			p |= PermWrite
		}
		if p&PermWrite != 0 {
			p |= PermResize
		}
	}
	return p, s
}

// permQSDNames lists permission names lowest bit first, as QEMU's
// permission-conflict messages do.
func permList(p Perm) string {
	var s []string
	for _, b := range []Perm{PermConsistentRead, PermWrite, PermWriteUnchanged, PermResize} {
		if p&b != 0 {
			s = append(s, b.lockName())
		}
	}
	return strings.Join(s, ", ")
}

// parentDesc describes an edge's parent in a permission conflict message.
func parentDesc(c *Child) string {
	if r, ok := c.parent.(interface{ ConflictDesc() string }); ok {
		return r.ConflictDesc()
	}
	return c.parent.Describe()
}

// computedPerms is the outcome of a permission computation over the whole
// graph, not yet applied.
type computedPerms struct {
	node map[*Node][2]Perm
	edge map[*Child][2]Perm
}

// computePerms derives every edge's and node's permissions from the
// graph's current shape and checks them. It changes nothing.
func (g *Graph) computePerms() (*computedPerms, error) {
	order, err := g.topoOrder()
	if err != nil {
		return nil, err
	}
	cp := &computedPerms{node: map[*Node][2]Perm{}, edge: map[*Child][2]Perm{}}
	edgePerm := func(c *Child) (Perm, Perm) {
		if v, ok := cp.edge[c]; ok {
			return v[0], v[1]
		}
		return c.Perm()
	}
	for _, n := range order {
		perm, shared := Perm(0), PermAll
		for _, pc := range n.parents {
			p, s := edgePerm(pc)
			perm |= p
			shared &= s
		}
		// Every pair of users must allow what the other takes.
		for _, a := range n.parents {
			_, as := edgePerm(a)
			for _, b := range n.parents {
				if a == b {
					continue
				}
				bp, _ := edgePerm(b)
				if bad := bp &^ as; bad != 0 {
					return nil, Errorf(ErrPermission, "Permission conflict on node '%s': permissions '%s' are both required by %s (uses node '%s' as '%s' child) and unshared by %s (uses node '%s' as '%s' child).",
						n.name, permList(bad), parentDesc(b), n.name, b.name, parentDesc(a), n.name, a.name)
				}
			}
		}
		if perm&(PermWrite|PermWriteUnchanged) != 0 && n.ReadOnly() {
			return nil, Errorf(ErrReadOnly, "Block node is read-only")
		}
		cp.node[n] = [2]Perm{perm, shared}
		for _, c := range n.Children() {
			var p, s Perm
			if cper, ok := n.impl.(ChildPermer); ok && n.impl != nil {
				p, s = cper.ChildPerm(c, perm, shared)
			} else {
				p, s = DefaultChildPerm(n, c.role, perm, shared)
			}
			p |= c.adj.Need
			s = (s | c.adj.Share) &^ c.adj.Unshare
			if cn := c.Node(); cn.common.ForceShare != nil && *cn.common.ForceShare {
				s = PermAll
			}
			cp.edge[c] = [2]Perm{p, s}
		}
	}
	for _, n := range order {
		pc, ok := n.impl.(PermChecker)
		if !ok || n.impl == nil {
			continue
		}
		v := cp.node[n]
		if v[0] == n.perm && v[1] == n.shared && n.permSet {
			continue
		}
		if err := pc.CheckPerm(v[0], v[1]); err != nil {
			return nil, err
		}
	}
	return cp, nil
}

// apply publishes a computed permission state.
func (cp *computedPerms) apply() {
	for c, v := range cp.edge {
		c.setPerm(v[0], v[1])
	}
	for n, v := range cp.node {
		changed := v[0] != n.perm || v[1] != n.shared || !n.permSet
		n.perm, n.shared = v[0], v[1]
		n.permSet = true
		if pc, ok := n.impl.(PermChecker); ok && n.impl != nil && changed {
			pc.SetPerm(v[0], v[1])
		}
	}
}

// refreshPerms recomputes and applies permissions for the whole graph.
// Graphs are small (tens of nodes), and doing it whole keeps the rule
// simple: compute, check, then swap.
func (g *Graph) refreshPerms() error {
	cp, err := g.computePerms()
	if err != nil {
		return err
	}
	cp.apply()
	return nil
}

// RefreshPerms recomputes and applies permissions now, inside a change
// that needs them current before it goes on. Call under the graph lock.
func (g *Graph) RefreshPerms() error { return g.refreshPerms() }

// topoOrder lists the nodes parents first. A cycle is an internal error:
// attach refuses edges that would make one.
func (g *Graph) topoOrder() ([]*Node, error) {
	indeg := map[*Node]int{}
	for _, n := range g.nodes {
		for _, c := range n.parents {
			if c.ParentNode() != nil {
				indeg[n]++
			}
		}
	}
	var queue, order []*Node
	for _, n := range g.list {
		if indeg[n] == 0 {
			queue = append(queue, n)
		}
	}
	for len(queue) > 0 {
		n := queue[0]
		queue = queue[1:]
		order = append(order, n)
		for _, c := range n.Children() {
			cn := c.Node()
			indeg[cn]--
			if indeg[cn] == 0 {
				queue = append(queue, cn)
			}
		}
	}
	if len(order) != len(g.list) {
		return nil, fmt.Errorf("block graph has a cycle: %w", ErrInternal)
	}
	return order, nil
}
