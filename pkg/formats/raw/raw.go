// Package raw is the raw format driver: the image is the file's bytes,
// optionally a window of them (offset and size).
//
// As QEMU's raw format does, it fires the debug events read_aio before
// every read and write_aio before every write into its file (a blkdebug
// node there arms its rules on them); write-zeroes, discard and flush
// fire none of their own.
package raw

import (
	"context"
	"fmt"

	"github.com/blockd/blockd/pkg/block"
)

// Options are BlockdevOptionsRaw's members.
type Options struct {
	File   block.NodeRef `json:"file"`
	Offset *int64        `json:"offset,omitempty"`
	Size   *int64        `json:"size,omitempty"`
}

type raw struct {
	file    *block.Child
	offset  int64
	size    int64 // -1: the file's size minus offset
	hasSize bool
}

func open(ctx context.Context, o *block.Opener, opts *Options) (block.Impl, error) {
	role := block.RoleFiltered | block.RolePrimary
	if opts.Offset != nil || opts.Size != nil {
		// A window of the file is not the file: the child holds data.
		role = block.RoleData | block.RolePrimary
	}
	c, err := o.Attach(ctx, "file", opts.File, role)
	if err != nil {
		return nil, err
	}
	d := &raw{file: c, size: -1}
	if opts.Offset != nil {
		if *opts.Offset < 0 {
			return nil, fmt.Errorf("Parameter 'offset' expects a non-negative value")
		}
		d.offset = *opts.Offset
	}
	if opts.Size != nil {
		if *opts.Size < 0 {
			return nil, fmt.Errorf("Parameter 'size' expects a non-negative value")
		}
		if *opts.Size%512 != 0 {
			return nil, fmt.Errorf("Specified size is not multiple of 512")
		}
		d.size, d.hasSize = *opts.Size, true
	}
	fsize := c.Size()
	if d.offset > fsize {
		return nil, fmt.Errorf("Offset (%d) cannot be greater than size of the containing file (%d)", d.offset, fsize)
	}
	if d.hasSize && d.offset+d.size > fsize {
		return nil, fmt.Errorf("The sum of offset (%d) and size (%d) has to be smaller or equal to the  actual size of the containing file (%d)", d.offset, d.size, fsize)
	}
	return d, nil
}

func (d *raw) Caps() block.Caps {
	c := d.file.Node().Caps()
	c.Limits.OptimalTransfer = 0
	c.Compressed = false // as QEMU's raw: it has no compressed writes
	return c
}

func (d *raw) Size(ctx context.Context) (int64, error) {
	if d.hasSize {
		return d.size, nil
	}
	return max(d.file.Size()-d.offset, 0), nil
}

func (d *raw) ReadAt(ctx context.Context, p []byte, off int64, f block.Flags) error {
	block.DebugEvent(d.file, block.DebugReadAIO)
	return d.file.ReadAt(ctx, p, off+d.offset, f)
}

// SpliceRead implements block.Splicer: the bytes are the file's, shifted.
func (d *raw) SpliceRead(ctx context.Context, pipe int, off int64, n int) (int, error) {
	block.DebugEvent(d.file, block.DebugReadAIO)
	return d.file.SpliceRead(ctx, pipe, off+d.offset, n)
}

// ReadNoWait implements block.NoWaitReader, like SpliceRead.
func (d *raw) ReadNoWait(ctx context.Context, p []byte, off int64) error {
	block.DebugEvent(d.file, block.DebugReadAIO)
	return d.file.ReadNoWait(ctx, p, off+d.offset)
}

func (d *raw) WriteAt(ctx context.Context, p []byte, off int64, f block.Flags) error {
	block.DebugEvent(d.file, block.DebugWriteAIO)
	return d.file.WriteAt(ctx, p, off+d.offset, f)
}

// SpliceWritable implements block.SpliceWriter: as the file can.
func (d *raw) SpliceWritable() bool { return d.file.SpliceWritable() }

// SpliceWrite implements block.SpliceWriter: the bytes go to the file,
// shifted.
func (d *raw) SpliceWrite(ctx context.Context, pipe int, off int64, n int, f block.Flags) error {
	block.DebugEvent(d.file, block.DebugWriteAIO)
	return d.file.SpliceWrite(ctx, pipe, off+d.offset, n, f)
}

func (d *raw) Zero(ctx context.Context, off, n int64, f block.Flags) error {
	return d.file.Zero(ctx, off+d.offset, n, f)
}

func (d *raw) Discard(ctx context.Context, off, n int64) error {
	return d.file.Discard(ctx, off+d.offset, n)
}

func (d *raw) Flush(ctx context.Context) error { return d.file.Flush(ctx) }

// BlockStatus maps the range onto the file, which knows the truth.
func (d *raw) BlockStatus(ctx context.Context, off, n int64) (block.Extent, error) {
	return block.Extent{Len: n, Status: block.StatusRecurse | block.StatusOffsetValid | block.StatusAllocated, Offset: off + d.offset, Child: d.file}, nil
}

func (d *raw) Truncate(ctx context.Context, size int64, exact bool) error {
	if d.hasSize {
		return fmt.Errorf("Cannot resize fixed-size raw disks")
	}
	return d.file.Truncate(ctx, size+d.offset, exact)
}

func (d *raw) Close() error { return nil }
