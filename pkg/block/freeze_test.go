package block_test

import (
	"testing"

	"github.com/blockd/blockd/pkg/block"
)

// TestUnfreezeNotFrozen: unfreezing a link nobody froze changes nothing,
// so a later Freeze still freezes it.
func TestUnfreezeNotFrozen(t *testing.T) {
	g, top, _, _, _ := buildChain(t)
	link := block.COWChild(top)
	tx := g.Begin()
	tx.Unfreeze(link)
	if err := tx.Freeze(link); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	if !link.Frozen() {
		t.Fatal("a Freeze after a stray Unfreeze left the link unfrozen")
	}
	tx = g.Begin()
	if err := tx.Freeze(link); err == nil {
		t.Error("a frozen link froze twice")
	}
	tx.Abort()
}
