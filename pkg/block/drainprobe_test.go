package block_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/blockd/blockd/pkg/block"
	"github.com/blockd/blockd/pkg/block/blocktest"
)

// Helpers of the drain tests: an ordered record of what happened in
// several goroutines, a probe filter that notes its I/O and drain calls
// and can keep a read inside (a slow device), and a fake job that reads
// in a loop and parks at a pause point while drained.

// events is what happened, in order, from any goroutine.
type events struct {
	mu      sync.Mutex
	list    []string
	changed chan struct{} // closed and replaced at each add
}

func newEvents() *events { return &events{changed: make(chan struct{})} }

func (e *events) add(s string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.list = append(e.list, s)
	close(e.changed)
	e.changed = make(chan struct{})
}

// snapshot returns the events so far.
func (e *events) snapshot() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Clone(e.list)
}

// waitDeadline bounds every wait of a drain test: reached, the test has
// deadlocked, not merely run slowly.
const waitDeadline = 10 * time.Second

// waitFor blocks until ok holds for the events so far.
func (e *events) waitFor(t *testing.T, what string, ok func(list []string) bool) {
	t.Helper()
	deadline := time.After(waitDeadline)
	for {
		e.mu.Lock()
		list, ch := slices.Clone(e.list), e.changed
		e.mu.Unlock()
		if ok(list) {
			return
		}
		select {
		case <-ch:
		case <-deadline:
			t.Fatalf("waiting for %s; events: %s", what, show(list))
		}
	}
}

// waitEvent blocks until event s has happened.
func (e *events) waitEvent(t *testing.T, s string) {
	t.Helper()
	e.waitFor(t, s, func(l []string) bool { return slices.Contains(l, s) })
}

// index is where s first happened, or -1.
func index(list []string, s string) int { return slices.Index(list, s) }

func count(list []string, s string) int {
	n := 0
	for _, x := range list {
		if x == s {
			n++
		}
	}
	return n
}

// before fails the test unless a happened, and before b if b did.
func before(t *testing.T, list []string, a, b string) {
	t.Helper()
	ia, ib := index(list, a), index(list, b)
	if ia < 0 || ib >= 0 && ia > ib {
		t.Errorf("want %s before %s; events: %s", a, b, show(list))
	}
}

// show lists the events for a message, reads left out (jobs make many).
func show(list []string) string {
	var s []string
	for _, x := range list {
		if !strings.HasSuffix(x, ":read") && !strings.HasSuffix(x, ":read-done") {
			s = append(s, x)
		}
	}
	return fmt.Sprintf("%s (and %d reads)", strings.Join(s, " "), len(list)-len(s))
}

// probe is a pass-through filter that notes its requests ("p:read" as a
// read comes in, "p:read-done" as it leaves), its drain calls and its
// close in ev. While gate is set, reads wait inside until it is closed:
// a slow device below, never a hold because of a drain.
type probe struct {
	block.Forward
	name   string
	ev     *events
	gate   chan struct{}
	closed atomic.Bool
}

func (p *probe) note(s string) {
	if p.ev != nil {
		p.ev.add(p.name + ":" + s)
	}
}

func (p *probe) ReadAt(ctx context.Context, b []byte, off int64, fl block.Flags) error {
	p.note("read")
	if p.gate != nil {
		<-p.gate
	}
	defer p.note("read-done")
	return p.Forward.ReadAt(ctx, b, off, fl)
}

func (p *probe) WriteAt(ctx context.Context, b []byte, off int64, fl block.Flags) error {
	p.note("write")
	return p.Forward.WriteAt(ctx, b, off, fl)
}

func (p *probe) Zero(ctx context.Context, off, n int64, fl block.Flags) error {
	p.note("zero")
	return p.Forward.Zero(ctx, off, n, fl)
}

func (p *probe) Discard(ctx context.Context, off, n int64) error {
	p.note("discard")
	return p.Forward.Discard(ctx, off, n)
}

func (p *probe) Flush(ctx context.Context) error {
	p.note("flush")
	return p.Forward.Flush(ctx)
}

func (p *probe) DrainBegin() { p.note("drain-begin") }

