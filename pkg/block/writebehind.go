package block

// WriteBehinder is a protocol driver that can start writing data back to
// its storage as soon as the data is written, instead of leaving it to
// the next flush. A job that copies much data and flushes at the end
// (stream, commit, mirror) turns it on for what it writes: the copy and
// the write-back then overlap, and the final flush finds little to do
// (without it the flush of a 1 GiB copy took twice as long as the copy
// itself on the build machine). It also keeps a long copy from filling
// the page cache with dirty pages.
type WriteBehinder interface {
	// WriteBehind turns write-behind on or off; calls nest, so two jobs
	// writing to one file each turn it on and off once.
	WriteBehind(on bool)
}

// WriteBehind turns write-behind on in every node that stores n's data:
// n, and down from it each storage child (a format's file, a filter's
// filtered child), not backing images. It returns what turns it off
// again in the same nodes, whatever the graph has become by then.
func WriteBehind(n *Node) (off func()) {
	var on []WriteBehinder
	for cur := n; cur != nil; {
		if w, ok := cur.Impl().(WriteBehinder); ok {
			w.WriteBehind(true)
			on = append(on, w)
		}
		c := StorageChild(cur)
		if c == nil {
			break
		}
		cur = c.Node()
	}
	return func() {
		for _, w := range on {
			w.WriteBehind(false)
		}
	}
}
