package block

import (
	"context"
	"os"
	"path/filepath"
)

// The chain functions. Every package asks these instead of reaching for a
// child by name: "backing" names a COW child for qcow2 but the filtered
// child of mirror_top and commit_top; "file" names qcow2's metadata
// storage but the filtered child of throttle and copy-on-read.

// childWithRole returns n's first child having any bit of r.
func childWithRole(n *Node, r Role) *Child {
	if n == nil {
		return nil
	}
	for _, c := range n.Children() {
		if c.role&r != 0 {
			return c
		}
	}
	return nil
}

// FilteredChild is the child a filter presents, or nil if n is no filter.
func FilteredChild(n *Node) *Child {
	if n == nil || !n.IsFilter() {
		return nil
	}
	return childWithRole(n, RoleFiltered)
}

// COWChild is n's copy-on-write backing, or nil.
func COWChild(n *Node) *Child { return childWithRole(n, RoleCOW) }

// FilteredOrCOWChild is the next node in n's chain, whichever kind.
func FilteredOrCOWChild(n *Node) *Child {
	if c := FilteredChild(n); c != nil {
		return c
	}
	return COWChild(n)
}

// PrimaryChild is the child that "is" n's storage for queries and limits.
func PrimaryChild(n *Node) *Child { return childWithRole(n, RolePrimary) }

// StorageChild is where n's data and metadata physically live: a
// format's file, a filter's filtered child.
func StorageChild(n *Node) *Child {
	if c := FilteredChild(n); c != nil {
		return c
	}
	if c := childWithRole(n, RoleMetadata|RoleData); c != nil {
		return c
	}
	return PrimaryChild(n)
}

// skipFilters walks down filters for which skip is true.
func skipFilters(n *Node, skip func(*Node) bool) *Node {
	for n != nil && skip(n) {
		c := FilteredChild(n)
		if c == nil {
			break
		}
		n = c.Node()
	}
	return n
}

// SkipFilters walks down from n through every filter to the first node
// that is not one.
func SkipFilters(n *Node) *Node {
	return skipFilters(n, func(x *Node) bool { return x.IsFilter() })
}

// SkipImplicitFilters walks down only through filters jobs inserted.
func SkipImplicitFilters(n *Node) *Node {
	return skipFilters(n, func(x *Node) bool { return x.IsFilter() && x.implicit })
}

// BackingChainNext is the next non-filter node below n in its COW chain:
// n's filters are skipped first, then its COW child is followed, then the
// filters below that.
func BackingChainNext(n *Node) *Node {
	n = SkipFilters(n)
	c := COWChild(n)
	if c == nil {
		return nil
	}
	return SkipFilters(c.Node())
}

// FindOverlay returns the node in top's chain whose next node (through
// filters and COW links) is base, walking only COW links between
// non-filter nodes; nil if base is not below top.
func FindOverlay(top, base *Node) *Node {
	base = SkipFilters(base)
	for n := SkipFilters(top); n != nil; n = BackingChainNext(n) {
		if BackingChainNext(n) == base {
			return n
		}
	}
	return nil
}

// InChain reports whether n is top or below it through filtered and COW
// children.
func InChain(top, n *Node) bool {
	for x := top; x != nil; {
		if x == n {
			return true
		}
		c := FilteredOrCOWChild(x)
		if c == nil {
			return false
		}
		x = c.Node()
	}
	return false
}

// Status is the allocation of a range seen from the top of a chain.
type ChainStatus struct {
	Len   int64
	Data  bool // reads come from stored data (not an implied zero)
	Zero  bool // reads return zeroes
	Depth int  // 1: top allocates it, 2: its backing, ...; 0: nowhere
	Node  *Node
}

// StatusAbove describes [off, off+n) as read from top, down to but not
// including base (nil: the whole chain). Filters are looked through;
// Depth counts only COW layers. The result covers at least one byte.
func StatusAbove(ctx context.Context, top, base *Node, off, n int64) (ChainStatus, error) {
	depth := 1
	node := top
	for {
		if node == nil || node == base {
			// Past the end of the chain: reads of this area are zero.
			return ChainStatus{Len: n, Zero: true}, nil
		}
		if off >= node.Size() {
			// Beyond a shorter backing file: reads return zeroes.
			return ChainStatus{Len: n, Zero: true, Depth: 0}, nil
		}
		e, err := resolveStatus(ctx, node, off, n)
		if err != nil {
			return ChainStatus{}, err
		}
		n = e.Len
		if e.Status&StatusAllocated != 0 {
			return ChainStatus{Len: n, Data: e.Status&StatusData != 0, Zero: e.Status&StatusZero != 0, Depth: depth, Node: node}, nil
		}
		node = nextCOW(node)
		depth++
	}
}

// nextCOW is the node below n whose data shows through unallocated areas.
func nextCOW(n *Node) *Node {
	n = SkipFilters(n)
	if c := COWChild(n); c != nil {
		return c.Node()
	}
	return nil
}