func (p *probe) DrainEnd() {
	if p.closed.Load() {
		p.note("drain-end-after-close")
	}
	p.note("drain-end")
}

func (p *probe) Close() error {
	p.closed.Store(true)
	p.note("close")
	return nil
}

var _ block.Drainer = (*probe)(nil)

func init() {
	block.Register("draintest-probe", block.KindFilter, func(ctx context.Context, o *block.Opener, opts *blocktest.FilterOptions) (block.Impl, error) {
		c, err := o.Attach(ctx, "file", opts.File, block.RoleFilter)
		if err != nil {
			return nil, err
		}
		return &probe{Forward: block.Forward{C: c}, name: o.Node().Name()}, nil
	})
}

// openProbe opens probe node name over node file, noting into ev.
func openProbe(t *testing.T, g *block.Graph, name, file string, ev *events) (*block.Node, *probe) {
	t.Helper()
	n := blocktest.Open(t, g, `{"driver":"draintest-probe","node-name":"`+name+`","file":"`+file+`"}`)
	p := n.Impl().(*probe)
	p.ev = ev
	return n, p
}

// fakeJob reads through its root in a loop until stopped, and stops at
// its pause point, between two reads, while a drain asks it to (it is
// the root's DrainHooks, as pkg/jobs' jobs are); a job not started is
// paused at once. It notes "j:parked" when it stops at its pause point. It notes "j:read" and
// "j:read-done" around each read and its hook calls in ev.
type fakeJob struct {
	name string
	ev   *events
	root *block.Root
	// mid, if set, stops the job between the two requests of a step
	// (with nothing in flight) until it is closed.
	mid chan struct{}

	mu      sync.Mutex
	cond    sync.Cond
	pause   int  // DrainBegins not yet ended; guarded by mu
	parked  bool // at the pause point; guarded by mu
	running bool // the loop runs; guarded by mu
}

func newFakeJob(t *testing.T, n *block.Node, name string, ev *events) *fakeJob {
	t.Helper()
	j := &fakeJob{name: name, ev: ev}
	j.cond.L = &j.mu
	change(t, n.Graph(), func(tx *block.Txn) (err error) {
		j.root, err = tx.NewRoot(n, block.RootOptions{Kind: "block-job", ID: name, Perm: permR, Shared: block.PermAll, Hooks: j})
		return err
	})
	return j
}

func (j *fakeJob) DrainBegin() {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.pause++
	j.ev.add(j.name + ":pause")
}

func (j *fakeJob) DrainWait() {
	j.mu.Lock()
	defer j.mu.Unlock()
	for j.running && !j.parked {
		j.cond.Wait()
	}
	j.ev.add(j.name + ":paused")
}

func (j *fakeJob) DrainEnd() {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.pause--
	j.ev.add(j.name + ":resume")
	j.cond.Broadcast()
}

// start runs the job's body in a goroutine: read, then the pause point,
// until stop closes. The job counts as running from now on, so that a
// drain waits for it to park. Its result goes to errs.
func (j *fakeJob) start(stop <-chan struct{}, errs chan<- error) {
	j.mu.Lock()
	j.running = true
	j.mu.Unlock()
	go func() { errs <- j.run(stop) }()
}

func (j *fakeJob) run(stop <-chan struct{}) error {
	defer func() {
		j.mu.Lock()
		j.running = false
		j.cond.Broadcast()
		j.mu.Unlock()
	}()
	buf := make([]byte, 512)
	for {
		select {
		case <-stop:
			return nil
		default:
		}
		// A step issues two requests, as a copy does: a drain must not
		// take the moment between them for the pause point.
		for i := range 2 {
			if i == 1 && j.mid != nil {
				j.ev.add(j.name + ":mid")
				<-j.mid
			}
			j.ev.add(j.name + ":read")
			if err := j.root.ReadAt(context.Background(), buf, 0, 0); err != nil {
				return err
			}
			j.ev.add(j.name + ":read-done")
		}
		j.mu.Lock()
		if j.pause > 0 {
			j.ev.add(j.name + ":parked")
		}
		for j.pause > 0 {
			j.parked = true
			j.cond.Broadcast()
			j.cond.Wait()
		}
		j.parked = false
		j.mu.Unlock()
	}
}
