package block

// Views of state that has no accessor, for the graph pictures of the
// transaction tests (graphsnap_test.go). Test builds only.

// FrozenCount is how many freezes hold edge c (Frozen only says whether
// any does; an undo must restore the count).
func FrozenCount(c *Child) int { return c.frozen }

// EdgeBlocker is edge c's op blocker: its reason ("" for none) and the
// ops it lets through.
func EdgeBlocker(c *Child) (reason string, allows Op) {
	return c.blocker.reason, c.blocker.allows
}

// OwnFrozen lists the links n froze for its lifetime.
func OwnFrozen(n *Node) []*Child { return n.ownFrozen }
