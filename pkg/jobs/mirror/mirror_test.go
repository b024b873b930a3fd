package mirror_test

import (
	"bytes"
	"context"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/blockd/blockd/pkg/block"
	"github.com/blockd/blockd/pkg/block/blocktest"
	"github.com/blockd/blockd/pkg/jobs"
	"github.com/blockd/blockd/pkg/jobs/mirror"
)

type discard struct{}

func (discard) Emit(string, any) {}

// waitFor polls a job's state: the engine sends no event the test could
// wait on without a QMP server.
func waitFor(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// TestMirrorUnderWrites is the engine's central promise: however writes
// race the copies (same ranges, unaligned, while a copy of the range is in
// flight), once the job completes the target holds exactly what the
// source holds, and the source's user now writes the target.
func TestMirrorUnderWrites(t *testing.T) {
	for _, mode := range []mirror.CopyMode{"background", "write-blocking"} {
		t.Run(string(mode), func(t *testing.T) {
			g := blocktest.NewGraph()
			blocktest.Open(t, g, `{"driver":"blocktest-mem","node-name":"src","size":8388608,"pattern":17}`)
			blocktest.Open(t, g, `{"driver":"blocktest-mem","node-name":"tgt","size":8388608}`)
			mirrorUnderWrites(t, g, mode, 100*time.Microsecond)
		})
	}
}

// mirrorUnderWrites mirrors g's node src (8 MiB) into tgt while four
// users write src, each pausing for pace between writes, and checks the
// target against the source.
func mirrorUnderWrites(t *testing.T, g *block.Graph, mode mirror.CopyMode, pace time.Duration) {
	ctx := context.Background()
	const size = 8 << 20
	src := g.Lookup("src")
	user := blocktest.NewRoot(t, src, block.PermConsistentRead|block.PermWrite, block.PermConsistentRead|block.PermWrite|block.PermWriteUnchanged)
	r := jobs.NewRunner(g, discard{}, nil, nil)
	j, err := r.Start(ctx, "m", "mirror", mirror.New(mirror.Args{Device: "src", Target: "tgt", Sync: mirror.SyncFull,
		CopyMode: mode, Unmap: true, ZeroTarget: true, Granularity: 4096, BufSize: 256 << 10}),
		jobs.Options{BlockJob: true, AutoFinalize: true, AutoDismiss: true, OnError: jobs.OnErrorReport})
	if err != nil {
		t.Fatal(err)
	}
	var stop atomic.Bool
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func(seed uint64) {
			defer wg.Done()
			rnd := rand.New(rand.NewPCG(seed, 1))
			for !stop.Load() {
				n := 1 + rnd.IntN(20000)
				off := rnd.Int64N(size - int64(n))
				p := bytes.Repeat([]byte{byte(rnd.IntN(255) + 1)}, n)
				if err := user.WriteAt(ctx, p, off, 0); err != nil {
					t.Error(err)
					return
				}
				// A client's pace, not a spin: unaligned writes
				// leave partial granules for the job to copy.
				time.Sleep(pace)
			}
		}(uint64(w))
	}
	waitFor(t, "READY", func() bool {
		if st := j.Status(); st != jobs.Ready && st != jobs.Running && st != jobs.Created {
			t.Fatalf("job is %v before READY: %v", st, j.Err())
		}
		return j.Status() == jobs.Ready
	})
	time.Sleep(50 * time.Millisecond) // keep writing in READY
	stop.Store(true)
	wg.Wait()
	want := make([]byte, size)
	if err := user.ReadAt(ctx, want, 0, 0); err != nil {
		t.Fatal(err)
	}
	if err := j.Complete(); err != nil {
		t.Fatal(err)
	}
	j.Wait()
	r.Close()
	if e := j.Err(); e != nil {
		t.Fatalf("job failed: %v", e)
	}
	if got := user.Node().Name(); got != "tgt" {
		t.Fatalf("the user was not moved to the target: it uses %s", got)
	}
	got := make([]byte, size)
	if err := user.ReadAt(ctx, got, 0, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		for i := range got {
			if got[i] != want[i] {
				t.Fatalf("target differs from the source first at byte %d", i)
			}
		}
	}
}
