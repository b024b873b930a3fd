package jobs

import (
	"context"
	"errors"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/blockd/blockd/pkg/block"
	"github.com/blockd/blockd/pkg/block/blocktest"
)

// recorder keeps the events a runner emits: status changes by their
// status, other events by name, and hooks a body reports ("prepare").
type recorder struct {
	mu     sync.Mutex
	events []string
	data   []map[string]any
}

func (r *recorder) Emit(name string, data any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	m, _ := data.(map[string]any)
	if name == "JOB_STATUS_CHANGE" {
		name = m["status"].(string)
	}
	r.events = append(r.events, name)
	r.data = append(r.data, m)
}

func (r *recorder) note(s string) { r.Emit(s, nil) }

func (r *recorder) String() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return strings.Join(r.events, ",")
}

// last returns the data of the last event called name.
func (r *recorder) last(name string) map[string]any {
	r.mu.Lock()
	defer r.mu.Unlock()
	for i := len(r.events) - 1; i >= 0; i-- {
		if r.events[i] == name {
			return r.data[i]
		}
	}
	return nil
}

// stepBody works until finish is called: each step accounts far more
// bytes than its rate limit allows, so that it sleeps in Yield (the fake
// clock never moves) until a verb wakes it, as a throttled job does. It
// reports its graph hooks to rec.
type stepBody struct {
	mu          sync.Mutex
	stop        bool
	noSteps     bool // the body ends before its first Yield
	fail        error
	prepareFail error
	onPrepare   func(tx *block.Txn) // if set, runs in Prepare
	rec         *recorder
}

func (b *stepBody) Run(ctx context.Context, j *Job) error {
	if b.noSteps {
		return b.fail
	}
	for {
		j.Processed(1 << 40)
		if err := j.Yield(ctx); err != nil {
			return err
		}
		b.mu.Lock()
		stop := b.stop
		b.mu.Unlock()
		if stop {
			return b.fail
		}
	}
}

// finish makes the body end at its next wake-up and wakes it.
func (b *stepBody) finish(j *Job) {
	b.mu.Lock()
	b.stop = true
	b.mu.Unlock()
	j.mu.Lock()
	j.limit.setSpeed(0)
	j.cond.Broadcast()
	j.mu.Unlock()
}

func (b *stepBody) Prepare(ctx context.Context, tx *block.Txn) error {
	b.rec.note("prepare")
	if b.onPrepare != nil {
		b.onPrepare(tx)
	}
	return b.prepareFail
}
func (b *stepBody) Commit()                                  { b.rec.note("commit") }
func (b *stepBody) Abort(ctx context.Context, tx *block.Txn) { b.rec.note("abort") }
func (b *stepBody) Clean(ctx context.Context, tx *block.Txn) { b.rec.note("clean") }
func newRunner() (*Runner, *recorder, *blocktest.FakeClock) {
	rec := &recorder{}
	clk := blocktest.NewFakeClock()
	return NewRunner(blocktest.NewGraph(), rec, nil, clk), rec, clk
}

var blockOpts = Options{AutoFinalize: true, AutoDismiss: true, BlockJob: true, Speed: 1}

