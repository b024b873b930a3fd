package backup_test

import (
	"bytes"
	"context"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/blockd/blockd/pkg/block"
	"github.com/blockd/blockd/pkg/block/blocktest"
	"github.com/blockd/blockd/pkg/jobs"
	"github.com/blockd/blockd/pkg/jobs/backup"
)

type discard struct{}

func (discard) Emit(string, any) {}

const size = 8 << 20

// fixture is a source of size bytes (a pattern on the first half, zeroes
// after) with a user that writes it, and an empty target.
func fixture(t *testing.T) (*block.Graph, *block.Root, []byte) {
	t.Helper()
	g := blocktest.NewGraph()
	src := blocktest.Open(t, g, `{"driver":"blocktest-mem","node-name":"src","size":8388608}`)
	blocktest.Open(t, g, `{"driver":"blocktest-mem","node-name":"tgt","size":8388608}`)
	user := blocktest.NewRoot(t, src, block.PermConsistentRead|block.PermWrite, block.PermAll)
	if err := user.WriteAt(context.Background(), bytes.Repeat([]byte{0x11}, size/2), 0, 0); err != nil {
		t.Fatal(err)
	}
	start := make([]byte, size)
	if err := user.ReadAt(context.Background(), start, 0, 0); err != nil {
		t.Fatal(err)
	}
	return g, user, start
}

func startBackup(t *testing.T, r *jobs.Runner, id string, a backup.Args, speed int64) *jobs.Job {
	t.Helper()
	j, err := r.Start(context.Background(), id, "backup", backup.New(a), jobs.Options{BlockJob: true,
		AutoFinalize: true, AutoDismiss: true, OnError: jobs.OnErrorReport, Speed: speed, StartDrained: true})
	if err != nil {
		t.Fatal(err)
	}
	return j
}

func readNode(t *testing.T, g *block.Graph, name string) []byte {
	t.Helper()
	r := blocktest.NewRoot(t, g.Lookup(name), block.PermConsistentRead, block.PermAll)
	buf := make([]byte, size)
	if err := r.ReadAt(context.Background(), buf, 0, 0); err != nil {
		t.Fatal(err)
	}
	return buf
}

