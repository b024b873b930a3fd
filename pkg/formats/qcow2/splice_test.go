//go:build linux

package qcow2

import (
	"bytes"
	"context"
	"errors"
	"io"
	"path/filepath"
	"testing"

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
