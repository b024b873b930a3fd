package qcow2

import (
	"encoding/binary"
	"fmt"
	"sort"
	"strings"

	"github.com/blockd/blockd/pkg/block"
)

// On-disk constants from the qcow2 specification (docs/interop/qcow2.txt).
const (
	qcowMagic = 0x514649fb // "QFI\xfb"

	v2HeaderLen = 72
	v3HeaderLen = 104

	minClusterBits = 9  // 512 bytes
	maxClusterBits = 21 // 2 MiB: QEMU's implementation limit

	// Implementation limits shared with QEMU, so that an image either
	// implementation accepts is accepted by the other, and so that a
	// hostile header cannot make us allocate without bound.
	maxL1Bytes       = 32 << 20 // active L1 table
	maxRefTableBytes = 8 << 20  // refcount table
	maxSnapshots     = 65536
	maxBackingName   = 1023
	maxFormatName    = 15 // the backing format string (QEMU keeps 16 bytes)

	// Header extension types.
	extEnd           = 0x00000000
	extBackingFormat = 0xe2792aca
	extFeatureTable  = 0x6803f857
	extBitmaps       = 0x23852875
	extCrypto        = 0x0537be77
	extDataFile      = 0x44415441

	// Incompatible feature bits.
	incompatDirty       = 1 << 0
	incompatCorrupt     = 1 << 1
	incompatDataFile    = 1 << 2
	incompatCompression = 1 << 3
	incompatExtL2       = 1 << 4
	// incompatSupported are the bits this driver understands. The external
	// data file is deliberately absent: images using one are refused.
	incompatSupported = incompatDirty | incompatCorrupt | incompatCompression | incompatExtL2

	compatLazyRefcounts = 1 << 0

	autoclearBitmaps = 1 << 0
	autoclearDataRaw = 1 << 1

	// Header field offsets that are rewritten in place.
	offSize          = 24
	offL1            = 36 // l1_size (4) + l1_table_offset (8)
	offRefTable      = 48 // refcount_table_offset (8) + refcount_table_clusters (4)
	offIncompatible  = 72
	offAutoclear     = 88
	offCompression   = 104
	featureEntrySize = 48

	// Table entry masks.
	l1OffsetMask  = 0x00fffffffffffe00
	l2OffsetMask  = 0x00fffffffffffe00
	refOffsetMask = ^uint64(511)

	oflagCopied     = uint64(1) << 63
	oflagCompressed = uint64(1) << 62
	oflagZero       = uint64(1)

	compressionZlib = 0
	compressionZstd = 1
)

// header is the decoded first cluster of an image.
type header struct {
	version         uint32
	backingOffset   uint64
	backingSize     uint32
	clusterBits     uint32
	size            uint64
	cryptMethod     uint32
	l1Size          uint32
	l1Offset        uint64
	rtOffset        uint64
	rtClusters      uint32
	nbSnapshots     uint32
	snapshotsOffset uint64
	incompat        uint64
	compat          uint64
	autoclear       uint64
	refcountOrder   uint32
	headerLength    uint32
	compressionType uint8

	// From the header extensions and the rest of the first cluster.
	backingFile   string
	backingFormat string
	dataFile      string
	hasDataFile   bool
	hasBitmaps    bool
	bitmaps       bitmapsExt
	hasCrypto     bool
	features      map[featureKey]string // the feature name table
}

type featureKey struct {
	kind byte // 0 incompatible, 1 compatible, 2 autoclear
	bit  byte
}

type bitmapsExt struct {
	nb        uint32
	dirSize   uint64
	dirOffset uint64
}

func be32(b []byte) uint32 { return binary.BigEndian.Uint32(b) }
func be64(b []byte) uint64 { return binary.BigEndian.Uint64(b) }

// errHeader is an error found while opening an image. Its text is QEMU's
// wording where QEMU has one for the same problem: clients compare them.
func errHeader(class error, format string, a ...any) error {
	return block.Errorf(class, format, a...)
}

