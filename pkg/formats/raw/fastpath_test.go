//go:build linux

package raw_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/blockd/blockd/pkg/block"
	"github.com/blockd/blockd/pkg/block/blocktest"
	_ "github.com/blockd/blockd/pkg/formats/file"
)

// TestSpliceRead moves ranges of a raw node over a real file into a pipe
// and checks the bytes, the window (offset) and the refusals that send a
// reader back to ReadAt.
func TestSpliceRead(t *testing.T) {
	path := filepath.Join(t.TempDir(), "disk.raw")
	data := make([]byte, 1<<20)
	for i := range data {
		data[i] = byte(i*13 + i>>9)
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	g := blocktest.NewGraph()
	open := func(name, extra string) *block.Root {
		n, err := blocktest.TryOpen(g, fmt.Sprintf(`{"driver":"raw","node-name":%q,%s"file":{"driver":"file","filename":%q}}`, name, extra, path))
		if err != nil {
			t.Fatal(err)
		}
		return blocktest.NewRoot(t, n, block.PermConsistentRead, block.PermAll)
	}
	whole := open("whole", "")
	window := open("window", `"offset":4096,"size":524288,`)
	// A filter that must see reads has no splice path.
	filtered, err := blocktest.TryOpen(g, fmt.Sprintf(`{"driver":"raw","node-name":"filtered","file":{"driver":"blocktest-filter","file":{"driver":"file","filename":%q}}}`, path))
	if err != nil {
		t.Fatal(err)
	}
	viaFilter := blocktest.NewRoot(t, filtered, block.PermConsistentRead, block.PermAll)

	r, w := blocktest.Pipe(t)

	ctx := context.Background()
	tests := []struct {
		name    string
		root    *block.Root
		off     int64
		n       int
		want    []byte
		wantErr error
	}{
		{"whole, unaligned", whole, 1000, 200 << 10, data[1000 : 1000+200<<10], nil},
		{"window shifts by the offset", window, 0, 256 << 10, data[4096 : 4096+256<<10], nil},
		{"window end", window, 512<<10 - 8192, 8192, data[4096+512<<10-8192 : 4096+512<<10], nil},
		{"past the end", whole, 1<<20 - 4096, 8192, nil, block.ErrOutOfRange},
		{"through a filter", viaFilter, 0, 4096, nil, block.ErrNoSplice},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			k, err := tc.root.SpliceRead(ctx, w, tc.off, tc.n)
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) || k != 0 {
					t.Fatalf("moved %d, err %v; want %v", k, err, tc.wantErr)
				}
				return
			}
			if err != nil || k != tc.n {
				t.Fatalf("moved %d of %d: %v", k, tc.n, err)
			}
			got := make([]byte, k)
			if _, err := io.ReadFull(r, got); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, tc.want) {
				t.Fatal("pipe holds other bytes than the node")
			}
		})
	}
}

// TestReadNoWait reads cached data of a raw node over a file without
// waiting, and checks the cases that must send the reader to ReadAt.
func TestReadNoWait(t *testing.T) {
	path := filepath.Join(t.TempDir(), "disk.raw")
	data := make([]byte, 1<<20)
	for i := range data {
		data[i] = byte(i*5 + i>>10)
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	// Read it once so that the page cache holds it.
	if _, err := os.ReadFile(path); err != nil {
		t.Fatal(err)
	}
	g := blocktest.NewGraph()
	open := func(opts string) *block.Root {
		n, err := blocktest.TryOpen(g, fmt.Sprintf(opts, path))
		if err != nil {
			t.Fatal(err)
		}
		return blocktest.NewRoot(t, n, block.PermConsistentRead, block.PermAll)
	}
	plain := open(`{"driver":"raw","node-name":"plain","offset":512,"file":{"driver":"file","filename":%q}}`)
	filtered := open(`{"driver":"raw","node-name":"filtered","file":{"driver":"blocktest-filter","file":{"driver":"file","filename":%q}}}`)
	ctx := context.Background()

	p := make([]byte, 4096)
	if err := plain.ReadNoWait(ctx, p, 8192); err != nil {
		t.Fatalf("cached read: %v", err)
	}
	if !bytes.Equal(p, data[512+8192:512+8192+4096]) {
		t.Fatal("cached read returned other bytes")
	}
	if err := filtered.ReadNoWait(ctx, p, 0); !errors.Is(err, block.ErrWouldBlock) {
		t.Fatalf("through a filter: %v, want ErrWouldBlock", err)
	}
	if err := plain.ReadNoWait(ctx, p, int64(len(data))-512-1024); !errors.Is(err, block.ErrOutOfRange) {
		t.Fatalf("past the end: %v, want out of range", err)
	}
}

// TestSpliceWrite writes ranges of a raw node over a real file from a
// pipe and checks the file's bytes (the window shifts them), and the
// refusals that come before the pipe is touched.
func TestSpliceWrite(t *testing.T) {
	path := filepath.Join(t.TempDir(), "disk.raw")
	want := make([]byte, 1<<20)
	if err := os.WriteFile(path, want, 0o644); err != nil {
		t.Fatal(err)
	}
	g := blocktest.NewGraph()
	open := func(name, opts string) *block.Root {
		n, err := blocktest.TryOpen(g, fmt.Sprintf(opts, name, path))
		if err != nil {
			t.Fatal(err)
		}
		return blocktest.NewRoot(t, n, block.PermConsistentRead|block.PermWrite, block.PermAll)
	}
	whole := open("whole", `{"driver":"raw","node-name":%q,"file":{"driver":"file","filename":%q}}`)
	window := open("window", `{"driver":"raw","node-name":%q,"offset":4096,"size":524288,"file":{"driver":"file","filename":%q}}`)
	direct := open("direct", `{"driver":"raw","node-name":%q,"cache":{"direct":true},"file":{"driver":"file","filename":%q}}`)
	zeroes := open("zeroes", `{"driver":"raw","node-name":%q,"detect-zeroes":"on","file":{"driver":"file","filename":%q}}`)

	r, w := blocktest.Pipe(t)
	ctx := context.Background()
	tests := []struct {
		name    string
		root    *block.Root
		off     int64
		n       int
		fileOff int64 // where the bytes land in the file
		wantErr error
	}{
		{"whole, unaligned", whole, 1000, 200 << 10, 1000, nil},
		{"window shifts by the offset", window, 8192, 64 << 10, 4096 + 8192, nil},
		{"past the window's end", window, 512<<10 - 4096, 8192, 0, block.ErrOutOfRange},
		{"cache.direct", direct, 0, 4096, 0, block.ErrNoSplice},
		{"detect-zeroes", zeroes, 0, 4096, 0, block.ErrNoSplice},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			data := bytes.Repeat([]byte{byte(i + 1)}, tc.n)
			if tc.wantErr == nil {
				if _, err := unix.Write(w, data); err != nil {
					t.Fatal(err)
				}
			}
			err := tc.root.SpliceWrite(ctx, int(r.Fd()), tc.off, tc.n, 0)
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("err %v; want %v", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			copy(want[tc.fileOff:], data)
			got, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Fatal("the file holds other bytes than were written")
			}
		})
	}
}
