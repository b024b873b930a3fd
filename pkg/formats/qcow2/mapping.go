package qcow2

import (
	"context"
)

// ekind is what a guest range reads as.
type ekind uint8

const (
	eUnalloc    ekind = iota // from the backing file, or zeroes
	eZero                    // zeroes
	eData                    // host data at host
	eCompressed              // a part of a compressed cluster
)

// extent is a guest range of one kind.
type extent struct {
	kind  ekind
	off   int64 // guest offset
	len   int64
	host  int64 // eData: host offset of off; eCompressed: offset of the compressed data
	csize int64 // eCompressed: bytes of compressed data
	cbase int64 // eCompressed: guest offset of the cluster
}

// mapLocked describes [off, off+n) as at most maxExt extents, merged as
// far as their kind (and, for data, contiguous host offsets) allows. It
// stops early, on an extent boundary, when maxExt extents are full or
// after loading budget table slices; the extents cover a prefix of the
// range, at least one byte of it.
func (q *image) mapLocked(ctx context.Context, off, n int64, maxExt, budget int) ([]extent, error) {
	return q.mapIntoLocked(ctx, off, n, make([]extent, 0, min(maxExt, 16)), maxExt, budget)
}

// mapIntoLocked is mapLocked appending to out (which it may reuse).
func (q *image) mapIntoLocked(ctx context.Context, off, n int64, out []extent, maxExt, budget int) ([]extent, error) {
	out = out[:0]
	end := off + n
	// add appends or merges; it reports false when the list is full.
	add := func(x extent) bool {
		if k := len(out); k > 0 {
			last := &out[k-1]
			if last.kind == x.kind && last.off+last.len == x.off && x.kind != eCompressed &&
				(x.kind != eData || last.host+last.len == x.host) {
				last.len += x.len
				return true
			}
			if k == maxExt {
				return false
			}
		}
		out = append(out, x)
		return true
	}
	entriesPerSlice := q.sliceBytes / q.l2EntryBytes
	for off < end {
		gc := off >> q.clusterBits
		l1i := gc >> q.l2Bits
		l2off, err := q.l2OffsetLocked(ctx, l1i)
		if err != nil {
			return nil, err
		}
		if l2off == 0 {
			// The whole range of the missing table is unallocated.
			stop := min(end, (l1i+1)<<(q.l2Bits+q.clusterBits))
			if !add(extent{kind: eUnalloc, off: off, len: stop - off}) {
				return out, nil
			}
			off = stop
			continue
		}
		if budget <= 0 && len(out) > 0 {
			return out, nil
		}
		budget--
		l2i := gc & (1<<q.l2Bits - 1)
		e, pos, err := q.sliceLocked(ctx, l2off, l2i)
		if err != nil {
			return nil, err
		}
		for i := pos / q.l2EntryBytes; i < entriesPerSlice && off < end; i++ {
			s, err := q.decodeAtLocked(ctx, e.buf[i*q.l2EntryBytes:], l2off, l2i)
			if err != nil {
				return nil, err
			}
			cstart := gc << q.clusterBits
			cend := min(end, cstart+q.clusterSize)
			if s.typ == ctCompressed {
				if !add(extent{kind: eCompressed, off: off, len: cend - off, host: s.host, csize: s.csize, cbase: cstart}) {
					return out, nil
				}
			} else {
				for off < cend {
					sc := uint((off - cstart) >> (q.clusterBits - q.subBits))
					stop := min(cend, cstart+int64(sc+1)*q.subSize)
					x := extent{off: off, len: stop - off}
					switch s.sub(sc) {
					case subData:
						x.kind, x.host = eData, s.host+(off-cstart)
					case subZero:
						x.kind = eZero
					default:
						x.kind = eUnalloc
					}
					if !add(x) {
						return out, nil
					}
					off = stop
				}
			}
			off = cend
			gc++
			l2i++
		}
	}
	return out, nil
}