// peekClusterBits returns the cluster size a header claims, for the caller
// to know how much of the file holds the first cluster. It does not
// validate anything but the magic.
func peekClusterBits(b []byte) (uint32, bool) {
	if len(b) < v2HeaderLen || be32(b[0:]) != qcowMagic {
		return 0, false
	}
	return be32(b[20:]), true
}

// parseHeader decodes and checks the first cluster of an image. buf holds
// the first cluster (or the whole file, if it is shorter, padded with
// zeroes up to at least the fixed header). The checks and their order
// follow QEMU's, so that the same image gets the same first complaint.
func parseHeader(buf []byte) (*header, error) {
	if len(buf) < v2HeaderLen || be32(buf[0:]) != qcowMagic {
		return nil, errHeader(block.ErrInvalid, "Image is not in qcow2 format")
	}
	h := &header{
		version:         be32(buf[4:]),
		backingOffset:   be64(buf[8:]),
		backingSize:     be32(buf[16:]),
		clusterBits:     be32(buf[20:]),
		size:            be64(buf[24:]),
		cryptMethod:     be32(buf[32:]),
		l1Size:          be32(buf[36:]),
		l1Offset:        be64(buf[40:]),
		rtOffset:        be64(buf[48:]),
		rtClusters:      be32(buf[56:]),
		nbSnapshots:     be32(buf[60:]),
		snapshotsOffset: be64(buf[64:]),
	}
	if h.version < 2 || h.version > 3 {
		return nil, errHeader(block.ErrNotSupported, "Unsupported qcow2 version %d", h.version)
	}
	if h.clusterBits < minClusterBits || h.clusterBits > maxClusterBits {
		return nil, errHeader(block.ErrNotSupported, "Unsupported cluster size: 2^%d", h.clusterBits)
	}
	clusterSize := uint64(1) << h.clusterBits
	if h.version == 2 {
		h.refcountOrder = 4
		h.headerLength = v2HeaderLen
	} else {
		if len(buf) < v3HeaderLen {
			return nil, errHeader(block.ErrInvalid, "qcow2 header too short")
		}
		h.incompat = be64(buf[72:])
		h.compat = be64(buf[80:])
		h.autoclear = be64(buf[88:])
		h.refcountOrder = be32(buf[96:])
		h.headerLength = be32(buf[100:])
		if h.headerLength < v3HeaderLen {
			return nil, errHeader(block.ErrInvalid, "qcow2 header too short")
		}
	}
	if uint64(h.headerLength) > clusterSize {
		return nil, errHeader(block.ErrInvalid, "qcow2 header exceeds cluster size")
	}
	if h.headerLength > offCompression && int(h.headerLength) <= len(buf) {
		h.compressionType = buf[offCompression]
	}
	if h.backingOffset > clusterSize {
		return nil, errHeader(block.ErrInvalid, "Invalid backing file offset")
	}
	if uint64(len(buf)) < clusterSize {
		// A file shorter than its first cluster: what is missing reads
		// as zeroes, as it would through the file driver.
		nb := make([]byte, clusterSize)
		copy(nb, buf)
		buf = nb
	}
	buf = buf[:clusterSize]

	extEndOff := clusterSize
	if h.backingOffset != 0 {
		extEndOff = h.backingOffset
	}
	if err := h.readExtensions(buf, uint64(h.headerLength), extEndOff); err != nil {
		return nil, err
	}

	if unsupported := h.incompat &^ incompatSupported; unsupported != 0 {
		return nil, errHeader(block.ErrNotSupported, "Unsupported qcow2 feature(s): %s", h.featureList(0, unsupported))
	}
	if h.refcountOrder > 6 {
		return nil, errHeader(block.ErrNotSupported, "Reference count entry width too large; may not exceed 64 bits")
	}
	if h.incompat&incompatCompression != 0 {
		if h.compressionType == compressionZlib {
			return nil, errHeader(block.ErrCorrupt, "qcow2: Compression type incompatible feature bit must not be set")
		}
	} else if h.compressionType != compressionZlib {
		return nil, errHeader(block.ErrCorrupt, "qcow2: Compression type incompatible feature bit must be set")
	}
	if h.compressionType > compressionZstd {
		return nil, errHeader(block.ErrNotSupported, "qcow2: unknown compression type: %d", h.compressionType)
	}
	if h.incompat&incompatExtL2 != 0 && h.clusterBits < 14 {
		return nil, errHeader(block.ErrNotSupported, "Extended L2 entries are only supported with cluster sizes of at least 16384 bytes")
	}
	if h.backingOffset != 0 {
		if h.backingSize > maxBackingName || h.backingSize >= uint32(clusterSize) {
			return nil, errHeader(block.ErrInvalid, "Backing file name too long")
		}
		end := h.backingOffset + uint64(h.backingSize)
		if end > clusterSize {
			return nil, errHeader(block.ErrInvalid, "Invalid backing file offset")
		}
		h.backingFile = string(buf[h.backingOffset:end])
	}
	return h, nil
}