// TestLifecycles pins the event sequences of QEMU 7.2 for the ways a job
// can end, with the order of the body's graph hooks among them.
func TestLifecycles(t *testing.T) {
	boom := errors.New("boom")
	tests := []struct {
		name    string
		opts    Options
		noSteps bool
		fail    error
		prepErr error
		// act drives the job before its step channel is closed.
		act  func(t *testing.T, j *Job, b *stepBody)
		want string
	}{
		{name: "success", opts: blockOpts,
			want: "created,running,waiting,pending,prepare,commit,clean,BLOCK_JOB_COMPLETED,concluded,null"},
		{name: "no auto-dismiss", opts: Options{AutoFinalize: true, BlockJob: true, Speed: 1},
			want: "created,running,waiting,pending,prepare,commit,clean,BLOCK_JOB_COMPLETED,concluded"},
		{name: "not a block job", opts: Options{AutoFinalize: true, AutoDismiss: true, Speed: 1},
			want: "created,running,waiting,pending,prepare,commit,clean,concluded,null"},
		{name: "failure", opts: blockOpts, fail: boom,
			want: "created,running,aborting,abort,clean,BLOCK_JOB_COMPLETED,concluded,null"},
		{name: "prepare fails", opts: blockOpts, prepErr: boom,
			want: "created,running,waiting,pending,prepare,aborting,abort,clean,BLOCK_JOB_COMPLETED,concluded,null"},
		{name: "cancel", opts: blockOpts, act: func(t *testing.T, j *Job, b *stepBody) { j.Cancel(false) },
			want: "created,running,aborting,abort,clean,BLOCK_JOB_CANCELLED,concluded,null"},
		{name: "pause, resume", opts: blockOpts, act: func(t *testing.T, j *Job, b *stepBody) {
			mustOK(t, j.Pause())
			mustOK(t, j.Resume())
		}, want: "created,running,paused,running,waiting,pending,prepare,commit,clean,BLOCK_JOB_COMPLETED,concluded,null"},
		{name: "cancel while paused", opts: blockOpts, act: func(t *testing.T, j *Job, b *stepBody) {
			mustOK(t, j.Pause())
			mustOK(t, j.Cancel(true))
		}, want: "created,running,paused,running,aborting,abort,clean,BLOCK_JOB_CANCELLED,concluded,null"},
		{name: "manual finalize", opts: Options{BlockJob: true, Speed: 1}, act: func(t *testing.T, j *Job, b *stepBody) {
			b.finish(j)
			waitStatus(t, j, Pending)
			if err := j.Dismiss(); err == nil || err.Error() != "Job 'j' in state 'pending' cannot accept command verb 'dismiss'" {
				t.Errorf("dismiss pending: %v", err)
			}
			mustOK(t, j.Finalize())
			if j.Status() != Concluded {
				t.Errorf("status after finalize: %s", j.Status())
			}
			mustOK(t, j.Dismiss())
		}, want: "created,running,waiting,pending,BLOCK_JOB_PENDING,prepare,commit,clean,BLOCK_JOB_COMPLETED,concluded,null"},
		{name: "cancel pending", opts: Options{BlockJob: true, Speed: 1}, act: func(t *testing.T, j *Job, b *stepBody) {
			b.finish(j)
			waitStatus(t, j, Pending)
			mustOK(t, j.Cancel(false))
			mustOK(t, j.Dismiss())
		}, want: "created,running,waiting,pending,BLOCK_JOB_PENDING,aborting,abort,clean,BLOCK_JOB_CANCELLED,concluded,null"},
		{name: "nothing to do", opts: blockOpts, noSteps: true,
			want: "created,running,waiting,pending,prepare,commit,clean,BLOCK_JOB_COMPLETED,concluded,null"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, rec, _ := newRunner()
			b := &stepBody{fail: tt.fail, prepareFail: tt.prepErr, rec: rec, noSteps: tt.noSteps}
			j, err := r.Start(context.Background(), "j", "test", b, tt.opts)
			if err != nil {
				t.Fatal(err)
			}
			if tt.noSteps && rec.String() != tt.want {
				t.Errorf("a job with nothing to do: events by Start's return %s, want %s", rec, tt.want)
			}
			if tt.act != nil {
				tt.act(t, j, b)
			}
			if s := j.Status(); s == Running || s == Paused {
				b.finish(j)
			}
			j.Wait()
			r.Close()
			if got := rec.String(); got != tt.want {
				t.Errorf("events %s\n want %s", got, tt.want)
			}
			if tt.name == "failure" {
				if e := rec.last("BLOCK_JOB_COMPLETED"); e["error"] != "boom" {
					t.Errorf("BLOCK_JOB_COMPLETED %v", e)
				}
			}
		})
	}
}

