package block_test

import (
	"testing"

	"github.com/blockd/blockd/pkg/block"
	"github.com/blockd/blockd/pkg/block/blocktest"
)

// TestWriteBehind checks which protocol nodes write-behind reaches: the
// storage below the node and below filters, never a backing image, and
// that nested users each turn it off once.
func TestWriteBehind(t *testing.T) {
	_, top, flt, mid, base := buildChain(t)
	file := func(n *block.Node) *blocktest.Mem { return block.StorageChild(n).Node().Impl().(*blocktest.Mem) }
	tests := []struct {
		name string
		on   []*block.Node // nodes WriteBehind is called on
		want map[*block.Node]int
	}{
		{"format: its file only", []*block.Node{top}, map[*block.Node]int{top: 1, mid: 0, base: 0}},
		{"filter: down to the filtered format's file", []*block.Node{flt}, map[*block.Node]int{top: 0, mid: 1, base: 0}},
		{"nested users count", []*block.Node{mid, flt}, map[*block.Node]int{top: 0, mid: 2, base: 0}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var offs []func()
			for _, n := range tc.on {
				offs = append(offs, block.WriteBehind(n))
			}
			for n, want := range tc.want {
				if got := file(n).WritingBehind; got != want {
					t.Errorf("%s's file: write-behind users %d, want %d", n.Name(), got, want)
				}
			}
			for _, off := range offs {
				off()
			}
			for n := range tc.want {
				if got := file(n).WritingBehind; got != 0 {
					t.Errorf("%s's file after off: write-behind users %d, want 0", n.Name(), got)
				}
			}
		})
	}
}