// resolveStatus is n's status with filters and StatusRecurse followed to
// the node that knows; Len may shrink on the way.
func resolveStatus(ctx context.Context, n *Node, off, length int64) (Extent, error) {
	for {
		if c := FilteredChild(n); c != nil {
			n = c.Node()
			continue
		}
		e, err := n.blockStatus(ctx, off, length)
		if err != nil {
			return Extent{}, err
		}
		if e.Status&StatusRecurse == 0 || e.Child == nil {
			return e, nil
		}
		// The parent is allocated wherever the child is; the child decides
		// data and zero.
		off, length, n = e.Offset, e.Len, e.Child.Node()
		if off >= n.Size() {
			return Extent{Len: length, Status: StatusZero | StatusAllocated}, nil
		}
	}
}

// ResolveStatus is n's own status (not its backing's) with filters and
// raw-style mappings followed.
func ResolveStatus(ctx context.Context, n *Node, off, length int64) (Extent, error) {
	return resolveStatus(ctx, n, off, length)
}

// IsAllocatedAbove reports whether the first bytes of [off, off+n) are
// allocated in some node from top down to base (base itself only if
// includeBase; base nil: the whole chain), looking through filters, and
// for how many bytes the answer holds.
func IsAllocatedAbove(ctx context.Context, top, base *Node, includeBase bool, off, n int64) (bool, int64, error) {
	isBase := func(x *Node) bool { return base != nil && SkipFilters(x) == SkipFilters(base) }
	for node := top; node != nil; node = nextCOW(node) {
		if !includeBase && isBase(node) {
			break
		}
		// A layer shorter than off allocates nothing there; lower layers
		// still might.
		if off < node.Size() {
			e, err := resolveStatus(ctx, node, off, n)
			if err != nil {
				return false, 0, err
			}
			if e.Status&StatusAllocated != 0 {
				return true, e.Len, nil
			}
			n = e.Len
		}
		if isBase(node) {
			break
		}
	}
	return false, n, nil
}

// BaseOverlay finds, for an operation on the chain from top down to base
// (base nil: to the end of the chain), the COW overlay of base and the
// node directly above base. The overlay is the lowest image that keeps
// its place; the node above base is the overlay itself or a filter below
// it, whose next link is what the overlay must point at when the
// operation ends (stream takes it from there, so that a job below that
// changes base meanwhile is followed). ok is false when base is not below
// top.
func BaseOverlay(top, base *Node) (overlay, above *Node, ok bool) {
	overlay = FindOverlay(top, base)
	if overlay == nil {
		return nil, nil, false
	}
	above = overlay
	if c := COWChild(above); c != nil && c.Node() != base {
		above = c.Node()
		for {
			f := FilteredChild(above)
			if f == nil || f.Node() == base {
				break
			}
			above = f.Node()
		}
	}
	return overlay, above, true
}

// FindBackingImage finds the image in top's chain that an image header
// names name, the way QEMU's 'base' arguments are matched: name is the
// backing file string of some image of the chain, or a path (relative
// ones against that image's directory) to the same file as the image
// below it. nil if none matches.
func FindBackingImage(top *Node, name string) *Node {
	for n := SkipFilters(top); n != nil; n = BackingChainNext(n) {
		below := BackingChainNext(n)
		if below == nil {
			return nil
		}
		if bf, ok := n.impl.(BackingFiler); ok {
			if s, _ := bf.BackingFile(); s != "" && s == name {
				return below
			}
		}
		if samePath(ResolveBacking(n.Filename(), name), below.Filename()) {
			return below
		}
	}
	return nil
}

// samePath reports whether two file names name the same file.
func samePath(a, b string) bool {
	if a == "" || b == "" {
		return false
	}
	if filepath.Clean(a) == filepath.Clean(b) {
		return true
	}
	sa, errA := os.Stat(a)
	sb, errB := os.Stat(b)
	return errA == nil && errB == nil && os.SameFile(sa, sb)
}

// ReplaceChecker is implemented by drivers that can tell whether one of
// the nodes below them may be replaced by a copy of theirs (quorum: a
// child only it uses). It is asked on the node's own Impl.
type ReplaceChecker interface {
	CanReplace(to *Node) bool
}

// CanReplace reports whether to, a node at or below from, may be replaced
// by a node that shows from's data (a mirror's 'replaces'): to is from,
// or lies below filters of from, or below a driver that vouches for it.
// Anything else could change what readers of to see abruptly.
func CanReplace(from, to *Node) bool {
	for n := from; n != nil; {
		if n == to {
			return true
		}
		if rc, ok := n.impl.(ReplaceChecker); ok {
			return rc.CanReplace(to)
		}
		c := FilteredChild(n)
		if c == nil {
			return false
		}
		n = c.Node()
	}
	return false
}
