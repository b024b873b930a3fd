package qcow2

import (
	"slices"
	"testing"

	"github.com/blockd/blockd/internal/fuzzcheck"
)

// FuzzBitmapDir feeds the bitmap directory parser arbitrary directories:
// it must never panic or allocate more than the input warrants, and what
// it accepts must encode back to the same bytes.
func FuzzBitmapDir(f *testing.F) {
	f.Add(encodeBitmapDir([]bitmapEntry{{tableOff: 0x10000, tableSize: 1, flags: bmeAuto, granBits: 16, name: "b0"}}), uint32(1), uint8(16))
	f.Add(encodeBitmapDir([]bitmapEntry{{granBits: 9, name: "a"}, {tableOff: 0x200, tableSize: 3, flags: bmeInUse, granBits: 31, name: "second"}}), uint32(2), uint8(9))
	f.Add([]byte{}, uint32(0xffffffff), uint8(21))
	f.Fuzz(func(t *testing.T, dir []byte, nb uint32, cb uint8) {
		cs := int64(1) << (minClusterBits + uint(cb)%(maxClusterBits-minClusterBits+1))
		fuzzcheck.Bounded(t, func() {
			entries, err := parseBitmapDir(dir, nb, cs)
			if err != nil {
				return
			}
			if got := encodeBitmapDir(entries); !slices.Equal(got, dir) {
				t.Fatalf("accepted directory encodes differently:\n in %x\nout %x", dir, got)
			}
		})
	})
}