func mustOK(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// waitStatus waits for the job's goroutine to move it to s.
func waitStatus(t *testing.T, j *Job, s Status) {
	t.Helper()
	j.mu.Lock()
	defer j.mu.Unlock()
	j.waitLocked(func() bool { return j.status == s })
	if j.status != s {
		t.Fatalf("job is %s, want %s", j.status, s)
	}
}

// TestVerbTable: each verb is refused outside QEMU 7.2's states with
// qsd's message.
func TestVerbTable(t *testing.T) {
	r, _, _ := newRunner()
	b := &stepBody{rec: &recorder{}}
	j, err := r.Start(context.Background(), "j", "stream", b, Options{BlockJob: true, Speed: 1})
	mustOK(t, err)
	if err := j.Resume(); err == nil || err.Error() != "Can't resume a job that was not paused" {
		t.Errorf("resume: %v", err)
	}
	mustOK(t, j.Pause())
	if err := j.Pause(); err == nil || err.Error() != "Job is already paused" {
		t.Errorf("second pause: %v", err)
	}
	mustOK(t, j.Resume())
	for _, v := range []struct {
		verb string
		do   func() error
	}{
		{"dismiss", j.Dismiss}, {"finalize", j.Finalize}, {"complete", j.Complete},
	} {
		want := "Job 'j' in state 'running' cannot accept command verb '" + v.verb + "'"
		if err := v.do(); err == nil || err.Error() != want {
			t.Errorf("%s while running: %v", v.verb, err)
		}
	}
	if err := j.SetSpeed(-1); err == nil || err.Error() != "Parameter 'speed' expects a non-negative value" {
		t.Errorf("negative speed: %v", err)
	}
	b.finish(j)
	waitStatus(t, j, Pending)
	for _, v := range []struct {
		verb string
		do   func() error
	}{
		{"pause", j.Pause}, {"set-speed", func() error { return j.SetSpeed(1) }}, {"complete", j.Complete},
	} {
		want := "Job 'j' in state 'pending' cannot accept command verb '" + v.verb + "'"
		if err := v.do(); err == nil || err.Error() != want {
			t.Errorf("%s while pending: %v", v.verb, err)
		}
	}
	mustOK(t, j.Finalize())
	for _, v := range []struct {
		verb string
		do   func() error
	}{
		{"cancel", func() error { return j.Cancel(true) }}, {"pause", j.Pause}, {"finalize", j.Finalize},
	} {
		want := "Job 'j' in state 'concluded' cannot accept command verb '" + v.verb + "'"
		if err := v.do(); err == nil || err.Error() != want {
			t.Errorf("%s when concluded: %v", v.verb, err)
		}
	}
	mustOK(t, j.Dismiss())
	if r.Find("j") != nil {
		t.Error("dismissed job still listed")
	}
	r.Close()
}

// TestStartErrors: a bad id or a failing Check leaves no job and no
// event; a failing Setup or a negative speed creates the job and ends it
// at once, as qsd does.
func TestStartErrors(t *testing.T) {
	r, rec, _ := newRunner()
	bad := func(id string, body Body, opts Options, want string) {
		t.Helper()
		if _, err := r.Start(context.Background(), id, "test", body, opts); err == nil || err.Error() != want {
			t.Errorf("Start(%q): %v, want %q", id, err, want)
		}
	}
	bad("", &stepBody{rec: rec, noSteps: true}, blockOpts, "Invalid job ID ''")
	bad("1x", &stepBody{rec: rec, noSteps: true}, blockOpts, "Invalid job ID '1x'")
	bad("j", &checkFails{}, blockOpts, "no")
	if rec.String() != "" {
		t.Errorf("events of refused jobs: %s", rec)
	}
	bad("j", &setupFails{}, blockOpts, "late")
	if rec.String() != "created,null" {
		t.Errorf("events of a failed Setup: %s", rec)
	}
	rec.events = nil
	bad("j", &stepBody{rec: rec, noSteps: true}, Options{BlockJob: true, Speed: -1}, "Parameter 'speed' expects a non-negative value")
	if rec.String() != "created,null" {
		t.Errorf("events of a negative speed: %s", rec)
	}
	b := &stepBody{rec: rec}
	j, err := r.Start(context.Background(), "j", "test", b, blockOpts)
	mustOK(t, err)
	bad("j", &stepBody{rec: rec}, blockOpts, "Job ID 'j' already in use")
	b.finish(j)
	r.Close()
}

type checkFails struct{ stepBody }

func (*checkFails) Check(ctx context.Context, tx *block.Txn, j *Job) error { return errors.New("no") }

type setupFails struct{ stepBody }

func (*setupFails) Setup(ctx context.Context, tx *block.Txn, j *Job) error { return errors.New("late") }

// TestRateLimit: on a fake clock a job moves speed bytes per second in
// 100 ms slices, and a speed change applies at once.
func TestRateLimit(t *testing.T) {
	r, _, clk := newRunner()
	const speed = 1 << 20
	var moved atomic.Int64
	body := bodyFunc(func(ctx context.Context, j *Job) error {
		for {
			if err := j.Yield(ctx); err != nil {
				return err
			}
			j.Processed(64 << 10)
			moved.Add(64 << 10)
		}
	})
	j, err := r.Start(context.Background(), "j", "test", body, Options{BlockJob: true, Speed: speed})
	mustOK(t, err)
	for i := 0; i < 300; i++ { // three simulated seconds in 10 ms steps
		waitSleeping(t, j, clk)
		clk.Advance(10 * time.Millisecond)
	}
	waitSleeping(t, j, clk)
	if got := moved.Load(); got < 3*speed-128<<10 || got > 3*speed+128<<10 {
		t.Errorf("moved %d bytes in 3 s at %d B/s", got, speed)
	}
	mustOK(t, j.SetSpeed(0))
	before := moved.Load()
	for moved.Load() < before+16<<20 {
		runtime.Gosched() // no limit: it moves without the clock
	}
	mustOK(t, j.Cancel(true))
	r.Close()
}

// waitSleeping waits until the job sleeps in Yield for its rate limit.
func waitSleeping(t *testing.T, j *Job, clk *blocktest.FakeClock) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		j.mu.Lock()
		sleeping := j.inYield && clk.Pending() > 0
		j.mu.Unlock()
		if sleeping {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("job does not sleep")
		}
		runtime.Gosched()
	}
}

