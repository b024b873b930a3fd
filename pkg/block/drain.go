package block

// Drain quiesces every source of requests that can reach the given nodes
// (the roots above them), waits until none of their requests is in
// flight, and tells drivers that hold requests (throttle) to let them go.
// It lasts until the change commits or aborts. Node-to-node calls are
// never blocked: a request already inside must be able to finish.
//
// Every request comes in through a Root (exports, commands, and jobs each
// own one), so waiting for the roots is waiting for all I/O on the
// drained nodes; a driver that started requests of its own in the
// background would have to be a Drainer and stop them in DrainBegin.
func (t *Txn) Drain(nodes ...*Node) {
	seen := map[*Node]bool{}
	var roots []*Root
	var up func(n *Node)
	up = func(n *Node) {
		if seen[n] {
			return
		}
		seen[n] = true
		for _, c := range n.parents {
			switch p := c.parent.(type) {
			case *Node:
				up(p)
			case *Root:
				roots = append(roots, p)
			}
		}
	}
	for _, n := range nodes {
		up(n)
	}
	for _, r := range roots {
		r.quiesce()
		t.sources = append(t.sources, r)
	}
	// Everything the quiesced roots can reach is drained, so that a
	// throttle between a root and the changed node releases its queue.
	below := map[*Node]bool{}
	var down func(n *Node)
	down = func(n *Node) {
		if below[n] {
			return
		}
		below[n] = true
		for _, c := range n.Children() {
			down(c.Node())
		}
	}
	for _, r := range roots {
		down(r.Node())
	}
	for _, n := range nodes {
		down(n)
	}
	for n := range below {
		if d, ok := n.impl.(Drainer); n.drained.Add(1) == 1 && ok {
			d.DrainBegin()
		}
		t.nodes = append(t.nodes, n)
	}
	for _, r := range roots {
		r.wait()
	}
}

type drainSource interface{ resume() }

func (t *Txn) undrain() {
	for _, n := range t.nodes {
		// A node the change closed heard its last call in Close.
		if d, ok := n.impl.(Drainer); n.drained.Add(-1) == 0 && ok && !n.closed {
			d.DrainEnd()
		}
	}
	for _, s := range t.sources {
		s.resume()
	}
	t.nodes, t.sources = nil, nil
}

// Drained reports whether a graph change is draining n. Drivers that
// hold requests check it before waiting. It never blocks: a request may
// ask while the graph lock is held by the change waiting for it.
func (n *Node) Drained() bool { return n.drained.Load() > 0 }
