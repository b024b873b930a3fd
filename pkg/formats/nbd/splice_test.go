//go:build linux

package nbd_test

import (
	"bytes"
	"context"
	"errors"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/blockd/blockd/pkg/block"
	"github.com/blockd/blockd/pkg/block/blocktest"
	"github.com/blockd/blockd/pkg/nbd"
	"github.com/blockd/blockd/pkg/nbd/nbdtest"
)

// fillPipe returns a pipe's read end holding data (a test's pipe, closed
// with it).
func fillPipe(t *testing.T, data []byte) int {
	t.Helper()
	r, w := blocktest.Pipe(t)
	for b := data; len(b) > 0; {
		k, err := unix.Write(w, b)
		if err != nil {
			t.Fatal(err)
		}
		b = b[k:]
	}
	return int(r.Fd())
}

// pipeHolds returns how many bytes a pipe holds.
func pipeHolds(t *testing.T, fd int) int {
	t.Helper()
	n, err := unix.IoctlGetInt(fd, unix.TIOCINQ) // FIONREAD
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestSpliceWrite: a write whose data comes from a pipe lands where
// WriteAt would put it, leaves the pipe empty, and is counted and marked
// in the node's dirty bitmaps as a write; a node with detect-zeroes
// refuses it before touching the pipe.
func TestSpliceWrite(t *testing.T) {
	ctx := context.Background()
	mem := nbdtest.NewMem(4<<20, 4096)
	sock, _ := serve(t, mem, nbd.ExportOptions{Name: "e", Writable: true})
	n, r := open(t, sock, "e", "", block.PermConsistentRead|block.PermWrite)
	bm, err := n.AddDirtyBitmap("b", 64<<10)
	if err != nil {
		t.Fatal(err)
	}
	data := bytes.Repeat([]byte("0123456789abcdef"), (1<<20)/16)
	pipe := fillPipe(t, data)
	const off = 1 << 20
	if !r.CanSpliceWrite(off, len(data)) {
		t.Fatal("CanSpliceWrite = false for an nbd node")
	}
	if err := r.SpliceWrite(ctx, pipe, off, len(data), 0); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(data))
	if err := r.ReadAt(ctx, got, off, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Error("data read back differs from the data spliced")
	}
	if k := pipeHolds(t, pipe); k != 0 {
		t.Errorf("pipe still holds %d bytes after the write", k)
	}
	if c := bm.Count(); c != int64(len(data)) {
		t.Errorf("dirty bitmap counts %d bytes, want %d", c, len(data))
	}
	if ops := n.Stats.WrOps.Load(); ops != 1 {
		t.Errorf("node counts %d writes, want 1", ops)
	}

	dz := blocktest.Open(t, blocktest.NewGraph(), nodeJSON(sock, "e", `,"detect-zeroes":"on"`))
	rz := blocktest.NewRoot(t, dz, block.PermConsistentRead|block.PermWrite, block.PermAll)
	if rz.CanSpliceWrite(0, 4096) {
		t.Error("CanSpliceWrite = true with detect-zeroes on")
	}
	pipe = fillPipe(t, make([]byte, 4096))
	if err := rz.SpliceWrite(ctx, pipe, 0, 4096, 0); !errors.Is(err, block.ErrNoSplice) {
		t.Errorf("SpliceWrite with detect-zeroes: %v, want ErrNoSplice", err)
	}
	if k := pipeHolds(t, pipe); k != 4096 {
		t.Errorf("pipe holds %d bytes after a refused write, want its 4096", k)
	}
}

// TestSpliceWriteLostConnection: a write from a pipe to a server that
// went away fails with EIO, as WriteAt does, and does not hang.
func TestSpliceWriteLostConnection(t *testing.T) {
	ctx := context.Background()
	mem := nbdtest.NewMem(1<<20, 4096)
	sock, srv := serve(t, mem, nbd.ExportOptions{Name: "e", Writable: true})
	_, r := open(t, sock, "e", "", block.PermConsistentRead|block.PermWrite)
	srv.Close()
	pipe := fillPipe(t, make([]byte, 64<<10))
	if err := r.SpliceWrite(ctx, pipe, 0, 64<<10, 0); !errors.Is(err, syscall.EIO) {
		t.Fatalf("SpliceWrite after the server went away: %v, want EIO", err)
	}
}