type bodyFunc func(ctx context.Context, j *Job) error

func (f bodyFunc) Run(ctx context.Context, j *Job) error { return f(ctx, j) }

// TestPauseWhileSleeping: a job that sleeps for its rate limit pauses
// before Pause returns; a busy one pauses at its next Yield.
func TestPauseWhileSleeping(t *testing.T) {
	r, rec, _ := newRunner()
	busy := make(chan struct{})
	release := make(chan struct{})
	body := bodyFunc(func(ctx context.Context, j *Job) error {
		if err := j.Yield(ctx); err != nil {
			return err
		}
		j.Processed(1 << 30) // the next Yield sleeps for a long time
		if err := j.Yield(ctx); err != nil {
			return err
		}
		close(busy)
		<-release
		return j.Yield(ctx)
	})
	j, err := r.Start(context.Background(), "j", "test", body, Options{BlockJob: true, Speed: 1})
	mustOK(t, err)
	mustOK(t, j.Pause())
	if !strings.HasSuffix(rec.String(), "paused") {
		t.Fatalf("pause of a sleeping job: events %s", rec)
	}
	if i := j.BlockInfo(); i.Busy || !i.Paused {
		t.Errorf("paused job: %+v", i)
	}
	mustOK(t, j.Resume())
	mustOK(t, j.SetSpeed(0))
	<-busy
	mustOK(t, j.Pause())
	if strings.HasSuffix(rec.String(), "paused") {
		t.Fatalf("a busy job paused before its next Yield: %s", rec)
	}
	close(release)
	waitStatus(t, j, Paused)
	mustOK(t, j.Cancel(true))
	r.Close()
	if got := rec.String(); got != "created,running,paused,running,paused,running,aborting,BLOCK_JOB_CANCELLED,concluded" {
		t.Errorf("events %s", got)
	}
}

