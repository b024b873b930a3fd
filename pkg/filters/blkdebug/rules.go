package blkdebug

import (
	"slices"
	"sync"
	"syscall"

	"github.com/blockd/blockd/pkg/block"
)

// rule is an inject-error or set-state rule.
type rule struct {
	event Event
	state int64 // 0: any state
	// inject-error
	inject bool
	errno  int64
	offset int64 // byte of the sector; -1: any request
	types  uint  // IOType bits
	once   bool
	// set-state
	newState int64
}

// rules is the state machine of a blkdebug node. It starts in state 1.
// When an event happens, the inject-error rules for it whose state
// matches become the active rules (if there are any; otherwise the active
// rules stay), and the first set-state rule for it whose state matches
// moves the machine to its new state, after the others were matched.
// A request fails with the errno of the first active rule that matches
// its kind and range.
type rules struct {
	mu       sync.Mutex
	state    int64             // guarded by mu
	byEvent  map[Event][]*rule // in the order given; guarded by mu
	active   []*rule           // guarded by mu
	injected int64             // requests failed so far; guarded by mu
}

func newRules() *rules {
	return &rules{state: 1, byEvent: map[Event][]*rule{}}
}

func injectRule(o InjectErrorOptions) *rule {
	r := &rule{event: o.Event, inject: true, errno: int64(syscall.EIO), offset: -1, types: defaultIOTypes}
	if o.State != nil {
		r.state = *o.State
	}
	if o.Errno != nil {
		r.errno = *o.Errno
	}
	if o.Sector != nil && *o.Sector != -1 {
		r.offset = *o.Sector * 512
	}
	if o.IOType != nil {
		r.types = o.IOType.bit()
	}
	r.once = o.Once != nil && *o.Once
	return r
}

func setStateRule(o SetStateOptions) *rule {
	r := &rule{event: o.Event, newState: o.NewState}
	if o.State != nil {
		r.state = *o.State
	}
	return r
}

func (rs *rules) add(r *rule) {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	rs.byEvent[r.event] = append(rs.byEvent[r.event], r)
}

// fire processes event ev.
func (rs *rules) fire(ev Event) {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	var active []*rule
	newState, moved := rs.state, false
	for _, r := range rs.byEvent[ev] {
		if r.state != 0 && r.state != rs.state {
			continue
		}
		switch {
		case r.inject:
			active = append(active, r)
		case !moved:
			newState, moved = r.newState, true
		}
	}
	if active != nil {
		rs.active = active
	}
	rs.state = newState
}

// check returns the error to fail a request of kind t on [off, off+n)
// with, or nil. Flushes have no range (n == 0): only rules without a
// sector match them.
func (rs *rules) check(t IOType, off, n int64) error {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	bit := t.bit()
	i := slices.IndexFunc(rs.active, func(r *rule) bool {
		hit := r.offset == -1 || (n > 0 && r.offset >= off && r.offset < off+n)
		return hit && r.types&bit != 0
	})
	if i < 0 || rs.active[i].errno == 0 {
		return nil
	}
	r := rs.active[i]
	if r.once {
		rs.active = slices.Delete(slices.Clone(rs.active), i, i+1)
		rs.byEvent[r.event] = slices.DeleteFunc(slices.Clone(rs.byEvent[r.event]), func(x *rule) bool { return x == r })
	}
	if r.errno < 0 {
		// QEMU returns -errno; a negative errno comes out as success.
		return nil
	}
	rs.injected++
	return block.ErrnoError(syscall.Errno(r.errno))
}
