//go:build !ceph

package rbd_test

import (
	"strings"
	"testing"

	"github.com/blockd/blockd/pkg/block/blocktest"
	_ "github.com/blockd/blockd/pkg/formats/rbd"
)

// TestStub: without the build tag, rbd options are still checked, and an
// open says how to get the driver.
func TestStub(t *testing.T) {
	g := blocktest.NewGraph()
	_, err := blocktest.TryOpen(g, `{"driver":"rbd","node-name":"x","pool":"rbd","image":"i"}`)
	if err == nil || !strings.Contains(err.Error(), "built without rbd support") || !strings.Contains(err.Error(), "-tags ceph") {
		t.Errorf("open: %v", err)
	}
	_, err = blocktest.TryOpen(g, `{"driver":"rbd","node-name":"x","pool":"rbd","image":"i","snapshot":"s"}`)
	if err == nil || err.Error() != "rbd snapshots are read-only" {
		t.Errorf("writable snapshot: %v", err)
	}
}