// TestOnError: what each policy does with a failed request, the
// BLOCK_JOB_ERROR events and the io-status.
func TestOnError(t *testing.T) {
	eio := syscall.EIO
	enospc := syscall.ENOSPC
	tests := []struct {
		policy OnError
		err    error
		want   Action
		status IOStatus
	}{
		{OnErrorReport, eio, ActionReport, IOStatusOK},
		{OnErrorIgnore, eio, ActionIgnore, IOStatusOK},
		{OnErrorStop, eio, ActionStop, IOStatusFailed},
		{OnErrorStop, enospc, ActionStop, IOStatusNoSpace},
		{OnErrorEnospc, eio, ActionReport, IOStatusOK},
		{OnErrorEnospc, enospc, ActionStop, IOStatusNoSpace},
		{OnErrorAuto, enospc, ActionStop, IOStatusNoSpace},
	}
	for _, tt := range tests {
		t.Run(string(tt.policy)+" "+tt.err.Error(), func(t *testing.T) {
			r, rec, _ := newRunner()
			b := &stepBody{rec: rec}
			j, err := r.Start(context.Background(), "j", "stream", b, Options{BlockJob: true, AutoFinalize: true, OnError: tt.policy, Speed: 1})
			mustOK(t, err)
			if got := j.IOError(tt.err, false); got != tt.want {
				t.Errorf("action %s, want %s", got, tt.want)
			}
			e := rec.last("BLOCK_JOB_ERROR")
			if e["device"] != "j" || e["operation"] != "write" || e["action"] != string(tt.want) {
				t.Errorf("BLOCK_JOB_ERROR %v", e)
			}
			if i := j.BlockInfo(); i.IOStatus != tt.status || i.Paused != (tt.want == ActionStop) {
				t.Errorf("block info %+v", i)
			}
			if tt.want == ActionStop {
				waitStatus(t, j, Paused) // woken in Yield: parks
				mustOK(t, j.Resume())
				if i := j.BlockInfo(); i.IOStatus != IOStatusOK {
					t.Errorf("io-status after resume: %s", i.IOStatus)
				}
			}
			b.finish(j)
			j.Wait()
			r.Close()
		})
	}
}

// TestDrainPausesJob: a graph change that drains a node a job uses
// pauses the job at its pause point and lets it go afterwards; the
// events show it, as qsd's do for a reopen under a stream.
func TestDrainPausesJob(t *testing.T) {
	r, rec, _ := newRunner()
	g := r.g
	n := blocktest.Open(t, g, `{"driver":"blocktest-mem","node-name":"n","size":1048576}`)
	var root *block.Root
	var stop atomic.Bool
	body := &setupBody{setup: func(tx *block.Txn, j *Job) error {
		var err error
		root, err = j.NewRoot(tx, n, "main node", block.PermConsistentRead, block.PermAll)
		return err
	}, run: func(ctx context.Context, j *Job) error {
		buf := make([]byte, 4096)
		for !stop.Load() {
			if err := root.ReadAt(ctx, buf, 0, 0); err != nil {
				return err
			}
			j.Processed(1 << 40)
			if err := j.Yield(ctx); err != nil {
				return err
			}
		}
		return nil
	}}
	j, err := r.Start(context.Background(), "j", "test", body, blockOpts)
	mustOK(t, err)
	tx := g.Begin()
	tx.Drain(n)
	if s := j.Status(); s != Paused {
		t.Errorf("job during a drain: %s", s)
	}
	tx.Abort()
	if s := j.Status(); s != Running {
		t.Errorf("job after the drain: %s", s)
	}
	if n.Blocked(block.OpDelete) == nil {
		t.Error("a node in use by a job may be deleted")
	}
	stop.Store(true)
	mustOK(t, j.SetSpeed(0))
	j.Wait()
	r.Close()
	if got := rec.String(); !strings.HasPrefix(got, "created,running,paused,running,waiting") {
		t.Errorf("events %s", got)
	}
	if n.Blocked(block.OpDelete) != nil {
		t.Error("the job's blocker outlived it")
	}
}

