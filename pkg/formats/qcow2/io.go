package qcow2

import (
	"context"
	"fmt"
	"sync"

	"github.com/blockd/blockd/pkg/block"
)

// zeroes is a shared read-only buffer of zeroes.
var zeroes = make([]byte, 2<<20)

// ReadAt implements block.Impl.
func (q *image) ReadAt(ctx context.Context, p []byte, off int64, f block.Flags) error {
	if err := q.usable(); err != nil {
		return err
	}
	q.ioGate.RLock()
	defer q.ioGate.RUnlock()
	return q.read(ctx, p, off)
}

// read reads guest data; the caller holds ioGate shared.
func (q *image) read(ctx context.Context, p []byte, off int64) error {
	var arr [16]extent
	for len(p) > 0 {
		q.mu.Lock()
		exts, err := q.mapIntoLocked(ctx, off, int64(len(p)), arr[:0], len(arr), 1<<30)
		q.mu.Unlock()
		if err != nil {
			return err
		}
		for _, x := range exts {
			if err := q.readExtent(ctx, p[:x.len], x); err != nil {
				return err
			}
			p = p[x.len:]
			off += x.len
		}
	}
	return nil
}

func (q *image) readExtent(ctx context.Context, p []byte, x extent) error {
	switch x.kind {
	case eData:
		q.event(block.DebugReadAIO)
		if err := q.file.ReadAt(ctx, p, x.host, 0); err != nil {
			return q.ioError("read", err)
		}
	case eZero:
		clear(p)
	case eUnalloc:
		return q.readBacking(ctx, p, x.off)
	case eCompressed:
		buf := q.getClusterBuf()
		defer q.putClusterBuf(buf)
		if err := q.readCompressed(ctx, buf, x.host, x.csize); err != nil {
			return err
		}
		copy(p, buf[x.off-x.cbase:])
	}
	return nil
}

// readBacking reads what an unallocated range shows: the backing file's
// data up to its end, zeroes after it.
func (q *image) readBacking(ctx context.Context, p []byte, off int64) error {
	if q.backing == nil {
		clear(p)
		return nil
	}
	q.event(block.DebugReadBackingAIO)
	bsize := q.backing.Size()
	if off >= bsize {
		clear(p)
		return nil
	}
	k := min(int64(len(p)), bsize-off)
	if err := q.backing.ReadAt(ctx, p[:k], off, 0); err != nil {
		return err
	}
	clear(p[k:])
	return nil
}

var clusterBufs sync.Map // cluster size -> *sync.Pool

func (q *image) getClusterBuf() []byte {
	p, _ := clusterBufs.LoadOrStore(q.clusterSize, &sync.Pool{New: func() any { return make([]byte, q.clusterSize) }})
	return p.(*sync.Pool).Get().([]byte)
}

func (q *image) putClusterBuf(b []byte) {
	if p, ok := clusterBufs.Load(int64(len(b))); ok {
		p.(*sync.Pool).Put(b) //nolint:staticcheck // slices are fine here
	}
}

// readCompressed reads and inflates the compressed cluster at coff.
func (q *image) readCompressed(ctx context.Context, dst []byte, coff, csize int64) error {
	src := make([]byte, csize)
	q.event(block.DebugReadCompressed)
	if err := q.file.ReadAt(ctx, src, coff, 0); err != nil {
		return q.ioError("read", err)
	}
	if err := decompress(q.compression, src, dst); err != nil {
		return block.Errorf(block.ErrCorrupt, "qcow2 image '%s': compressed cluster at offset %#x: %s", q.name, coff, err)
	}
	return nil
}

// WriteAt implements block.Impl.
func (q *image) WriteAt(ctx context.Context, p []byte, off int64, f block.Flags) error {
	if err := q.usable(); err != nil {
		return err
	}
	q.ioGate.RLock()
	defer q.ioGate.RUnlock()
	if f&block.FlagCompressed != 0 {
		return q.writeCompressed(ctx, p, off)
	}
	return q.write(ctx, p, off)
}

