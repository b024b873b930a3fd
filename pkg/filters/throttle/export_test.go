package throttle

// Hooks for the tests in package throttle_test.

// Member is a group member as the tests drive it.
type Member = member

// Waiter is a queued request.
type Waiter = waiter

// Join adds a member called name to g.
func Join(g *Group, name string) *Member { return g.join(name) }

// Leave removes m from its group.
func Leave(m *Member) { m.g.leave(m) }

// Admit submits a request without blocking: nil if it may go at once,
// else the waiter that is let go later.
func Admit(m *Member, write bool, size int64) *Waiter {
	dir := dirRead
	if write {
		dir = dirWrite
	}
	return m.g.admit(m, dir, uint64(size))
}

// Released reports whether the request was let go.
func (w *waiter) Released() bool {
	select {
	case <-w.ready:
		return true
	default:
		return false
	}
}

// Queued counts the requests waiting in g.
func Queued(g *Group) int { return g.queued() }

// Saturate fills every bucket of g so that the next request waits for a
// very long time.
func Saturate(g *Group) {
	g.mu.Lock()
	defer g.mu.Unlock()
	for i := range g.mu.cfg.b {
		g.mu.cfg.b[i].level = 1e18
	}
}
