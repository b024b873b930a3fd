package qcow2

import (
	"context"
	"encoding/binary"
	"fmt"
	"math/bits"

	"github.com/blockd/blockd/pkg/block"
)

// create implements blockdev-create for qcow2 on an existing node. It
// validates like qemu-img 7.2 (same defaults, same messages), then writes
// a minimal image (header, refcount table, one refcount block), opens it
// with the driver's own code and grows it to the requested size, which
// builds the L1 table and, if asked, preallocates.
func create(ctx context.Context, g *block.Graph, opts *CreateOptions) error {
	p, err := checkCreate(opts)
	if err != nil {
		return err
	}
	if opts.File.Name == "" {
		return block.Errorf(block.ErrNotSupported, "blockdev-create of qcow2 needs 'file' to name an existing node")
	}
	tx := g.Begin()
	n, err := g.FindNode(opts.File.Name)
	if err != nil {
		tx.Abort()
		return err
	}
	r, err := tx.NewRoot(n, block.RootOptions{
		Perm:   block.PermWrite | block.PermResize | block.PermConsistentRead,
		Shared: block.PermConsistentRead | block.PermWriteUnchanged,
	})
	if err != nil {
		tx.Abort()
		return err
	}
	if err := tx.Commit(); err != nil {
		return err
	}
	defer func() {
		tx := g.Begin()
		tx.Detach(r)
		_ = tx.Commit()
	}()
	return r.Do(func(c *block.Child) error { return writeImage(ctx, c, p) })
}

// createParams are the checked options of a new image.
type createParams struct {
	version       uint32
	clusterBits   uint32
	size          int64
	refcountOrder uint32
	extL2         bool
	lazy          bool
	zstd          bool
	prealloc      Preallocation
	backingFile   string
	backingFormat string
}

func checkCreate(opts *CreateOptions) (*createParams, error) {
	p := &createParams{version: 3, clusterBits: 16, refcountOrder: 4, prealloc: "off"}
	if opts.Version != nil && *opts.Version == "v2" {
		p.version = 2
	}
	if opts.ClusterSize != nil {
		cs := *opts.ClusterSize
		if cs < 512 || cs > 2<<20 || cs&(cs-1) != 0 {
			return nil, fmt.Errorf("Cluster size must be a power of two between 512 and 2048k")
		}
		p.clusterBits = uint32(bits.TrailingZeros64(cs))
	}
	if opts.ExtendedL2 != nil && *opts.ExtendedL2 {
		if p.version < 3 {
			return nil, fmt.Errorf("Extended L2 entries are only supported with compatibility level 1.1 and above (use version=v3 or greater)")
		}
		if p.clusterBits < 14 {
			return nil, fmt.Errorf("Extended L2 entries are only supported with cluster sizes of at least 16384 bytes")
		}
		p.extL2 = true
	}
	if opts.Size%512 != 0 {
		return nil, fmt.Errorf("Image size must be a multiple of 512 bytes")
	}
	if opts.RefcountBits != nil {
		rb := *opts.RefcountBits
		if rb <= 0 || rb > 64 || rb&(rb-1) != 0 {
			return nil, fmt.Errorf("Refcount width must be a power of two and may not exceed 64 bits")
		}
		if p.version < 3 && rb != 16 {
			return nil, fmt.Errorf("Different refcount widths than 16 bits require compatibility level 1.1 or above (use version=v3 or greater)")
		}
		p.refcountOrder = uint32(bits.TrailingZeros64(uint64(rb)))
	}
	if opts.BackingFile != nil {
		p.backingFile = *opts.BackingFile
	}
	if opts.BackingFmt != nil {
		if p.backingFile == "" {
			return nil, fmt.Errorf("Backing format cannot be used without backing file")
		}
		p.backingFormat = string(*opts.BackingFmt)
	}
	if opts.LazyRefcounts != nil && *opts.LazyRefcounts {
		if p.version < 3 {
			return nil, fmt.Errorf("Lazy refcounts only supported with compatibility level 1.1 and above (use version=v3 or greater)")
		}
		p.lazy = true
	}
	if opts.DataFileRaw != nil && *opts.DataFileRaw && opts.DataFile == nil {
		return nil, fmt.Errorf("data-file-raw requires data-file")
	}
	if opts.DataFile != nil {
		return nil, block.Errorf(block.ErrNotSupported, "External data files are not supported by blockd")
	}
	if opts.CompressionType != nil && *opts.CompressionType == "zstd" {
		if p.version < 3 {
			return nil, fmt.Errorf("Non-zlib compression type is only supported with compatibility level 1.1 and above (use version=v3 or greater)")
		}
		p.zstd = true
	}
	if opts.Preallocation != nil {
		p.prealloc = *opts.Preallocation
	}
	if p.prealloc != "off" && p.backingFile != "" && !p.extL2 {
		return nil, fmt.Errorf("Backing file and preallocation can only be used at the same time if extended_l2 is on")
	}
	if len(opts.Encrypt) > 0 && string(opts.Encrypt) != "null" {
		return nil, block.Errorf(block.ErrNotSupported, "Encrypted qcow2 images are not supported by blockd")
	}
	if len(p.backingFile) > maxBackingName {
		return nil, fmt.Errorf("Backing file name too long")
	}
	// The largest size an L1 table of QEMU's maximum size maps.
	cs := uint64(1) << p.clusterBits
	entries := cs / 8
	if p.extL2 {
		entries = cs / 16
	}
	if opts.Size > maxL1Bytes/8*entries*cs {
		return nil, fmt.Errorf("Could not resize image: Failed to grow the L1 table: File too large")
	}
	p.size = int64(opts.Size)
	return p, nil
}