// TestDrainRightAfterResume: a drain that comes after job-resume and
// before the resumed body runs again must still see the job parked.
// The resume had cleared the parked flag; the body, still in its wait
// loop because the drain paused it again, never set it back, and the
// drain waited forever (found by FuzzCommands: block-stream, job-pause,
// job-resume, then shutdown).
func TestDrainRightAfterResume(t *testing.T) {
	r, rec, _ := newRunner()
	g := r.g
	n := blocktest.Open(t, g, `{"driver":"blocktest-mem","node-name":"n","size":1048576}`)
	body := &setupBody{setup: func(tx *block.Txn, j *Job) error {
		_, err := j.NewRoot(tx, n, "main node", block.PermConsistentRead, block.PermAll)
		return err
	}, run: func(ctx context.Context, j *Job) error {
		for {
			if err := j.Yield(ctx); err != nil {
				return err
			}
		}
	}}
	j, err := r.Start(context.Background(), "j", "test", body, blockOpts)
	mustOK(t, err)
	mustOK(t, j.Pause())
	waitStatus(t, j, Paused)
	drained := make(chan *block.Txn)
	go func() {
		mustOK(t, j.Resume())
		tx := g.Begin()
		tx.Drain(n)
		drained <- tx
	}()
	select {
	case tx := <-drained:
		tx.Abort()
	case <-time.After(10 * time.Second):
		t.Fatalf("the drain after a resume waits forever; events %s", rec)
	}
	mustOK(t, j.Cancel(true))
	r.Close()
	if got := rec.String(); !strings.HasPrefix(got, "created,running,paused,running,paused,running") {
		t.Errorf("events %s", got)
	}
}

type setupBody struct {
	setup func(tx *block.Txn, j *Job) error
	run   func(ctx context.Context, j *Job) error
}

func (b *setupBody) Setup(ctx context.Context, tx *block.Txn, j *Job) error { return b.setup(tx, j) }
func (b *setupBody) Run(ctx context.Context, j *Job) error                  { return b.run(ctx, j) }

// TestCloseCancels: shutdown cancels running jobs and aborts pending ones.
func TestCloseCancels(t *testing.T) {
	r, rec, _ := newRunner()
	run := &stepBody{rec: rec}
	_, err := r.Start(context.Background(), "a", "test", run, blockOpts)
	mustOK(t, err)
	pend := &stepBody{rec: rec}
	p, err := r.Start(context.Background(), "p", "test", pend, Options{BlockJob: true, Speed: 1})
	mustOK(t, err)
	pend.finish(p)
	waitStatus(t, p, Pending)
	r.Close()
	// Whole entries are counted: the two jobs' aborts may come one after
	// the other, where a substring count of ",abort," finds only one.
	got := rec.String()
	n := map[string]int{}
	for _, e := range strings.Split(got, ",") {
		n[e]++
	}
	if n["BLOCK_JOB_CANCELLED"] != 2 || n["abort"] != 2 || n["clean"] != 2 {
		t.Errorf("events %s", got)
	}
}

// readyBody becomes ready at once and then waits, as a mirror in sync
// does, until it is completed or cancelled; a cancel that is not forced
// is soft once ready (QEMU's mirror_cancel).
type readyBody struct {
	done atomic.Bool
}

func (b *readyBody) Run(ctx context.Context, j *Job) error {
	j.Ready()
	for !b.done.Load() && !j.CancelRequested() {
		j.Processed(1 << 40) // sleep in Yield until a verb wakes the job
		if err := j.Yield(ctx); err != nil {
			return err
		}
	}
	return nil
}

func (b *readyBody) Complete() error { b.done.Store(true); return nil }

func (b *readyBody) Cancel(force bool) bool { return force }

