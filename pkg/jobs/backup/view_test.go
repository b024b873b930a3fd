package backup_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"sync"
	"syscall"
	"testing"

	"github.com/blockd/blockd/pkg/block"
	"github.com/blockd/blockd/pkg/block/blocktest"
	_ "github.com/blockd/blockd/pkg/formats/snapshotaccess"
)

// openView puts a copy-before-write filter (extra options in cbw) over
// the fixture's source with the user's writes going through it, and a
// snapshot-access node over the filter; it returns the user's new root
// and a reader of the view.
func openView(t *testing.T, g *block.Graph, cbw map[string]any) (*block.Root, *block.Root) {
	t.Helper()
	o := map[string]any{"driver": "copy-before-write", "node-name": "cbw", "file": "src", "target": "tgt"}
	for k, v := range cbw {
		o[k] = v
	}
	raw, _ := json.Marshal(o)
	f := blocktest.Open(t, g, string(raw))
	user := blocktest.NewRoot(t, f, block.PermConsistentRead|block.PermWrite, block.PermAll)
	v := blocktest.Open(t, g, `{"driver":"snapshot-access","node-name":"view","file":"cbw","discard":"unmap"}`)
	return user, blocktest.NewRoot(t, v, block.PermConsistentRead|block.PermWrite, block.PermAll)
}

// TestViewPointInTime: whatever the order of the user's writes (the
// same clusters again, unaligned, straddling clusters) and the view's
// reads running beside them, the view always reads the source as it
// was when the filter went in.
func TestViewPointInTime(t *testing.T) {
	ctx := context.Background()
	g, _, start := fixture(t)
	user, view := openView(t, g, nil)
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			step := int64(50021 + 7919*w)
			p := bytes.Repeat([]byte{byte(0x60 + w)}, int(step))
			for round := range 3 {
				for off := int64(round*4099) % size; off < size; off += 3 * step {
					n := min(step, size-off)
					if err := user.WriteAt(ctx, p[:n], off, 0); err != nil {
						t.Error(err)
						return
					}
				}
			}
		}()
	}
	for r := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 96<<10)
			for round := range 4 {
				for off := int64((r*3+round)*12345) % size; off < size; off += int64(len(buf)) {
					n := min(int64(len(buf)), size-off)
					if err := view.ReadAt(ctx, buf[:n], off, 0); err != nil {
						t.Error(err)
						return
					}
					if !bytes.Equal(buf[:n], start[off:off+n]) {
						i := 0
						for buf[i] == start[off+int64(i)] {
							i++
						}
						t.Errorf("the view at %d changed under a write: at %d it reads %#x, was %#x", off, off+int64(i), buf[i], start[off+int64(i)])
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	got := make([]byte, size)
	if err := view.ReadAt(ctx, got, 0, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, start) {
		t.Error("the view after the writes is not the source as it was")
	}
}

// TestViewAccess: with a bitmap only its clusters are readable; a
// discard drops whole clusters inside its range only; writes to the
// view are refused.
func TestViewAccess(t *testing.T) {
	ctx := context.Background()
	g, _, start := fixture(t)
	bm, err := g.Lookup("src").AddDirtyBitmap("b0", 64<<10)
	if err != nil {
		t.Fatal(err)
	}
	bm.Set(1<<20, 256<<10)
	_, view := openView(t, g, map[string]any{"bitmap": map[string]any{"node": "src", "name": "b0"}})
	buf := make([]byte, 64<<10)
	if err := view.ReadAt(ctx, buf, 0, 0); !errors.Is(err, syscall.EACCES) {
		t.Errorf("a read outside the bitmap: %v, want EACCES", err)
	}
	if err := view.ReadAt(ctx, buf, 1<<20, 0); err != nil || !bytes.Equal(buf, start[1<<20:1<<20+len(buf)]) {
		t.Errorf("a read inside the bitmap: %v", err)
	}
	// [1M+1, 1M+192K) covers whole clusters 64K..128K and 128K..192K.
	if err := view.Discard(ctx, 1<<20+1, 192<<10-1); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		off  int64
		want error
	}{{1 << 20, nil}, {1<<20 + 64<<10, syscall.EACCES}, {1<<20 + 128<<10, syscall.EACCES}, {1<<20 + 192<<10, nil}} {
		if err := view.ReadAt(ctx, buf, c.off, 0); !errors.Is(err, c.want) && (err != nil || c.want != nil) {
			t.Errorf("a read at %d after the discard: %v, want %v", c.off, err, c.want)
		}
	}
	if err := view.WriteAt(ctx, buf, 0, 0); !errors.Is(err, syscall.ENOTSUP) {
		t.Errorf("a write to the view: %v, want ENOTSUP", err)
	}
}
