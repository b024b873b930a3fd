package qcow2

import (
	"context"
	"fmt"
	"runtime"
	"sync"
	"syscall"

	"github.com/blockd/blockd/pkg/block"
)

// Compressed writes (block.FlagCompressed), as qemu makes them for
// backup compress=true, qemu-img convert -c and the compress filter.
//
// The rules are qemu's: the write starts at a cluster boundary and covers
// whole clusters, except that the last cluster of the image may be short
// (it is padded with zeroes); each cluster is compressed on its own with
// the image's compression type; a cluster that does not become smaller
// is written uncompressed instead; and a compressed cluster only goes
// where no host data is yet (unallocated or zero clusters without a host
// cluster): anything else fails with EIO, since a compressed cluster can
// never be overwritten in place.
//
// The clusters of a larger request are compressed and written in
// parallel (up to eight at once, bounded by GOMAXPROCS); on an error the
// request fails, and clusters other than the failed one may have been
// written, as in qemu.
//
// Compressed data is allocated byte by byte: consecutive compressed
// clusters are packed into host clusters, and each host cluster counts
// one reference per compressed cluster that touches it (a compressed
// cluster may straddle two host clusters). The write order is that of
// every allocating write: the refcount increments in the cache, the
// compressed data to the file, then the L2 entry in the cache; the cache
// writes the refcount blocks and flushes before any L2 slice reaches the
// disk (which flushes the data before it too).

// writeCompressed writes p at off compressed; the caller holds ioGate
// shared.
func (q *image) writeCompressed(ctx context.Context, p []byte, off int64) error {
	if off&(q.clusterSize-1) != 0 {
		return block.Errorf(block.ErrInvalid, "qcow2 image '%s': compressed write at offset %d is not cluster aligned", q.name, off)
	}
	if int64(len(p))&(q.clusterSize-1) != 0 && off+int64(len(p)) < q.size.Load() {
		return block.Errorf(block.ErrInvalid, "qcow2 image '%s': compressed write of %d bytes at offset %d does not cover whole clusters", q.name, len(p), off)
	}
	if int64(len(p)) <= q.clusterSize {
		return q.writeCompressedCluster(ctx, p, off)
	}
	// Clusters are compressed and written in parallel, as qemu does with
	// its task pool: compression is what takes the time.
	workers := min(runtime.GOMAXPROCS(0), maxCompressWorkers)
	sem := make(chan struct{}, workers)
	var (
		wg    sync.WaitGroup
		errMu sync.Mutex
		first error
	)
	for len(p) > 0 {
		n := min(int64(len(p)), q.clusterSize)
		chunk, at := p[:n], off
		sem <- struct{}{}
		errMu.Lock()
		failed := first != nil
		errMu.Unlock()
		if failed {
			<-sem
			break
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if err := q.writeCompressedCluster(ctx, chunk, at); err != nil {
				errMu.Lock()
				if first == nil {
					first = err
				}
				errMu.Unlock()
			}
		}()
		p = p[n:]
		off += n
	}
	wg.Wait()
	return first
}

// maxCompressWorkers bounds the clusters of one request compressed at
// once (qemu's QCOW2_MAX_WORKERS is 8).
const maxCompressWorkers = 8