// readExtensions walks the header extensions in buf[start:end).
func (h *header) readExtensions(buf []byte, start, end uint64) error {
	seen := map[uint32]bool{}
	for off := start; off < end; {
		if end-off < 8 {
			return errHeader(block.ErrInvalid, "Header extension too large")
		}
		typ := be32(buf[off:])
		length := uint64(be32(buf[off+4:]))
		off += 8
		if length > end-off {
			return errHeader(block.ErrInvalid, "Header extension too large")
		}
		data := buf[off : off+length]
		// Extensions are padded to a multiple of 8 bytes.
		off += (length + 7) &^ 7
		switch typ {
		case extEnd:
			return nil
		case extBackingFormat:
			if length > maxFormatName {
				return errHeader(block.ErrInvalid, "ERROR: ext_backing_format: len=%d too large (>=%d)", length, maxFormatName+1)
			}
			h.backingFormat = cString(data)
		case extFeatureTable:
			if h.features == nil {
				h.features = map[featureKey]string{}
			}
			for i := 0; i+featureEntrySize <= len(data); i += featureEntrySize {
				e := data[i : i+featureEntrySize]
				k := featureKey{kind: e[0], bit: e[1]}
				if _, dup := h.features[k]; !dup {
					h.features[k] = cString(e[2:])
				}
			}
		case extBitmaps:
			if length < 24 {
				return errHeader(block.ErrInvalid, "bitmaps_ext: Invalid extension length")
			}
			h.hasBitmaps = true
			h.bitmaps = bitmapsExt{nb: be32(data[0:]), dirSize: be64(data[8:]), dirOffset: be64(data[16:])}
		case extCrypto:
			h.hasCrypto = true
		case extDataFile:
			h.hasDataFile = true
			h.dataFile = string(data)
		default:
			// Unknown extensions are kept: the extension area of an
			// existing image is only rewritten by ChangeBackingFile, which
			// copies every extension but the backing format byte for byte.
		}
		if typ == extBackingFormat || typ == extBitmaps || typ == extDataFile {
			if seen[typ] {
				return errHeader(block.ErrInvalid, "Duplicate qcow2 header extension %#x", typ)
			}
			seen[typ] = true
		}
	}
	return nil
}

// featureList names the bits of mask of the given kind the way QEMU's
// "Unsupported qcow2 feature(s)" message does: names from the image's
// feature name table, then the bits it does not name as one hex mask.
func (h *header) featureList(kind byte, mask uint64) string {
	var names []string
	rest := mask
	keys := make([]featureKey, 0, len(h.features))
	for k := range h.features {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return keys[i].bit < keys[j].bit })
	for _, k := range keys {
		if k.kind != kind || k.bit > 63 || rest&(1<<k.bit) == 0 {
			continue
		}
		names = append(names, h.features[k])
		rest &^= 1 << k.bit
	}
	if rest != 0 {
		what := [...]string{"incompatible", "compatible", "autoclear"}[kind]
		names = append(names, fmt.Sprintf("Unknown %s feature: %x", what, rest))
	}
	return strings.Join(names, ", ")
}

// cString returns b up to its first NUL byte.
func cString(b []byte) string {
	for i, c := range b {
		if c == 0 {
			return string(b[:i])
		}
	}
	return string(b)
}

