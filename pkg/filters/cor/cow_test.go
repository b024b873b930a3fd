package cor_test

import (
	"context"
	"fmt"
	"sync"

	"github.com/blockd/blockd/pkg/block"
)

// clusterCOW is a test format with clusters: data in "file", a
// per-cluster allocation map in memory, unallocated reads from
// "backing". It accepts only whole-cluster writes and counts them per
// cluster, so tests can see that copy-on-read copies whole clusters, and
// each only once.
type clusterCOW struct {
	file, backing *block.Child
	cluster       int64

	mu     sync.Mutex
	alloc  []bool
	writes []int
}

type clusterCOWOptions struct {
	File    block.NodeRef        `json:"file"`
	Backing *block.NodeRefOrNull `json:"backing,omitempty"`
	Cluster int64                `json:"cluster"`
}

func openClusterCOW(ctx context.Context, o *block.Opener, opts *clusterCOWOptions) (block.Impl, error) {
	f, err := o.Attach(ctx, "file", opts.File, block.RoleImage)
	if err != nil {
		return nil, err
	}
	n := (f.Size() + opts.Cluster - 1) / opts.Cluster
	c := &clusterCOW{file: f, cluster: opts.Cluster, alloc: make([]bool, n), writes: make([]int, n)}
	if opts.Backing != nil && !opts.Backing.Null {
		if c.backing, err = o.Attach(ctx, "backing", opts.Backing.NodeRef, block.RoleCOW); err != nil {
			return nil, err
		}
	}
	return c, nil
}

func init() {
	block.Register("cortest-cow", block.KindFormat, openClusterCOW)
}

func (c *clusterCOW) Caps() block.Caps {
	return block.Caps{BlockStatus: true, Limits: block.Limits{OptimalTransfer: c.cluster}}
}

func (c *clusterCOW) Size(ctx context.Context) (int64, error) { return c.file.Size(), nil }

func (c *clusterCOW) allocated(i int64) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.alloc[i]
}

func (c *clusterCOW) ReadAt(ctx context.Context, p []byte, off int64, f block.Flags) error {
	for len(p) > 0 {
		i := off / c.cluster
		k := min(int64(len(p)), (i+1)*c.cluster-off)
		var err error
		switch {
		case c.allocated(i):
			err = c.file.ReadAt(ctx, p[:k], off, f)
		case c.backing != nil:
			err = c.backing.ReadAt(ctx, p[:k], off, f)
		default:
			clear(p[:k])
		}
		if err != nil {
			return err
		}
		p, off = p[k:], off+k
	}
	return nil
}

func (c *clusterCOW) WriteAt(ctx context.Context, p []byte, off int64, f block.Flags) error {
	if off%c.cluster != 0 || int64(len(p))%c.cluster != 0 {
		return fmt.Errorf("cortest-cow: write of %d bytes at %d is not whole clusters", len(p), off)
	}
	if err := c.file.WriteAt(ctx, p, off, f); err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for i := off / c.cluster; i < (off+int64(len(p)))/c.cluster; i++ {
		c.alloc[i] = true
		c.writes[i]++
	}
	return nil
}

func (c *clusterCOW) Zero(ctx context.Context, off, n int64, f block.Flags) error {
	return block.ErrNotSupported
}
func (c *clusterCOW) Discard(ctx context.Context, off, n int64) error { return nil }
func (c *clusterCOW) Flush(ctx context.Context) error                 { return c.file.Flush(ctx) }

func (c *clusterCOW) BlockStatus(ctx context.Context, off, n int64) (block.Extent, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	first := c.alloc[off/c.cluster]
	end := off + n
	for i := off/c.cluster + 1; i*c.cluster < end; i++ {
		if c.alloc[i] != first {
			end = i * c.cluster
			break
		}
	}
	if !first {
		return block.Extent{Len: end - off}, nil
	}
	return block.Extent{Len: end - off, Status: block.StatusData | block.StatusAllocated | block.StatusOffsetValid, Offset: off, Child: c.file}, nil
}

func (c *clusterCOW) Truncate(ctx context.Context, size int64, exact bool) error {
	return block.ErrNotSupported
}
func (c *clusterCOW) Close() error { return nil }

// writeCounts is how often each cluster was written.
func (c *clusterCOW) writeCounts() []int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]int(nil), c.writes...)
}