// writeCompressedCluster writes one cluster (or the image's short last
// cluster) compressed.
func (q *image) writeCompressedCluster(ctx context.Context, p []byte, off int64) error {
	src := p
	if int64(len(p)) < q.clusterSize {
		buf := q.getClusterBuf()
		defer q.putClusterBuf(buf)
		copy(buf, p)
		clear(buf[len(p):])
		src = buf
	}
	out := q.getClusterBuf()
	defer q.putClusterBuf(out)
	n, ok, err := compress(q.compression, src, out[:q.clusterSize-1])
	if err != nil {
		return fmt.Errorf("qcow2 image '%s': compressing cluster at offset %d: %w", q.name, off, err)
	}
	if !ok {
		return q.write(ctx, p, off) // incompressible: a normal cluster
	}
	data := out[:n]
	gc := off >> q.clusterBits
	q.mu.Lock()
	for q.busy[gc] != nil {
		ch := q.busy[gc]
		q.mu.Unlock()
		if err := wait(ctx, ch); err != nil {
			return err
		}
		q.mu.Lock()
	}
	s, err := q.stateLocked(ctx, gc)
	if err == nil && (s.host != 0 || s.typ == ctCompressed) {
		err = fmt.Errorf("qcow2 image '%s': compressed write into cluster %d, which holds data already: %w", q.name, gc, syscall.EIO)
	}
	var host int64
	if err == nil {
		host, err = q.allocCompressedLocked(ctx, int64(n))
	}
	if err == nil {
		if what := q.overlapLocked(host, int64(n)); what != "" {
			err = q.corruptLocked(ctx, host, int64(n), "Preventing invalid write on metadata (overlaps with %s)", what)
		}
	}
	if err != nil {
		q.mu.Unlock()
		return err
	}
	done := make(chan struct{})
	q.busy[gc] = done
	q.mu.Unlock()

	q.event(block.DebugWriteCompressed)
	err = q.file.WriteAt(ctx, data, host, 0)
	if err != nil {
		err = q.ioError("write", err)
	}

	q.mu.Lock()
	defer q.mu.Unlock()
	defer func() {
		delete(q.busy, gc)
		close(done)
	}()
	if err == nil {
		err = q.usable()
	}
	if err == nil {
		err = q.linkCompressedLocked(ctx, gc, s, host, int64(n))
	}
	if err != nil && q.usable() == nil {
		// Nothing points at the bytes: drop their references at once.
		_ = q.freeRangeLocked(ctx, host, int64(n), freeOther)
	}
	return err
}

// linkCompressedLocked points guest cluster gc, still in state old, at n
// bytes of compressed data at host.
func (q *image) linkCompressedLocked(ctx context.Context, gc int64, old cstate, host, n int64) error {
	cur, err := q.stateLocked(ctx, gc)
	if err != nil {
		return err
	}
	if cur != old {
		return fmt.Errorf("qcow2 image '%s': mapping of cluster %d changed during a compressed write: %w", q.name, gc, block.ErrInternal)
	}
	q.event(block.DebugL2UpdateCompressed)
	// The entry as decode gives it back: the size runs to the end of the
	// last sector.
	return q.setStateLocked(ctx, gc, cstate{typ: ctCompressed, host: host, csize: alignUp(host+n, 512) - host})
}

// allocCompressedLocked allocates n bytes (at most a cluster) for compressed
// data: in the tail of the host cluster the last compressed allocation
// left partly used, running on into the next cluster when that one is
// free, or at the start of a new cluster. Every host cluster the bytes
// touch gains one reference.
func (q *image) allocCompressedLocked(ctx context.Context, n int64) (int64, error) {
	if err := q.markDirtyLocked(ctx); err != nil {
		return 0, err
	}
	off := q.freeByte
	if off != 0 {
		// The cluster lost its compressed data meanwhile (and may have
		// a new owner), or cannot count another reference.
		rc, err := q.refcountLocked(ctx, off>>q.clusterBits)
		if err != nil {
			return 0, err
		}
		if rc == 0 || rc >= q.refMax {
			off = 0
		}
	}
	switch {
	case off != 0 && q.clusterSize-off&(q.clusterSize-1) >= n:
		if err := q.increfLocked(ctx, off>>q.clusterBits); err != nil {
			return 0, err
		}
	default:
		// A new cluster, with its reference.
		c, _, err := q.allocClustersLocked(ctx, 1, true)
		if err != nil {
			return 0, err
		}
		if off != 0 && alignUp(off, q.clusterSize) == c<<q.clusterBits {
			// Contiguous: the data starts in the old cluster's tail.
			if err := q.increfLocked(ctx, off>>q.clusterBits); err != nil {
				_ = q.freeRangeLocked(ctx, c<<q.clusterBits, q.clusterSize, freeOther)
				return 0, err
			}
		} else {
			off = c << q.clusterBits
		}
	}
	q.freeByte = off + n
	if q.freeByte&(q.clusterSize-1) == 0 {
		q.freeByte = 0
	}
	return off, nil
}

// increfLocked adds one reference to host cluster c, which has some.
func (q *image) increfLocked(ctx context.Context, c int64) error {
	rc, err := q.refcountLocked(ctx, c)
	if err != nil {
		return err
	}
	if rc == 0 || rc >= q.refMax {
		return fmt.Errorf("qcow2 image '%s': cannot add a reference to cluster %d (refcount %d): %w", q.name, c, rc, block.ErrInternal)
	}
	return q.setRefcountLocked(ctx, c, rc+1)
}
