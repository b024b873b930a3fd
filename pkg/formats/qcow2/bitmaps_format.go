package qcow2

import (
	"encoding/binary"
	"math"

	"github.com/blockd/blockd/pkg/block"
)

// The on-disk form of persistent dirty bitmaps (docs/interop/qcow2.txt,
// "Bitmaps"): a directory of variable-length entries, one bitmap table
// per bitmap, and data clusters holding the bits. This file only decodes,
// checks and encodes; bitmaps.go moves bitmaps between images and nodes.
//
// The limits are the specification's and QEMU's, so that an image one
// implementation writes the other opens, and so that a hostile directory
// can make us allocate no more than a real one of the same limits.
const (
	maxBitmaps        = 65535
	maxBitmapDirBytes = 64 << 20
	maxBitmapName     = 1023
	minBitmapGranBits = 9
	maxBitmapGranBits = 31
	maxBitmapTable    = 0x8000000  // entries of one bitmap table
	maxBitmapData     = 0x20000000 // bytes of data clusters of one bitmap

	bitmapEntryHead = 24 // the fixed part of a directory entry
	bitmapTypeDirty = 1

	bmeInUse       = uint32(1) << 0 // not stored since it was last loaded for writing
	bmeAuto        = uint32(1) << 1 // enabled: records every write
	bmeExtraCompat = uint32(1) << 2 // unknown extra data may be ignored
	bmeReserved    = ^uint32(bmeInUse | bmeAuto | bmeExtraCompat)

	bteOffsetMask = uint64(0x00fffffffffffe00)
	bteAllOnes    = uint64(1) // with offset 0: the cluster reads as ones
)

// bitmapEntry is one entry of the bitmap directory.
type bitmapEntry struct {
	tableOff  int64
	tableSize uint32 // entries
	flags     uint32
	granBits  uint8
	name      string
}

// bitmapDirEntryLen is the size of an entry with a name of n bytes, padded.
func bitmapDirEntryLen(n int) int64 { return alignUp(bitmapEntryHead+int64(n), 8) }

// bitmapTableLen is the number of data clusters (table entries) a bitmap
// of granularity 1<<granBits covering size bytes needs.
func bitmapTableLen(size int64, granBits uint8, clusterSize int64) int64 {
	granules := (uint64(size) + 1<<granBits - 1) >> granBits
	bytes := (granules + 7) / 8
	return int64((bytes + uint64(clusterSize) - 1) / uint64(clusterSize))
}

// parseBitmapDir decodes a directory of nb entries that fills buf exactly
// and checks every entry, the way QEMU does before it uses any: an image
// with a directory QEMU would refuse is refused too.
func parseBitmapDir(buf []byte, nb uint32, clusterSize int64) ([]bitmapEntry, error) {
	if nb == 0 || nb > maxBitmaps {
		return nil, bitmapDirError("invalid number of bitmaps %d", nb)
	}
	if int64(len(buf)) < int64(nb)*bitmapEntryHead {
		return nil, bitmapDirError("the directory is too small for %d bitmaps", nb)
	}
	entries := make([]bitmapEntry, 0, nb)
	seen := make(map[string]bool, nb)
	off := 0
	for i := uint32(0); i < nb; i++ {
		if len(buf)-off < bitmapEntryHead {
			return nil, bitmapDirError("the directory ends inside entry %d", i)
		}
		e := buf[off:]
		nameLen := int(binary.BigEndian.Uint16(e[18:]))
		extra := be32(e[20:])
		if extra != 0 {
			// QEMU knows no extra data and refuses it whatever the flags say.
			return nil, bitmapDirError("bitmap %d: extra data is not supported", i)
		}
		size := bitmapDirEntryLen(nameLen)
		if int64(len(buf)-off) < size {
			return nil, bitmapDirError("the directory ends inside entry %d", i)
		}
		be := bitmapEntry{
			tableOff:  int64(be64(e[0:]) & math.MaxInt64),
			tableSize: be32(e[8:]),
			flags:     be32(e[12:]),
			granBits:  e[17],
			name:      string(e[bitmapEntryHead : bitmapEntryHead+nameLen]),
		}
		if be64(e[0:]) > math.MaxInt64 {
			return nil, bitmapDirError("bitmap %d: invalid table offset", i)
		}
		if err := be.check(e[16], clusterSize); err != nil {
			return nil, err
		}
		for _, c := range e[bitmapEntryHead+nameLen : size] {
			if c != 0 {
				return nil, bitmapDirError("bitmap '%s': nonzero padding", be.name)
			}
		}
		if seen[be.name] {
			return nil, bitmapDirError("duplicate bitmap name '%s'", be.name)
		}
		seen[be.name] = true
		entries = append(entries, be)
		off += int(size)
	}
	if off != len(buf) {
		return nil, bitmapDirError("the directory is larger than its %d bitmaps", nb)
	}
	return entries, nil
}

