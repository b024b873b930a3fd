package throttle

import (
	"context"
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/blockd/blockd/pkg/block"
)

// QOMType is the type name of a group in object-add and qom-list-types.
const QOMType = "throttle-group"

// Group is a throttle-group object: one set of leaky buckets shared by
// every throttle node that names the group. Requests of all members are
// admitted in arrival order while the buckets have room; once they are
// full, queued requests are let through one at a time as the buckets
// leak, taking the members in turn (round robin), so that one busy node
// cannot starve the others. Reads and writes queue separately and wait
// only for the buckets that govern them.
//
// A Group is safe for concurrent use. It implements block.Object.
type Group struct {
	id    string
	clock Clock

	// limited mirrors mu.cfg.enabled(), so that a group without limits
	// costs requests one atomic load.
	limited atomic.Bool

	mu struct {
		sync.Mutex
		cfg      config
		lastLeak time.Time
		members  []*member      // round-robin order
		token    [nDirs]*member // member served last, per direction
		lastDir  int            // direction served last
		timer    Timer          // armed while a request waits
		timerGen uint64         // tells a stale timer callback apart
	}
}

// member is a node's place in its group.
type member struct {
	g    *Group
	name string
	// Fields below are guarded by g.mu.
	queue    [nDirs][]*waiter
	disabled int // drain nesting: limits do not apply while > 0
}

// waiter is a request that waits for room in the buckets.
type waiter struct {
	m     *member
	dir   int
	size  uint64
	ready chan struct{} // closed when the request may go
	done  bool          // released; guarded by g.mu
}

// NewGroup creates a group on the wall clock, checking l as qsd does.
// Members of l that are nil keep their defaults (0, lengths 1).
func NewGroup(id string, l Limits) (*Group, error) {
	return NewGroupClock(id, l, RealClock())
}

// NewGroupClock is NewGroup with the time source given.
func NewGroupClock(id string, l Limits, c Clock) (*Group, error) {
	return NewGroupFromProperties(id, Properties{Limits: &l}, c)
}

// NewGroupFromProperties creates a group from the members of an
// object-add command. The flat x-* properties are applied first, the
// nested limits on top of them.
func NewGroupFromProperties(id string, p Properties, c Clock) (*Group, error) {
	if c == nil {
		c = RealClock()
	}
	cfg := defaultConfig()
	if err := cfg.applyLegacy(&p); err != nil {
		return nil, err
	}
	if p.Limits != nil {
		if err := cfg.applyLimits(p.Limits); err != nil {
			return nil, err
		}
	} else if err := cfg.validate(); err != nil {
		return nil, err
	}
	g := &Group{id: id, clock: c}
	g.mu.cfg = cfg
	g.mu.lastLeak = c.Now()
	g.limited.Store(cfg.enabled())
	return g, nil
}

// ID is the group's object id (its name for throttle nodes).
func (g *Group) ID() string { return g.id }

// QOMType implements block.Object.
func (g *Group) QOMType() string { return QOMType }

// InUse implements block.Object: a throttle node is a member.
func (g *Group) InUse() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.mu.members) > 0
}

// Members lists the node names of the group's members, in round-robin
// order.
func (g *Group) Members() []string {
	g.mu.Lock()
	defer g.mu.Unlock()
	names := make([]string, len(g.mu.members))
	for i, m := range g.mu.members {
		names[i] = m.name
	}
	return names
}

// Limits is the configuration as qom-get of "limits" reports it.
func (g *Group) Limits() Limits {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.mu.cfg.limits()
}

// SetLimits changes the configuration at run time (qom-set of "limits").
// The given members replace the current values, the others stay; the
// result is checked as a whole and nothing changes if it is invalid. The
// buckets restart empty and requests already queued are scheduled again
// under the new limits at once.
func (g *Group) SetLimits(l Limits) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	cfg := g.mu.cfg
	if err := cfg.applyLimits(&l); err != nil {
		return err
	}
	cfg.resetLevels()
	g.mu.cfg = cfg
	g.mu.lastLeak = g.clock.Now()
	g.limited.Store(cfg.enabled())
	g.dispatchLocked()
	return nil
}

// LegacyPropertyNames lists the flat x-* properties (qom-list).
func LegacyPropertyNames() []string {
	names := make([]string, len(params))
	for i, p := range params {
		names[i] = "x-" + p.name
	}
	return names
}

// LegacyProperty reads a flat x-* property (qom-get "x-iops-total").
func (g *Group) LegacyProperty(name string) (int64, bool) {
	for _, p := range params {
		if "x-"+p.name == name {
			g.mu.Lock()
			defer g.mu.Unlock()
			return g.mu.cfg.get(p), true
		}
	}
	return 0, false
}

// SetLegacyProperty is qom-set of a flat x-* property: qsd accepts them
// only while the object is being created.
func (g *Group) SetLegacyProperty(name string, v int64) error {
	if _, ok := g.LegacyProperty(name); !ok {
		return block.Errorf(block.ErrNotFound, "Property '%s.%s' not found", QOMType, name)
	}
	return block.Errorf(block.ErrInvalid, "Property cannot be set after initialization")
}

// join makes a node a member. Called under the graph lock.
func (g *Group) join(name string) *member {
	m := &member{g: g, name: name}
	g.mu.Lock()
	defer g.mu.Unlock()
	g.mu.members = append(g.mu.members, m)
	return m
}

// leave removes a member. Its node is closed, so nothing waits; should a
// request still wait, it is let go.
func (g *Group) leave(m *member) {
	g.mu.Lock()
	defer g.mu.Unlock()
	m.disabled++
	g.releaseAllLocked(m)
	g.mu.members = slices.DeleteFunc(g.mu.members, func(x *member) bool { return x == m })
	for dir := range nDirs {
		if g.mu.token[dir] == m {
			g.mu.token[dir] = nil
		}
	}
	g.dispatchLocked()
}

