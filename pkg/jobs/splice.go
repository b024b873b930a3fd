package jobs

import (
	"context"
	"errors"

	"github.com/blockd/blockd/pkg/block"
	"github.com/blockd/blockd/pkg/kpipe"
)

// SpliceCopier copies ranges between two roots through kernel pipes
// where both ends can (block.Splicer on the source, block.SpliceWriter
// on the target): the source's page cache pages go into the pipe by
// reference, and the target takes them on into its socket (an NBD node)
// or its file's page cache (file, raw, qcow2), so the bytes never pass
// through blockd's memory, where ReadAt and WriteAt copy each one twice.
// A job's copies share one, with one pipe per copy in flight. Zeroes
// stored as data are copied as data (the buffer path finds and writes
// them as zeroes), as QEMU's jobs copy them.
type SpliceCopier struct {
	pipes *kpipe.Pool
}

// splicePipeBytes is the pipe size asked for: jobs copy up to 1 MiB at
// once.
const splicePipeBytes = 1 << 20

// NewSpliceCopier keeps up to parallel empty pipes; Close them.
func NewSpliceCopier(parallel int) *SpliceCopier {
	return &SpliceCopier{pipes: kpipe.NewPool(parallel, splicePipeBytes)}
}

// Copy copies [off, off+n) from src to dst through a pipe. done false:
// nothing was written (a range the source holds as zeroes or compressed,
// a target that must see the data, no pipe to be had), and the caller
// copies it through a buffer, where zeroes are found and read errors
// reported. done true with an error: the write failed.
func (s *SpliceCopier) Copy(ctx context.Context, src, dst *block.Root, off int64, n int) (done bool, err error) {
	if s == nil || !dst.CanSpliceWrite(off, n) {
		return false, nil
	}
	p := s.pipes.Get()
	if p == nil {
		return false, nil
	}
	if n > p.Size {
		s.pipes.Put(p)
		return false, nil
	}
	moved, err := src.SpliceRead(ctx, p.W, off, n)
	if err != nil || moved != n {
		p.Close() // it may hold bytes
		return false, nil
	}
	if err := dst.SpliceWrite(ctx, p.R, off, n, 0); err != nil {
		p.Close()
		return !errors.Is(err, block.ErrNoSplice), err
	}
	s.pipes.Put(p)
	return true, nil
}

// Close closes the pipes kept.
func (s *SpliceCopier) Close() { s.pipes.Close() }
