//go:build linux

package qcow2

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/blockd/blockd/pkg/block"
	"github.com/blockd/blockd/pkg/block/blocktest"
)

// TestSpliceRead splices ranges of a qcow2 image qemu-io wrote (data,
// backing data, a zero cluster, a compressed cluster) and checks the
// bytes against qemu-img's view, and that what has no bytes in a file
// sends the reader back to ReadAt.
func TestSpliceRead(t *testing.T) {
	dir := t.TempDir()
	base := filepath.Join(dir, "base.qcow2")
	top := filepath.Join(dir, "top.qcow2")
	qemuImg(t, "create", "-q", "-f", "qcow2", base, "4M")
	qemuIO(t, base, "write -c -P 0x33 3M 64k", "write -P 0x11 0 3M")
	qemuImg(t, "create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", top)
	qemuIO(t, top, "write -P 0x22 64k 1M", "write -z 2M 64k")
	want := rawContents(t, top)

	g := newGraph()
	_, r := openImage(t, g, "top", top, nil)

	pr, pw := blocktest.Pipe(t)
	ctx := context.Background()
	tests := []struct {
		name     string
		off      int64
		n        int
		noSplice bool
	}{
		{"top's data", 64 << 10, 512 << 10, false},
		{"backing data, then top's", 0, 256 << 10, false},
		{"a zero cluster", 2<<20 - 64<<10, 256 << 10, true},
		{"a compressed cluster in the backing", 3 << 20, 64 << 10, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			k, err := r.SpliceRead(ctx, pw, tc.off, tc.n)
			got := make([]byte, k)
			if _, rerr := io.ReadFull(pr, got); rerr != nil {
				t.Fatal(rerr)
			}
			if tc.noSplice {
				if !errors.Is(err, block.ErrNoSplice) {
					t.Fatalf("moved %d: %v, want ErrNoSplice", k, err)
				}
				return
			}
			if err != nil || k != tc.n {
				t.Fatalf("moved %d of %d: %v", k, tc.n, err)
			}
			if !bytes.Equal(got, want[tc.off:tc.off+int64(tc.n)]) {
				t.Fatalf("spliced bytes differ from qemu-img's: %s", firstDiff(got, want[tc.off:tc.off+int64(tc.n)]))
			}
		})
	}
}

// TestSpliceWrite writes ranges from a pipe into a qcow2 image over a
// backing file (new clusters, partial clusters whose rest comes from the
// backing, clusters written in place, a zero cluster, a compressed one)
// and checks the image against the same writes qemu-io made into a copy:
// qemu-img compare and check are the judges.
func TestSpliceWrite(t *testing.T) {
	dir := t.TempDir()
	base := filepath.Join(dir, "base.qcow2")
	top := filepath.Join(dir, "top.qcow2")
	ref := filepath.Join(dir, "ref.qcow2")
	qemuImg(t, "create", "-q", "-f", "qcow2", base, "8M")
	qemuIO(t, base, "write -P 0x11 0 8M")
	for _, img := range []string{top, ref} {
		qemuImg(t, "create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", img)
		qemuIO(t, img, "write -P 0x22 1M 1M", "write -z 3M 128k", "write -c -P 0x44 4M 64k")
	}
	writes := []struct {
		name    string
		off     int64
		n       int
		spliced bool // false: the pipe path must refuse it (ErrNoSplice)
	}{
		{"new clusters", 5 << 20, 1 << 20, true},
		{"in place", 1<<20 + 64<<10, 256 << 10, true},
		{"part of a cluster over backing data", 6<<20 + 4096, 8192, true},
		{"unaligned run across clusters", 7<<20 - 512, 200<<10 + 1024, true},
		{"over a zero cluster", 3<<20 + 32<<10, 64 << 10, true},
		{"into a compressed cluster", 4<<20 + 4096, 4096, true},
		{"across the allocated and new", 2<<20 - 64<<10, 512 << 10, true},
	}
	g := newGraph()
	_, r := openImage(t, g, "top", top, nil)
	if !r.CanSpliceWrite(0, 64<<10) {
		t.Fatal("CanSpliceWrite = false on a qcow2 image over a file")
	}
	pr, pw := blocktest.Pipe(t)
	ctx := context.Background()
	for i, w := range writes {
		data := bytes.Repeat([]byte{byte(0x50 + i)}, w.n)
		if _, err := unix.Write(pw, data); err != nil {
			t.Fatal(err)
		}
		if err := r.SpliceWrite(ctx, int(pr.Fd()), w.off, w.n, 0); err != nil {
			t.Fatalf("%s: %v", w.name, err)
		}
		qemuIO(t, ref, fmt.Sprintf("write -P 0x%x %d %d", 0x50+i, w.off, w.n))
	}
	if err := r.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	closeImage(t, g, r, "top")
	qemuCheck(t, top, false)
	qemuImg(t, "compare", "-f", "qcow2", "-F", "qcow2", top, ref)
}

// TestSpliceWriteDirect: a qcow2 image whose file bypasses the page cache
// takes no writes from a pipe, and says so before the pipe is filled.
func TestSpliceWriteDirect(t *testing.T) {
	dir := t.TempDir()
	img := filepath.Join(dir, "img.qcow2")
	qemuImg(t, "create", "-q", "-f", "qcow2", img, "1M")
	g := newGraph()
	_, r := openImage(t, g, "img", img, map[string]any{"cache": map[string]any{"direct": true}})
	if r.CanSpliceWrite(0, 64<<10) {
		t.Fatal("CanSpliceWrite = true with cache.direct")
	}
	pr, _ := blocktest.Pipe(t)
	if err := r.SpliceWrite(context.Background(), int(pr.Fd()), 0, 64<<10, 0); !errors.Is(err, block.ErrNoSplice) {
		t.Fatalf("SpliceWrite with cache.direct: %v, want ErrNoSplice", err)
	}
}