// write writes guest data; the caller holds ioGate shared.
func (q *image) write(ctx context.Context, p []byte, off int64) error {
	src := payload{p: p, pipe: -1}
	return q.writePayload(ctx, &src, int64(len(p)), off)
}

// writePayload writes the n bytes of src at off, a step at a time.
func (q *image) writePayload(ctx context.Context, src *payload, n, off int64) error {
	for n > 0 {
		k, err := q.writeStep(ctx, src, n, off)
		if err != nil {
			return err
		}
		n -= k
		off += k
	}
	return nil
}

// inPlace reports whether bytes [a, b) of a cluster in state s can be
// written where they are: an allocated host cluster of refcount one whose
// touched subclusters are all allocated.
func (q *image) inPlace(s *cstate, a, b int64) bool {
	if s.typ != ctNormal || !s.copied {
		return false
	}
	t := q.touched(a, b)
	return s.alloc&t == t
}

// touched is the bitmap of the subclusters [a, b) touches.
func (q *image) touched(a, b int64) uint32 {
	if q.subBits == 0 {
		return 1
	}
	shift := q.clusterBits - q.subBits
	first, last := uint(a>>shift), uint((b-1)>>shift)
	return uint32((uint64(1)<<(last+1) - 1) &^ (uint64(1)<<first - 1))
}

// reusable reports whether a cluster's host cluster can take new data
// without moving: it exists, is not compressed and is not shared.
func reusable(s *cstate) bool {
	return s.typ != ctCompressed && s.host != 0 && s.copied
}

// maxRun bounds the clusters one allocation covers.
const maxRun = 4096

// writeStep writes a prefix of the n bytes of src at off and returns its
// length (src has given them up). Either it
// writes in place into allocated clusters (the fast path: the metadata
// mutex is only taken for the lookup), or it allocates: host clusters are
// reserved under the mutex, guest data and copy-on-write data are written
// without it, and the new mapping is linked under it again.
func (q *image) writeStep(ctx context.Context, src *payload, n, off int64) (int64, error) {
	q.mu.Lock()
	gc := off >> q.clusterBits
	rel := off & (q.clusterSize - 1)
	first := min(n, q.clusterSize-rel)
	s, err := q.stateLocked(ctx, gc)
	if err != nil {
		q.mu.Unlock()
		return 0, err
	}
	if q.inPlace(&s, rel, rel+first) {
		host, total := s.host+rel, first
		for total < n {
			k := min(n-total, q.clusterSize)
			s2, err := q.stateLocked(ctx, gc+(rel+total)>>q.clusterBits)
			if err != nil || !q.inPlace(&s2, 0, k) || s2.host != host+total {
				break
			}
			total += k
		}
		if what := q.overlapLocked(host, total); what != "" {
			err := q.corruptLocked(ctx, host, total, "Preventing invalid write on metadata (overlaps with %s)", what)
			q.mu.Unlock()
			return 0, err
		}
		q.mu.Unlock()
		q.event(block.DebugWriteAIO)
		if err := src.writeTo(ctx, q.file, host, total); err != nil {
			return 0, q.ioError("write", err)
		}
		return total, nil
	}
	if ch := q.busy[gc]; ch != nil {
		q.mu.Unlock()
		return 0, wait(ctx, ch)
	}
	w, err := q.allocateLocked(ctx, gc, s, n, off)
	if err != nil {
		q.mu.Unlock()
		return 0, err
	}
	q.mu.Unlock()
	return w.run(ctx, src)
}