// knownFeatures is the feature name table this driver writes into the
// images it creates, like qemu-img does.
var knownFeatures = []struct {
	kind, bit byte
	name      string
}{
	{0, 0, "dirty bit"},
	{0, 1, "corrupt bit"},
	{0, 2, "external data file"},
	{0, 3, "compression type"},
	{0, 4, "extended L2 entries"},
	{1, 0, "lazy refcounts"},
	{2, 0, "bitmaps"},
	{2, 1, "raw external data"},
}

// encodeHeader builds the first cluster of a new image: the fixed header,
// the backing format and feature name table extensions, and the backing
// file name after the end of the extensions. The feature name table is
// optional and left out when it does not fit beside the backing file name
// (512-byte clusters).
func encodeHeader(h *header, clusterSize int) ([]byte, error) {
	buf, ok := encodeHeaderWith(h, clusterSize, true)
	if !ok {
		buf, ok = encodeHeaderWith(h, clusterSize, false)
	}
	if !ok {
		return nil, fmt.Errorf("Backing file name too long")
	}
	return buf, nil
}

func encodeHeaderWith(h *header, clusterSize int, features bool) ([]byte, bool) {
	buf := make([]byte, clusterSize)
	binary.BigEndian.PutUint32(buf[0:], qcowMagic)
	binary.BigEndian.PutUint32(buf[4:], h.version)
	binary.BigEndian.PutUint32(buf[20:], h.clusterBits)
	binary.BigEndian.PutUint64(buf[24:], h.size)
	binary.BigEndian.PutUint32(buf[32:], h.cryptMethod)
	binary.BigEndian.PutUint32(buf[36:], h.l1Size)
	binary.BigEndian.PutUint64(buf[40:], h.l1Offset)
	binary.BigEndian.PutUint64(buf[48:], h.rtOffset)
	binary.BigEndian.PutUint32(buf[56:], h.rtClusters)
	binary.BigEndian.PutUint32(buf[60:], h.nbSnapshots)
	binary.BigEndian.PutUint64(buf[64:], h.snapshotsOffset)
	off := v2HeaderLen
	if h.version >= 3 {
		h.headerLength = 112 // 104 + compression type, padded to 8
		binary.BigEndian.PutUint64(buf[72:], h.incompat)
		binary.BigEndian.PutUint64(buf[80:], h.compat)
		binary.BigEndian.PutUint64(buf[88:], h.autoclear)
		binary.BigEndian.PutUint32(buf[96:], h.refcountOrder)
		binary.BigEndian.PutUint32(buf[100:], h.headerLength)
		buf[offCompression] = h.compressionType
		off = int(h.headerLength)
	}
	putExt := func(typ uint32, data []byte) bool {
		need := 8 + (len(data)+7)&^7
		if off+need+8 > clusterSize {
			return false
		}
		binary.BigEndian.PutUint32(buf[off:], typ)
		binary.BigEndian.PutUint32(buf[off+4:], uint32(len(data)))
		copy(buf[off+8:], data)
		off += need
		return true
	}
	if h.backingFormat != "" && !putExt(extBackingFormat, []byte(h.backingFormat)) {
		return nil, false
	}
	if h.version >= 3 && features {
		table := make([]byte, len(knownFeatures)*featureEntrySize)
		for i, f := range knownFeatures {
			e := table[i*featureEntrySize:]
			e[0], e[1] = f.kind, f.bit
			copy(e[2:featureEntrySize], f.name)
		}
		if !putExt(extFeatureTable, table) {
			return nil, false
		}
	}
	off += 8 // the end-of-extensions marker (zeroes)
	if h.backingFile != "" {
		if len(h.backingFile) > maxBackingName || off+len(h.backingFile) > clusterSize {
			return nil, false
		}
		copy(buf[off:], h.backingFile)
		binary.BigEndian.PutUint64(buf[8:], uint64(off))
		binary.BigEndian.PutUint32(buf[16:], uint32(len(h.backingFile)))
	}
	return buf, true
}