// intercept returns once a request of size bytes in direction dir may
// go, or with ctx's error if ctx ends first.
func (m *member) intercept(ctx context.Context, dir int, size int64) error {
	if !m.g.limited.Load() {
		return nil
	}
	w := m.g.admit(m, dir, uint64(size))
	if w == nil {
		return nil
	}
	select {
	case <-w.ready:
		return nil
	case <-ctx.Done():
		if m.g.cancel(w) {
			return ctx.Err()
		}
		return nil // let go at the same moment: it was accounted, so go
	}
}

// admit accounts a request and returns nil if it may go at once;
// otherwise it queues it and returns the waiter to wait on. A request
// goes at once only if no other request of its direction waits, so that
// the queue stays in order.
func (g *Group) admit(m *member, dir int, size uint64) *waiter {
	g.mu.Lock()
	defer g.mu.Unlock()
	if m.disabled > 0 {
		g.mu.cfg.account(dir, size)
		return nil
	}
	if !g.pendingLocked(dir) && g.waitLocked(dir) == 0 {
		g.mu.cfg.account(dir, size)
		return nil
	}
	w := &waiter{m: m, dir: dir, size: size, ready: make(chan struct{})}
	m.queue[dir] = append(m.queue[dir], w)
	g.dispatchLocked()
	return w
}

// cancel takes a waiter out of its queue; false if it was let go already.
func (g *Group) cancel(w *waiter) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if w.done {
		return false
	}
	q := &w.m.queue[w.dir]
	*q = slices.DeleteFunc(*q, func(x *waiter) bool { return x == w })
	return true
}

// pendingLocked reports whether any member has a queued request in dir.
func (g *Group) pendingLocked(dir int) bool {
	for _, m := range g.mu.members {
		if len(m.queue[dir]) > 0 {
			return true
		}
	}
	return false
}

// waitLocked leaks the buckets up to now and returns how long a request
// in dir must wait.
func (g *Group) waitLocked(dir int) time.Duration {
	now := g.clock.Now()
	if d := now.Sub(g.mu.lastLeak); d > 0 {
		g.mu.cfg.leak(float64(d))
	}
	g.mu.lastLeak = now
	w := g.mu.cfg.waitFor(dir)
	if w >= math.MaxInt64 {
		return math.MaxInt64
	}
	return time.Duration(w)
}

// nextLocked is the member after the last one served in dir that has a
// queued request (round robin), or nil.
func (g *Group) nextLocked(dir int) *member {
	ms := g.mu.members
	start := 0
	if i := slices.Index(ms, g.mu.token[dir]); i >= 0 {
		start = i + 1
	}
	for k := range ms {
		m := ms[(start+k)%len(ms)]
		if len(m.queue[dir]) > 0 {
			return m
		}
	}
	return nil
}

// dispatchLocked lets queued requests go while the buckets have room:
// members in turn within a direction, and reads and writes in turn when
// both wait for a shared (total) bucket. Then it sets the timer for the
// next request that waits, if any.
func (g *Group) dispatchLocked() {
	var next time.Duration
	for {
		released := false
		next = -1
		for k := range nDirs {
			dir := (g.mu.lastDir + 1 + k) % nDirs
			m := g.nextLocked(dir)
			if m == nil {
				continue
			}
			wait := g.waitLocked(dir)
			if wait > 0 {
				if next < 0 || wait < next {
					next = wait
				}
				continue
			}
			w := m.queue[dir][0]
			m.queue[dir] = m.queue[dir][1:]
			g.mu.cfg.account(dir, w.size)
			g.mu.token[dir] = m
			g.mu.lastDir = dir
			g.releaseLocked(w)
			released = true
			break
		}
		if !released {
			break
		}
	}
	g.stopTimerLocked()
	if next > 0 {
		g.mu.timerGen++
		gen := g.mu.timerGen
		g.mu.timer = g.clock.AfterFunc(next, func() { g.fire(gen) })
	}
}

func (g *Group) releaseLocked(w *waiter) {
	w.done = true
	close(w.ready)
}

// releaseAllLocked lets every queued request of m go (drain).
func (g *Group) releaseAllLocked(m *member) {
	for dir := range nDirs {
		for _, w := range m.queue[dir] {
			g.mu.cfg.account(dir, w.size)
			g.releaseLocked(w)
		}
		m.queue[dir] = nil
	}
}

func (g *Group) stopTimerLocked() {
	if t := g.mu.timer; t != nil {
		t.Stop()
		g.mu.timer = nil
		g.mu.timerGen++ // a callback already running is stale
	}
}

// fire is the timer callback: the buckets have leaked enough for the next
// queued request.
func (g *Group) fire(gen uint64) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.mu.timerGen != gen {
		return
	}
	g.mu.timer = nil
	g.dispatchLocked()
}

// drainBegin lets m's queued requests go and stops throttling m.
func (g *Group) drainBegin(m *member) {
	g.mu.Lock()
	defer g.mu.Unlock()
	m.disabled++
	g.releaseAllLocked(m)
	// Another member may be next now that m's requests are gone.
	g.dispatchLocked()
}

// drainEnd throttles m again.
func (g *Group) drainEnd(m *member) {
	g.mu.Lock()
	defer g.mu.Unlock()
	m.disabled--
}

// queued counts the waiting requests of the group (for tests).
func (g *Group) queued() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	n := 0
	for _, m := range g.mu.members {
		n += len(m.queue[dirRead]) + len(m.queue[dirWrite])
	}
	return n
}