func wait(ctx context.Context, ch chan struct{}) error {
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// allocWrite is one allocating write in progress: the clusters it
// reserved and what they held before.
type allocWrite struct {
	q      *image
	gc     int64 // first guest cluster
	off    int64 // guest offset of the write
	n      int64 // bytes of the payload it writes
	host   int64 // host offset of the first cluster
	reuse  bool  // the host cluster is the one already mapped
	fresh  bool  // the host clusters were never written: they read as zeroes
	old    []cstate
	news   []cstate
	done   chan struct{}
	bufOld []byte // decompressed old cluster, when one is needed
	oldIdx int    // which of old bufOld holds
}

// allocateLocked reserves host clusters for a write starting in cluster
// gc (state s) of n bytes at off: the cluster itself and the following
// ones the write covers that also need a new host cluster.
func (q *image) allocateLocked(ctx context.Context, gc int64, s cstate, n, off int64) (*allocWrite, error) {
	if err := q.markDirtyLocked(ctx); err != nil {
		return nil, err
	}
	w := &allocWrite{q: q, gc: gc, off: off, done: make(chan struct{})}
	rel := off & (q.clusterSize - 1)
	if reusable(&s) {
		w.reuse, w.host = true, s.host
		w.old = []cstate{s}
		w.n = min(n, q.clusterSize-rel)
	} else {
		w.old = append(w.old, s)
		end := off + n
		for k := int64(1); k < maxRun; k++ {
			c := gc + k
			if c<<q.clusterBits >= end {
				break
			}
			if q.busy[c] != nil {
				break
			}
			s2, err := q.stateLocked(ctx, c)
			if err != nil {
				return nil, err
			}
			if reusable(&s2) {
				break
			}
			w.old = append(w.old, s2)
		}
		start, got, fresh, err := q.allocFreshLocked(ctx, int64(len(w.old)), false)
		if err != nil {
			return nil, err
		}
		w.old = w.old[:got]
		w.host = start << q.clusterBits
		w.fresh = fresh
		w.n = min(n, (gc+got)<<q.clusterBits-off)
	}
	// The new states.
	all := q.allSubs()
	for i, o := range w.old {
		a := int64(0)
		if i == 0 {
			a = rel
		}
		b := min(q.clusterSize, off+w.n-(gc+int64(i))<<q.clusterBits)
		t := q.touched(a, b)
		keep := uint32(0)
		switch {
		case o.typ == ctCompressed:
			keep = all
		case o.host != 0:
			keep = o.alloc
		}
		ns := cstate{typ: ctNormal, host: w.host + int64(i)<<q.clusterBits, copied: true}
		ns.alloc = keep | t
		ns.zero = o.zero &^ ns.alloc
		w.news = append(w.news, ns)
	}
	for i := range w.old {
		q.busy[gc+int64(i)] = w.done
	}
	return w, nil
}

// piece is a part of a cluster to fill with its old contents.
type piece struct {
	a, b int64 // cluster-relative
	src  subKind
}

// fills lists what cluster i of the write must copy from its old state:
// every subcluster of the new mapping not fully overwritten, minus the
// ones already in place.
func (w *allocWrite) fills(i int) []piece {
	q := w.q
	cstart := (w.gc + int64(i)) << q.clusterBits
	a := max(w.off, cstart) - cstart
	b := min(w.off+w.n, cstart+q.clusterSize) - cstart
	o, ns := &w.old[i], &w.news[i]
	var ps []piece
	for sc := uint(0); sc < 1<<q.subBits; sc++ {
		if ns.alloc&(1<<sc) == 0 {
			continue
		}
		if w.reuse && o.alloc&(1<<sc) != 0 {
			continue
		}
		lo, hi := int64(sc)*q.subSize, int64(sc+1)*q.subSize
		src := o.sub(sc)
		add := func(x, y int64) {
			if x >= y {
				return
			}
			if k := len(ps); k > 0 && ps[k-1].b == x && ps[k-1].src == src {
				ps[k-1].b = y
				return
			}
			ps = append(ps, piece{x, y, src})
		}
		add(lo, min(hi, a))
		add(max(lo, b), hi)
	}
	return ps
}

// run writes the data and the copy-on-write data, then links the new
// mapping. On failure the reserved clusters are released.
func (w *allocWrite) run(ctx context.Context, src *payload) (int64, error) {
	q := w.q
	err := w.writeData(ctx, src)
	q.mu.Lock()
	defer q.mu.Unlock()
	defer func() {
		for i := range w.old {
			delete(q.busy, w.gc+int64(i))
		}
		close(w.done)
	}()
	if err == nil {
		err = q.usable()
	}
	if err == nil {
		err = w.linkLocked(ctx)
	}
	if err != nil {
		if !w.reuse && q.usable() == nil {
			// Nothing points at the clusters: they can go back at once.
			_ = q.freeRangeLocked(ctx, w.host, int64(len(w.old))<<q.clusterBits, freeOther)
		}
		return 0, err
	}
	return w.n, nil
}

func (w *allocWrite) linkLocked(ctx context.Context) error {
	q := w.q
	for i := range w.old {
		gc := w.gc + int64(i)
		cur, err := q.stateLocked(ctx, gc)
		if err != nil {
			return err
		}
		if cur != w.old[i] {
			return fmt.Errorf("qcow2 image '%s': mapping of cluster %d changed during an allocating write: %w", q.name, gc, block.ErrInternal)
		}
		if err := q.setStateLocked(ctx, gc, w.news[i]); err != nil {
			return err
		}
		if w.reuse {
			continue
		}
		// The old host cluster loses this reference once the new mapping
		// is on disk.
		o := w.old[i]
		switch {
		case o.typ == ctCompressed:
			start := o.host &^ 511
			q.deferFreeLocked(start, alignUp(o.host+o.csize, 512)-start, freeOther, false)
		case o.host != 0:
			q.deferFreeLocked(o.host, q.clusterSize, freeOther, false)
		}
	}
	return nil
}

// smallWrite is the size under which data and copy-on-write data are
// gathered into one buffer and written at once.
const smallWrite = 256 << 10

// writeData writes the guest data of the allocating write (w.n bytes of
// src) and the old contents the new clusters keep.
func (w *allocWrite) writeData(ctx context.Context, src *payload) error {
	q := w.q
	type fill struct {
		off int64 // host
		buf []byte
	}
	var fs []fill
	for i := range w.old {
		for _, pc := range w.fills(i) {
			if w.fresh && (pc.src == subZero || pc.src == subUnalloc && q.backing == nil) {
				continue // a never written cluster already reads as zeroes
			}
			buf := make([]byte, pc.b-pc.a)
			if err := w.readOld(ctx, i, pc, buf); err != nil {
				return err
			}
			fs = append(fs, fill{w.host + int64(i)<<q.clusterBits + pc.a, buf})
		}
	}
	dataHost := w.host + (w.off - w.gc<<q.clusterBits)
	if len(fs) == 0 {
		q.event(block.DebugWriteAIO)
		if err := src.writeTo(ctx, q.file, dataHost, w.n); err != nil {
			return q.ioError("write", err)
		}
		return nil
	}
	lo, hi := dataHost, dataHost+w.n
	for _, f := range fs {
		lo, hi = min(lo, f.off), max(hi, f.off+int64(len(f.buf)))
	}
	if hi-lo <= smallWrite {
		buf := make([]byte, hi-lo)
		for _, f := range fs {
			copy(buf[f.off-lo:], f.buf)
		}
		if err := src.readInto(buf[dataHost-lo : dataHost-lo+w.n]); err != nil {
			return err
		}
		q.event(block.DebugCOWWrite)
		if err := q.file.WriteAt(ctx, buf, lo, 0); err != nil {
			return q.ioError("write", err)
		}
		return nil
	}
	for _, f := range fs {
		q.event(block.DebugCOWWrite)
		if err := q.file.WriteAt(ctx, f.buf, f.off, 0); err != nil {
			return q.ioError("write", err)
		}
	}
	q.event(block.DebugWriteAIO)
	if err := src.writeTo(ctx, q.file, dataHost, w.n); err != nil {
		return q.ioError("write", err)
	}
	return nil
}

// readOld reads piece pc of cluster i as it read before the write.
func (w *allocWrite) readOld(ctx context.Context, i int, pc piece, buf []byte) error {
	q := w.q
	o := &w.old[i]
	gstart := (w.gc + int64(i)) << q.clusterBits
	q.event(block.DebugCOWRead)
	switch pc.src {
	case subZero:
		clear(buf)
	case subUnalloc:
		return q.readBacking(ctx, buf, gstart+pc.a)
	case subData:
		q.event(block.DebugReadAIO)
		if err := q.file.ReadAt(ctx, buf, o.host+pc.a, 0); err != nil {
			return q.ioError("read", err)
		}
	case subCompressed:
		// The head and the tail of a write may fall into two different
		// compressed clusters.
		if w.bufOld == nil || w.oldIdx != i {
			if w.bufOld == nil {
				w.bufOld = make([]byte, q.clusterSize)
			}
			if err := q.readCompressed(ctx, w.bufOld, o.host, o.csize); err != nil {
				w.bufOld = nil
				return err
			}
			w.oldIdx = i
		}
		copy(buf, w.bufOld[pc.a:pc.b])
	}
	return nil
}

// Zero implements block.Impl: whole subclusters become zero clusters (or
// are deallocated with FlagMayUnmap); partial ones are written.
func (q *image) Zero(ctx context.Context, off, n int64, f block.Flags) error {
	if err := q.usable(); err != nil {
		return err
	}
	if q.version < 3 {
		return block.ErrNotSupported
	}
	lo, hi := alignUp(off, q.subSize), alignDown(off+n, q.subSize)
	if lo >= hi {
		// No whole subcluster inside: all of it is partial.
		lo, hi = off+n, off+n
	}
	for _, r := range [][2]int64{{off, lo}, {hi, off + n}} {
		if r[0] >= r[1] {
			continue
		}
		if err := q.zeroPartial(ctx, r[0], r[1]-r[0], f); err != nil {
			return err
		}
	}
	if lo < hi {
		return q.zeroRange(ctx, lo, hi, f&block.FlagMayUnmap != 0, false)
	}
	return nil
}

// zeroPartial zeroes a range smaller than a subcluster by writing zeroes,
// unless it reads as zeroes already.
func (q *image) zeroPartial(ctx context.Context, off, n int64, f block.Flags) error {
	z, err := q.readsZero(ctx, off, n)
	if err != nil || z {
		return err
	}
	if f&block.FlagNoFallback != 0 {
		return block.ErrNotSupported
	}
	q.ioGate.RLock()
	defer q.ioGate.RUnlock()
	for n > 0 {
		k := min(n, int64(len(zeroes)))
		if err := q.write(ctx, zeroes[:k], off); err != nil {
			return err
		}
		off += k
		n -= k
	}
	return nil
}

// readsZero reports whether [off, off+n) reads as zeroes for sure.
func (q *image) readsZero(ctx context.Context, off, n int64) (bool, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for n > 0 {
		exts, err := q.mapLocked(ctx, off, n, 16, 1<<30)
		if err != nil {
			return false, err
		}
		for _, x := range exts {
			switch {
			case x.kind == eZero:
			case x.kind == eUnalloc && (q.backing == nil || x.off >= q.backing.Size()):
			default:
				return false, nil
			}
			off += x.len
			n -= x.len
		}
	}
	return true, nil
}

// zeroRange makes the whole subclusters of [lo, hi) read as zeroes (zero
// flags, or deallocation with unmap). With discard, it implements
// Discard instead: clusters are deallocated, and read as zeroes only
// where they would otherwise show the backing file (or old data).
func (q *image) zeroRange(ctx context.Context, lo, hi int64, unmap, discard bool) error {
	kind := freeOther
	if discard || unmap {
		kind = freeRequest
	}
	for off := lo; off < hi; {
		q.mu.Lock()
		if err := q.markDirtyLocked(ctx); err != nil {
			q.mu.Unlock()
			return err
		}
		for done := 0; off < hi && done < 512; done++ {
			gc := off >> q.clusterBits
			if q.backing == nil {
				// Skip tables that do not exist: nothing there to zero.
				l1i := gc >> q.l2Bits
				if l1i >= int64(len(q.l1)) || q.l1[l1i]&l1OffsetMask == 0 {
					off = min(hi, (l1i+1)<<(q.l2Bits+q.clusterBits))
					continue
				}
			}
			if ch := q.busy[gc]; ch != nil {
				q.mu.Unlock()
				if err := wait(ctx, ch); err != nil {
					return err
				}
				q.mu.Lock()
				continue
			}
			cstart := gc << q.clusterBits
			a, b := off-cstart, min(hi-cstart, q.clusterSize)
			s, err := q.stateLocked(ctx, gc)
			if err != nil {
				q.mu.Unlock()
				return err
			}
			ns, free, partialCompressed := q.zeroState(s, a, b, unmap, discard)
			if partialCompressed {
				// Part of a compressed cluster: write zeroes into it.
				q.mu.Unlock()
				q.ioGate.RLock()
				err := q.write(ctx, zeroes[:b-a], off)
				q.ioGate.RUnlock()
				if err != nil {
					return err
				}
				off = cstart + b
				q.mu.Lock()
				continue
			}
			if ns != s {
				if err := q.setStateLocked(ctx, gc, ns); err != nil {
					q.mu.Unlock()
					return err
				}
				switch {
				case free && s.typ == ctCompressed:
					start := s.host &^ 511
					q.deferFreeLocked(start, alignUp(s.host+s.csize, 512)-start, kind, false)
				case free:
					q.deferFreeLocked(s.host, q.clusterSize, kind, false)
				}
			}
			off = cstart + b
		}
		q.mu.Unlock()
	}
	return nil
}

// zeroState is the state of a cluster after zeroing (or discarding)
// bytes [a, b) of it, whole subclusters; free says the old host cluster
// (or compressed data) loses its reference.
func (q *image) zeroState(s cstate, a, b int64, unmap, discard bool) (ns cstate, free, partialCompressed bool) {
	all := q.allSubs()
	t := q.touched(a, b)
	if s.typ == ctCompressed && t != all {
		if discard {
			return s, false, false // advisory: keep it
		}
		return s, false, true
	}
	allocated := s.typ == ctCompressed || s.host != 0
	if discard {
		// Discarded clusters read as zeroes where they would otherwise
		// show the backing file or old data (v3); v2 can only forget.
		if !allocated && (q.backing == nil || s.zero&t == t) {
			return s, false, false
		}
		if !q.extL2 {
			if q.version >= 3 && (q.backing != nil || allocated) {
				return cstate{typ: ctZero, zero: 1}, allocated, false
			}
			return cstate{typ: ctUnalloc}, allocated, false
		}
	}
	if !q.extL2 {
		switch s.typ {
		case ctUnalloc:
			if q.backing == nil {
				return s, false, false
			}
			return cstate{typ: ctZero, zero: 1}, false, false
		case ctZero:
			if s.host != 0 && (unmap || !s.copied) {
				return cstate{typ: ctZero, zero: 1}, true, false
			}
			return s, false, false
		case ctNormal:
			if unmap || !s.copied {
				return cstate{typ: ctZero, zero: 1}, true, false
			}
			return cstate{typ: ctZero, host: s.host, copied: true, zero: 1}, false, false
		}
		return cstate{typ: ctZero, zero: 1}, true, false // compressed
	}
	// Extended L2: per subcluster.
	if s.typ == ctCompressed {
		return cstate{typ: ctUnalloc, zero: all}, true, false
	}
	ns = s
	ns.alloc &^= t
	if discard && q.backing == nil && ns.alloc == 0 && s.zero&^t == 0 {
		ns.zero = 0
	} else {
		ns.zero |= t
	}
	if ns.host != 0 && ns.alloc == 0 && (unmap || discard || !s.copied) {
		ns.host, ns.copied, ns.typ = 0, false, ctUnalloc
		return ns, true, false
	}
	return ns, false, false
}

// Discard implements block.Impl: whole clusters are deallocated and their
// host clusters freed (once the change is on disk); partial clusters are
// left alone.
func (q *image) Discard(ctx context.Context, off, n int64) error {
	if err := q.usable(); err != nil {
		return err
	}
	if q.version < 3 && q.backing != nil {
		return nil // v2 cannot hide the backing file without writing zeroes
	}
	lo, hi := alignUp(off, q.clusterSize), alignDown(off+n, q.clusterSize)
	if lo >= hi {
		return nil
	}
	if err := q.zeroRange(ctx, lo, hi, true, true); err != nil {
		return err
	}
	q.mu.Lock()
	many := len(q.pending) >= 4096
	q.mu.Unlock()
	if many {
		return q.flush(ctx, true)
	}
	return nil
}

// Flush implements block.Impl.
func (q *image) Flush(ctx context.Context) error {
	if err := q.usable(); err != nil {
		return err
	}
	if q.readOnly {
		return nil
	}
	return q.flush(ctx, true)
}

// flush writes the dirty metadata (refcount blocks, flush, L2 slices),
// flushes the file, and then applies the pending frees: their references
// are gone on disk now. Freed clusters become reusable only after every
// request that might still use them has finished (ioGate); with !wait the
// frees stay pending if requests are in flight.
func (q *image) flush(ctx context.Context, wait bool) error {
	q.mu.Lock()
	err := q.flushMetaLocked(ctx)
	pend := q.pending
	q.pending = nil
	q.mu.Unlock()
	if err == nil {
		if err = q.file.Flush(ctx); err != nil {
			err = q.ioError("flush", err)
		}
	}
	if err == nil && len(pend) > 0 {
		if wait {
			q.ioGate.Lock()
			q.ioGate.Unlock() //nolint:staticcheck // an empty critical section: a barrier
		} else if q.ioGate.TryLock() {
			q.ioGate.Unlock()
		} else {
			err = errBusy
		}
	}
	if err != nil {
		q.mu.Lock()
		q.pending = append(pend, q.pending...)
		q.mu.Unlock()
		if err == errBusy {
			return nil
		}
		return err
	}
	if len(pend) == 0 {
		return nil
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	for i, pf := range pend {
		if err := q.usable(); err != nil {
			return err
		}
		if err := q.freeRangeLocked(ctx, pf.off, pf.n, pf.kind); err != nil {
			q.pending = append(q.pending, pend[i+1:]...)
			return err
		}
	}
	// Write the decrements now, so that a clean close has nothing left.
	if err := q.flushMetaLocked(ctx); err != nil {
		return err
	}
	if err := q.file.Flush(ctx); err != nil {
		return q.ioError("flush", err)
	}
	return nil
}

var errBusy = fmt.Errorf("requests in flight")

// BlockStatus implements block.Impl.
func (q *image) BlockStatus(ctx context.Context, off, n int64) (block.Extent, error) {
	if err := q.usable(); err != nil {
		return block.Extent{}, err
	}
	q.mu.Lock()
	exts, err := q.mapLocked(ctx, off, n, 1, 64)
	q.mu.Unlock()
	if err != nil {
		return block.Extent{}, err
	}
	x := exts[0]
	switch x.kind {
	case eData:
		return block.Extent{Len: x.len, Status: block.StatusData | block.StatusAllocated | block.StatusOffsetValid, Offset: x.host, Child: q.file}, nil
	case eZero:
		return block.Extent{Len: x.len, Status: block.StatusZero | block.StatusAllocated}, nil
	case eCompressed:
		return block.Extent{Len: x.len, Status: block.StatusData | block.StatusAllocated}, nil
	}
	return block.Extent{Len: x.len}, nil
}