// check applies the specification's constraints on one entry.
func (e *bitmapEntry) check(typ byte, clusterSize int64) error {
	switch {
	case typ != bitmapTypeDirty:
		return bitmapDirError("bitmap '%s': unknown type %d", e.name, typ)
	case e.name == "" || len(e.name) > maxBitmapName:
		return bitmapDirError("bitmap %q: invalid name length %d", e.name, len(e.name))
	case e.flags&bmeReserved != 0:
		return bitmapDirError("bitmap '%s': reserved flags %#x set", e.name, e.flags&bmeReserved)
	case e.granBits < minBitmapGranBits || e.granBits > maxBitmapGranBits:
		return bitmapDirError("bitmap '%s': unsupported granularity 2^%d", e.name, e.granBits)
	case e.tableSize > maxBitmapTable || int64(e.tableSize)*clusterSize > maxBitmapData:
		return bitmapDirError("bitmap '%s': the bitmap table is too large", e.name)
	case e.tableOff&(clusterSize-1) != 0 || e.tableOff > math.MaxInt64-int64(e.tableSize)*8:
		return bitmapDirError("bitmap '%s': invalid table offset %#x", e.name, e.tableOff)
	}
	return nil
}

// encodeBitmapDir is parseBitmapDir's inverse.
func encodeBitmapDir(entries []bitmapEntry) []byte {
	var n int64
	for _, e := range entries {
		n += bitmapDirEntryLen(len(e.name))
	}
	buf := make([]byte, n)
	off := 0
	for _, e := range entries {
		b := buf[off:]
		binary.BigEndian.PutUint64(b[0:], uint64(e.tableOff))
		binary.BigEndian.PutUint32(b[8:], e.tableSize)
		binary.BigEndian.PutUint32(b[12:], e.flags)
		b[16] = bitmapTypeDirty
		b[17] = e.granBits
		binary.BigEndian.PutUint16(b[18:], uint16(len(e.name)))
		copy(b[bitmapEntryHead:], e.name)
		off += int(bitmapDirEntryLen(len(e.name)))
	}
	return buf
}

// checkBitmapTableEntry checks one bitmap table entry: reserved bits
// clear, a data offset aligned, and the all-ones bit only without one.
func checkBitmapTableEntry(v uint64, clusterSize int64) bool {
	off := v & bteOffsetMask
	if v&^(bteOffsetMask|bteAllOnes) != 0 {
		return false
	}
	if off == 0 {
		return true
	}
	return v&bteAllOnes == 0 && int64(off)&(clusterSize-1) == 0
}

// setBitsFromData sets in b the granules whose bits are set in data, the
// bitmap data of data cluster k (bit i of the bitmap is bit i%8 of byte
// i/8, least significant first).
func setBitsFromData(b *block.DirtyBitmap, data []byte, firstGranule int64) {
	g := b.Granularity()
	run := int64(-1)
	flush := func(end int64) {
		if run >= 0 {
			b.Set(run*g, (end-run)*g)
			run = -1
		}
	}
	for i, c := range data {
		base := firstGranule + int64(i)*8
		switch c {
		case 0:
			flush(base)
			continue
		case 0xff:
			if run < 0 {
				run = base
			}
			continue
		}
		for j := int64(0); j < 8; j++ {
			if c&(1<<j) != 0 {
				if run < 0 {
					run = base + j
				}
			} else {
				flush(base + j)
			}
		}
	}
	flush(firstGranule + int64(len(data))*8)
}

// dataFromBits fills data with the bits of granules [firstGranule,
// firstGranule+8*len(data)) of b; it reports whether any is set.
func dataFromBits(b *block.DirtyBitmap, data []byte, firstGranule int64) bool {
	clear(data)
	shift := uint(0)
	for g := b.Granularity(); g > 1; g >>= 1 {
		shift++
	}
	lo, hi := firstGranule<<shift, (firstGranule+int64(len(data))*8)<<shift
	any := false
	for from := lo; from < hi; {
		off, n := b.NextDirty(from, hi-from)
		if n == 0 || off >= hi {
			break
		}
		end := min(off+n, hi)
		for gr := off >> shift; gr<<shift < end; gr++ {
			i := gr - firstGranule
			data[i/8] |= 1 << (i % 8)
		}
		any = true
		from = end
	}
	return any
}

func bitmapDirError(format string, a ...any) error {
	return block.Errorf(block.ErrCorrupt, "qcow2: invalid bitmap directory: "+format, a...)
}
