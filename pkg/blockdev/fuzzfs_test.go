package blockdev

import (
	"context"
	"fmt"
	"sync"

	"github.com/blockd/blockd/pkg/block"
)

// The fuzz target must not reach the host's files: a fuzzed blockdev-add
// or block_resize would open, create or truncate whatever path it names.
// Its test binary links no file driver and registers this one under the
// name "file" instead: files live in memory, in fuzzFS, and none grows
// past fuzzFileLimit.

const fuzzFileLimit = 64 << 20

type fuzzFile struct {
	mu   sync.Mutex
	data []byte
}

// fuzzFS maps file names to files; each fuzz input starts it afresh.
var fuzzFS = struct {
	sync.Mutex
	m map[string]*fuzzFile
}{m: map[string]*fuzzFile{}}

func resetFuzzFS(files map[string][]byte) {
	fuzzFS.Lock()
	defer fuzzFS.Unlock()
	fuzzFS.m = map[string]*fuzzFile{}
	for name, b := range files {
		fuzzFS.m[name] = &fuzzFile{data: append([]byte(nil), b...)}
	}
}

type fuzzFileOptions struct {
	Filename string `json:"filename"`
}

type fuzzFileNode struct {
	*fuzzFile
	name string
}

func openFuzzFile(ctx context.Context, o *block.Opener, opts *fuzzFileOptions) (block.Impl, error) {
	fuzzFS.Lock()
	f := fuzzFS.m[opts.Filename]
	fuzzFS.Unlock()
	if f == nil {
		return nil, fmt.Errorf("Could not open '%s': No such file or directory", opts.Filename)
	}
	return &fuzzFileNode{fuzzFile: f, name: opts.Filename}, nil
}

type fuzzCreateOptions struct {
	Filename string `json:"filename"`
	Size     uint64 `json:"size"`
}

func createFuzzFile(ctx context.Context, g *block.Graph, opts *fuzzCreateOptions) error {
	if opts.Size > fuzzFileLimit {
		return block.Errorf(block.ErrNoSpace, "fuzz file: %d bytes is past the limit", opts.Size)
	}
	fuzzFS.Lock()
	defer fuzzFS.Unlock()
	fuzzFS.m[opts.Filename] = &fuzzFile{data: make([]byte, opts.Size)}
	return nil
}

func init() {
	block.Register("file", block.KindProtocol, openFuzzFile)
	block.RegisterCreate("file", createFuzzFile)
}

func (f *fuzzFileNode) Filename() string { return f.name }
func (f *fuzzFileNode) Close() error     { return nil }
func (f *fuzzFileNode) Flush(ctx context.Context) error {
	return nil
}

func (f *fuzzFileNode) Caps() block.Caps {
	return block.Caps{Zero: true, Discard: true}
}

func (f *fuzzFileNode) Size(ctx context.Context) (int64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return int64(len(f.data)), nil
}

func (f *fuzzFileNode) ReadAt(ctx context.Context, p []byte, off int64, fl block.Flags) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	if off < int64(len(f.data)) {
		n = copy(p, f.data[off:])
	}
	clear(p[n:])
	return nil
}

// growLocked makes the file at least end bytes long.
func (f *fuzzFile) growLocked(end int64) error {
	if end > fuzzFileLimit {
		return block.Errorf(block.ErrNoSpace, "fuzz file: %d bytes is past the limit", end)
	}
	if end > int64(len(f.data)) {
		f.data = append(f.data, make([]byte, end-int64(len(f.data)))...)
	}
	return nil
}

func (f *fuzzFileNode) WriteAt(ctx context.Context, p []byte, off int64, fl block.Flags) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.growLocked(off + int64(len(p))); err != nil {
		return err
	}
	copy(f.data[off:], p)
	return nil
}

func (f *fuzzFileNode) Zero(ctx context.Context, off, n int64, fl block.Flags) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.growLocked(off + n); err != nil {
		return err
	}
	clear(f.data[off : off+n])
	return nil
}

func (f *fuzzFileNode) Discard(ctx context.Context, off, n int64) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if off < int64(len(f.data)) {
		clear(f.data[off:min(off+n, int64(len(f.data)))])
	}
	return nil
}

func (f *fuzzFileNode) BlockStatus(ctx context.Context, off, n int64) (block.Extent, error) {
	return block.Extent{Len: n, Status: block.StatusData | block.StatusAllocated}, nil
}

func (f *fuzzFileNode) Truncate(ctx context.Context, size int64, exact bool) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if size < int64(len(f.data)) {
		f.data = f.data[:size]
		return nil
	}
	return f.growLocked(size)
}