// TestBackupPointInTime is the filter's promise: however the user's
// writes race the job's copies (unaligned, the same clusters, while a
// copy is in flight), the target ends with the source as it was when the
// job started.
func TestBackupPointInTime(t *testing.T) {
	ctx := context.Background()
	g, user, start := fixture(t)
	r := jobs.NewRunner(g, discard{}, nil, nil)
	j := startBackup(t, r, "b", backup.Args{Device: "src", Target: "tgt", Sync: backup.SyncFull,
		Perf: backup.Perf{MaxChunk: ptr(int64(64 << 10))}}, 0)
	// Writers sweep the disk from the end down, against the job's walk
	// up, in unaligned steps that straddle clusters, so that writes hit
	// clusters not yet copied, being copied and copied already.
	var stop atomic.Bool
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			step := int64(70001 + 9973*w)
			p := bytes.Repeat([]byte{byte(0x40 + w)}, int(step))
			for off := size - step - int64(w)*4096; !stop.Load(); off -= step {
				if off < 0 {
					off += size - step
				}
				if err := user.WriteAt(ctx, p, off, 0); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	j.Wait()
	stop.Store(true)
	wg.Wait()
	r.Close()
	if err := j.Err(); err != nil {
		t.Fatal(err)
	}
	if got := readNode(t, g, "tgt"); !bytes.Equal(got, start) {
		i := 0
		for got[i] == start[i] {
			i++
		}
		t.Fatalf("target differs from the source at job start first at byte %d", i)
	}
	if got := user.Node().Name(); got != "src" {
		t.Errorf("the user was not moved back to the source: it uses %s", got)
	}
}

func ptr[T any](v T) *T { return &v }

// TestBackupBitmapModes: what becomes of the sync bitmap, by bitmap-mode
// and outcome: writes during the job stay recorded in every case; what
// was recorded before is dropped only when the copy succeeded (or, with
// 'always', whatever was copied).
func TestBackupBitmapModes(t *testing.T) {
	for _, tc := range []struct {
		name   string
		sync   string
		mode   backup.BitmapMode
		cancel bool
		// dirty before: [0, 1M); written during the job: [7M, 7M+64k)
		want int64
	}{
		{"on-success/ok", backup.SyncBitmap, backup.BitmapOnSuccess, false, 64 << 10},
		{"on-success/cancelled", backup.SyncBitmap, backup.BitmapOnSuccess, true, 1<<20 + 64<<10},
		{"never/ok", backup.SyncBitmap, backup.BitmapNever, false, 1<<20 + 64<<10},
		{"always/ok", backup.SyncBitmap, backup.BitmapAlways, false, 64 << 10},
		// Everything but what was copied: the write's cluster (copied
		// first, then dirtied by the write) and maybe the first chunk,
		// which the job may have copied before the cancel came.
		{"always/cancelled/full", backup.SyncFull, backup.BitmapAlways, true, size},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			g, user, _ := fixture(t)
			bm, err := g.Lookup("src").AddDirtyBitmap("b0", 64<<10)
			if err != nil {
				t.Fatal(err)
			}
			bm.Set(0, 1<<20)
			r := jobs.NewRunner(g, discard{}, nil, nil)
			speed := int64(0)
			if tc.cancel {
				speed = 1 // the first chunk, then a wait for ever
			}
			mode := tc.mode
			j := startBackup(t, r, "b", backup.Args{Device: "src", Target: "tgt", Sync: backup.SyncMode(tc.sync),
				Bitmap: ptr("b0"), BitmapMode: &mode, Perf: backup.Perf{MaxChunk: ptr(int64(64 << 10))}}, speed)
			if !bm.Busy() {
				t.Error("the bitmap is not busy while the job runs")
			}
			if err := user.WriteAt(ctx, bytes.Repeat([]byte{0x55}, 64<<10), 7<<20, 0); err != nil {
				t.Fatal(err)
			}
			if tc.cancel {
				if err := j.Cancel(true); err != nil {
					t.Fatal(err)
				}
			}
			j.Wait()
			r.Close()
			got := bm.Count()
			if tc.name == "always/cancelled/full" && got == tc.want-64<<10 {
				got = tc.want // the first chunk made it
			}
			if got != tc.want || bm.Busy() {
				t.Errorf("bitmap count %d busy %v, want %d and not busy", got, bm.Busy(), tc.want)
			}
			if n := len(g.Lookup("src").DirtyBitmaps()); n != 1 {
				t.Errorf("%d bitmaps left on the source, want only b0", n)
			}
		})
	}
}

// TestBackupCompress: with compress the job writes the data compressed
// (whole clusters of the target) and zeroes as zeroes; a target that
// cannot compress is refused with qsd's message.
func TestBackupCompress(t *testing.T) {
	g, _, start := fixture(t)
	blocktest.Open(t, g, `{"driver":"blocktest-mem","node-name":"ctgt","size":8388608,"compressed":131072}`)
	r := jobs.NewRunner(g, discard{}, nil, nil)
	_, err := r.Start(context.Background(), "no", "backup", backup.New(backup.Args{Device: "src", Target: "tgt", Sync: backup.SyncFull, Compress: true}),
		jobs.Options{BlockJob: true, AutoFinalize: true, AutoDismiss: true, StartDrained: true})
	if err == nil || err.Error() != "Compression is not supported for this drive " {
		t.Fatalf("compressed backup to a target without compressed writes: %v", err)
	}
	j := startBackup(t, r, "b", backup.Args{Device: "src", Target: "ctgt", Sync: backup.SyncFull, Compress: true}, 0)
	j.Wait()
	r.Close()
	if err := j.Err(); err != nil {
		t.Fatal(err)
	}
	if got := readNode(t, g, "ctgt"); !bytes.Equal(got, start) {
		t.Fatal("target differs from the source")
	}
	m := g.Lookup("ctgt").Impl().(*blocktest.Mem)
	if m.CompressedWrites == 0 || m.CompressedWrites != m.Writes {
		t.Fatalf("%d compressed writes of %d", m.CompressedWrites, m.Writes)
	}
}
