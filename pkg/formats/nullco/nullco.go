// Package nullco is the null-co (and null-aio) protocol driver: a device of
// a given size that stores nothing. Reads return zeroes; with read-zeroes
// it also says so in block status, so tools treat it as sparse.
package nullco

import (
	"context"
	"time"

	"github.com/blockd/blockd/pkg/block"
)

// Options are BlockdevOptionsNull's members.
type Options struct {
	Size       *int64 `json:"size,omitempty"`
	LatencyNs  *int64 `json:"latency-ns,omitempty"`
	ReadZeroes *bool  `json:"read-zeroes,omitempty"`
}

const defaultSize = 1 << 30

type null struct {
	size       int64
	latency    time.Duration
	readZeroes bool
	name       string
}

func open(ctx context.Context, o *block.Opener, opts *Options) (block.Impl, error) {
	d := &null{size: defaultSize, name: "null-co://"}
	if opts.Size != nil {
		if *opts.Size < 0 {
			return nil, block.Errorf(block.ErrInvalid, "Parameter 'size' expects a non-negative value")
		}
		d.size = *opts.Size
	}
	if opts.LatencyNs != nil {
		if *opts.LatencyNs < 0 {
			return nil, block.Errorf(block.ErrInvalid, "latency-ns is invalid")
		}
		d.latency = time.Duration(*opts.LatencyNs)
	}
	d.readZeroes = opts.ReadZeroes != nil && *opts.ReadZeroes
	if d.size != defaultSize || d.readZeroes || d.latency != 0 {
		// Described by its options: the query layer prints a json: name.
		d.name = ""
	}
	return d, nil
}

func (d *null) Caps() block.Caps {
	return block.Caps{Zero: true, Discard: true, FUA: true, BlockStatus: true}
}

func (d *null) Size(ctx context.Context) (int64, error) { return d.size, nil }

func (d *null) wait(ctx context.Context) error {
	if d.latency == 0 {
		return nil
	}
	t := time.NewTimer(d.latency)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// ReadAt returns zeroes either way: without read-zeroes qsd leaves the
// buffer as it was, but a buffer reused between clients must not leak.
func (d *null) ReadAt(ctx context.Context, p []byte, off int64, f block.Flags) error {
	clear(p)
	return d.wait(ctx)
}

func (d *null) WriteAt(ctx context.Context, p []byte, off int64, f block.Flags) error {
	return d.wait(ctx)
}

func (d *null) Zero(ctx context.Context, off, n int64, f block.Flags) error { return d.wait(ctx) }

func (d *null) Discard(ctx context.Context, off, n int64) error { return nil }

func (d *null) Flush(ctx context.Context) error { return nil }

func (d *null) BlockStatus(ctx context.Context, off, n int64) (block.Extent, error) {
	st := block.StatusAllocated | block.StatusOffsetValid
	if d.readZeroes {
		st |= block.StatusZero
	} else {
		st |= block.StatusData
	}
	return block.Extent{Len: n, Status: st, Offset: off}, nil
}

func (d *null) Truncate(ctx context.Context, size int64, exact bool) error {
	return block.Errorf(block.ErrNotSupported, "Image format driver does not support resize")
}

func (d *null) Close() error { return nil }

// Filename implements block.Filenamer: "null-co://", or "" when options
// make it a json: name.
func (d *null) Filename() string { return d.name }

// AllocatedSize implements block.AllocatedSizer.
func (d *null) AllocatedSize() (int64, error) { return 0, nil }
