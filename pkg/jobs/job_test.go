package jobs

import (
	"context"
	"errors"
	"runtime"
	"strings"
	"sync"
	"testing"

	"github.com/blockd/blockd/pkg/block"
)

type recorder struct {
	mu     sync.Mutex
	events []string
}

func (r *recorder) Emit(name string, data any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if m, ok := data.(map[string]any); ok && name == "JOB_STATUS_CHANGE" {
		name = m["status"].(string)
	}
	r.events = append(r.events, name)
}

func (r *recorder) String() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return strings.Join(r.events, ",")
}

// stepBody runs until told to stop, yielding at every step.
type stepBody struct {
	step chan struct{}
	fail error
}

func (b *stepBody) Run(ctx context.Context, j *Job) error {
	for range b.step {
		if err := j.Yield(ctx); err != nil {
			return err
		}
	}
	return b.fail
}

func newRunner() (*Runner, *recorder) {
	rec := &recorder{}
	return NewRunner(block.NewGraph(nil, nil), rec, nil), rec
}

// TestLifecycles pins the JOB_STATUS_CHANGE sequences of QEMU 7.2 for the
// ways a job can end.
func TestLifecycles(t *testing.T) {
	tests := []struct {
		name string
		opts Options
		// act drives the job; the body's step channel is closed after it.
		act  func(j *Job, step chan struct{})
		fail error
		want string
	}{
		{"success", Options{AutoFinalize: true, AutoDismiss: true}, func(j *Job, s chan struct{}) {}, nil,
			"created,running,waiting,pending,concluded,null"},
		{"no auto-dismiss", Options{AutoFinalize: true}, func(j *Job, s chan struct{}) {}, nil,
			"created,running,waiting,pending,concluded"},
		{"failure", Options{AutoFinalize: true, AutoDismiss: true, BlockJob: true}, func(j *Job, s chan struct{}) {}, errors.New("boom"),
			"created,running,aborting,BLOCK_JOB_COMPLETED,concluded,null"},
		{"cancel", Options{AutoFinalize: true, AutoDismiss: true, BlockJob: true}, func(j *Job, s chan struct{}) { j.Cancel(false) }, nil,
			"created,running,aborting,BLOCK_JOB_CANCELLED,concluded,null"},
		{"pause, resume", Options{AutoFinalize: true, AutoDismiss: true}, func(j *Job, s chan struct{}) {
			j.Pause()
			go func() { s <- struct{}{} }() // reaches Yield and parks
			waitStatus(j, Paused)
			j.Resume()
		}, nil, "created,running,paused,running,waiting,pending,concluded,null"},
		{"cancel while paused", Options{AutoFinalize: true, AutoDismiss: true, BlockJob: true}, func(j *Job, s chan struct{}) {
			j.Pause()
			go func() { s <- struct{}{} }()
			waitStatus(j, Paused)
			j.Cancel(true)
		}, nil, "created,running,paused,running,aborting,BLOCK_JOB_CANCELLED,concluded,null"},
		{"paused but never yielding", Options{AutoFinalize: true}, func(j *Job, s chan struct{}) { j.Pause() }, nil,
			"created,running,waiting,pending,concluded"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, rec := newRunner()
			step := make(chan struct{})
			j, err := r.Start("j", "test", &stepBody{step: step, fail: tt.fail}, tt.opts)
			if err != nil {
				t.Fatal(err)
			}
			tt.act(j, step)
			close(step)
			j.Wait()
			r.Close()
			if got := rec.String(); got != tt.want {
				t.Errorf("events %s\n want %s", got, tt.want)
			}
		})
	}
}

func waitStatus(j *Job, s Status) {
	j.mu.Lock()
	defer j.mu.Unlock()
	for j.status != s {
		j.mu.Unlock()
		runtime.Gosched()
		j.mu.Lock()
	}
}

func TestVerbErrors(t *testing.T) {
	r, _ := newRunner()
	step := make(chan struct{})
	j, _ := r.Start("j", "test", &stepBody{step: step}, Options{AutoFinalize: true})
	if err := j.Resume(); err == nil || err.Error() != "Can't resume a job that was not paused" {
		t.Errorf("resume: %v", err)
	}
	j.Pause()
	if err := j.Pause(); err == nil || err.Error() != "Job is already paused" {
		t.Errorf("second pause: %v", err)
	}
	if err := j.Dismiss(); err == nil || err.Error() != "Job 'j' in state 'running' cannot accept command verb 'dismiss'" {
		t.Errorf("dismiss: %v", err)
	}
	j.Resume()
	close(step)
	j.Wait()
	if err := j.Pause(); err == nil || err.Error() != "Job 'j' in state 'concluded' cannot accept command verb 'pause'" {
		t.Errorf("pause concluded: %v", err)
	}
	r.Close()
}