// TestReady: READY and BLOCK_JOB_READY; pause moves a ready job to
// standby and resume back; complete works in standby too (QEMU 7.2); a
// cancel without force in ready ends the job as completed, with force as
// cancelled.
func TestReady(t *testing.T) {
	for _, tt := range []struct {
		name string
		act  func(t *testing.T, j *Job)
		want string
	}{
		{"complete", func(t *testing.T, j *Job) { mustOK(t, j.Complete()) },
			"created,running,ready,BLOCK_JOB_READY,waiting,pending,BLOCK_JOB_COMPLETED,concluded,null"},
		{"complete in standby", func(t *testing.T, j *Job) {
			mustOK(t, j.Pause())
			if i := j.BlockInfo(); !i.Ready || !i.Paused || j.Status() != Standby {
				t.Errorf("paused ready job: %s %+v", j.Status(), i)
			}
			mustOK(t, j.Complete())
			mustOK(t, j.Resume())
		}, "created,running,ready,BLOCK_JOB_READY,standby,ready,waiting,pending,BLOCK_JOB_COMPLETED,concluded,null"},
		{"soft cancel", func(t *testing.T, j *Job) { mustOK(t, j.Cancel(false)) },
			"created,running,ready,BLOCK_JOB_READY,waiting,pending,BLOCK_JOB_COMPLETED,concluded,null"},
		{"forced cancel", func(t *testing.T, j *Job) { mustOK(t, j.Cancel(true)) },
			"created,running,ready,BLOCK_JOB_READY,aborting,BLOCK_JOB_CANCELLED,concluded,null"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r, rec, _ := newRunner()
			j, err := r.Start(context.Background(), "m", "mirror", &readyBody{}, blockOpts)
			mustOK(t, err)
			if j.Status() != Ready {
				t.Fatalf("status %s", j.Status())
			}
			tt.act(t, j)
			j.Wait()
			r.Close()
			if got := rec.String(); got != tt.want {
				t.Errorf("events %s\n want %s", got, tt.want)
			}
		})
	}
}

// TestGroupPrepareFails: a group finalizes as one. When one job's Prepare
// fails after another's succeeded, no job commits: the graph change of
// both is undone, the one that failed completes with its error and the
// other is cancelled.
func TestGroupPrepareFails(t *testing.T) {
	r, rec, _ := newRunner()
	boom := errors.New("boom")
	g := NewGroup()
	opts := blockOpts
	opts.Group = g
	// Newest first: j2 prepares, then j1 fails.
	b1 := &stepBody{rec: rec, prepareFail: boom}
	b2 := &stepBody{rec: rec}
	j1, err := r.Start(context.Background(), "j1", "test", b1, opts)
	mustOK(t, err)
	j2, err := r.Start(context.Background(), "j2", "test", b2, opts)
	mustOK(t, err)
	undone := false
	b2.onPrepare = func(tx *block.Txn) { tx.OnUndo(func() { undone = true }) }
	b1.finish(j1)
	b2.finish(j2)
	j1.Wait()
	j2.Wait()
	r.Close()
	got := rec.String()
	const want = "created,running,created,running,waiting,waiting,pending,pending,prepare,prepare," +
		"aborting,abort,clean,BLOCK_JOB_CANCELLED,concluded,null," +
		"aborting,abort,clean,BLOCK_JOB_COMPLETED,concluded,null"
	if got != want {
		t.Errorf("events %s\n want %s", got, want)
	}
	if !undone {
		t.Error("the graph change of the job that prepared was not undone")
	}
	if e := rec.last("BLOCK_JOB_COMPLETED"); e["device"] != "j1" || e["error"] != "boom" {
		t.Errorf("BLOCK_JOB_COMPLETED %v, want j1's with error boom", e)
	}
	if e := rec.last("BLOCK_JOB_CANCELLED"); e["device"] != "j2" {
		t.Errorf("BLOCK_JOB_CANCELLED %v, want j2's", e)
	}
}
