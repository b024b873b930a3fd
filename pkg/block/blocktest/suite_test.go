package blocktest_test

import (
	"testing"

	"github.com/blockd/blockd/pkg/block/blocktest"
)

func TestMemDriver(t *testing.T) {
	blocktest.RunDriverSuite(t, blocktest.DriverCase{
		Open:   blocktest.OpenJSON(`{"driver":"blocktest-mem","node-name":"dut","size":4194304}%.0s`),
		Stores: true, ZeroReads: true, Resizable: true,
	})
}