// writeImage writes a new image through c (the file node's root edge).
func writeImage(ctx context.Context, c *block.Child, p *createParams) error {
	if err := c.Truncate(ctx, 0, true); err != nil {
		return fmt.Errorf("Could not resize image: %w", err)
	}
	cs := int64(1) << p.clusterBits
	h := &header{
		version:       p.version,
		clusterBits:   p.clusterBits,
		refcountOrder: p.refcountOrder,
		rtOffset:      uint64(cs),
		rtClusters:    1,
		backingFile:   p.backingFile,
		backingFormat: p.backingFormat,
	}
	if p.extL2 {
		h.incompat |= incompatExtL2
	}
	if p.zstd {
		h.incompat |= incompatCompression
		h.compressionType = compressionZstd
	}
	if p.lazy {
		h.compat |= compatLazyRefcounts
	}
	buf, err := encodeHeader(h, int(cs))
	if err != nil {
		return err
	}
	// Cluster 0: header; 1: refcount table; 2: the first refcount block,
	// counting clusters 0 to 2.
	img := make([]byte, 3*cs)
	copy(img, buf)
	binary.BigEndian.PutUint64(img[cs:], uint64(2*cs))
	q := &image{refBits: 1 << p.refcountOrder}
	q.refMax = 1<<min(q.refBits, 63) - 1
	if q.refBits == 64 {
		q.refMax = ^uint64(0)
	}
	for i := int64(0); i < 3; i++ {
		q.setRefcountIn(img[2*cs:], i, 1)
	}
	if err := c.WriteAt(ctx, img, 0, 0); err != nil {
		return fmt.Errorf("Could not write qcow2 header: %w", err)
	}
	if err := c.Flush(ctx); err != nil {
		return err
	}

	im, err := load(ctx, c, false, &Options{})
	if err != nil {
		return err
	}
	if err := im.prepareWrite(ctx); err != nil {
		return err
	}
	if err := im.grow(ctx, 0, p.size); err != nil {
		return fmt.Errorf("Could not resize image: %w", err)
	}
	if p.prealloc != "off" {
		if err := im.preallocate(ctx, p.prealloc); err != nil {
			return fmt.Errorf("Could not preallocate metadata: %w", err)
		}
	}
	return im.flushAll(ctx, true)
}

// preallocate maps every guest cluster to a host cluster (metadata), and
// with falloc or full also reserves or writes the file's space.
func (q *image) preallocate(ctx context.Context, mode Preallocation) error {
	size := q.size.Load()
	clusters := alignUp(size, q.clusterSize) >> q.clusterBits
	var lo, hi int64 = -1, 0 // host range of the data
	for gc := int64(0); gc < clusters; {
		q.mu.Lock()
		start, got, err := q.allocClustersLocked(ctx, min(clusters-gc, maxRun), false)
		if err != nil {
			q.mu.Unlock()
			return err
		}
		for i := int64(0); i < got; i++ {
			s := cstate{typ: ctNormal, host: (start + i) << q.clusterBits, copied: true, alloc: q.allSubs()}
			if err := q.setStateLocked(ctx, gc+i, s); err != nil {
				q.mu.Unlock()
				return err
			}
		}
		q.fileEnd = max(q.fileEnd, (start+got)<<q.clusterBits)
		q.mu.Unlock()
		if lo < 0 {
			lo = start << q.clusterBits
		}
		hi = max(hi, (start+got)<<q.clusterBits)
		gc += got
	}
	if err := q.flush(ctx, true); err != nil {
		return err
	}
	if lo < 0 {
		return nil
	}
	switch mode {
	case "falloc":
		if err := q.file.Zero(ctx, lo, hi-lo, 0); err != nil {
			return err
		}
	case "full":
		for off := lo; off < hi; {
			k := min(hi-off, int64(len(zeroes)))
			if err := q.file.WriteAt(ctx, zeroes[:k], off, 0); err != nil {
				return err
			}
			off += k
		}
	}
	q.mu.Lock()
	end := q.fileEnd
	q.mu.Unlock()
	if q.file.Size() < end {
		return q.file.Truncate(ctx, end, true)
	}
	return nil
}
