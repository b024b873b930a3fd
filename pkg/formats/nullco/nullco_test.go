package nullco_test

import (
	"testing"

	"github.com/blockd/blockd/pkg/block/blocktest"
	_ "github.com/blockd/blockd/pkg/formats/nullco"
)

func TestNullDriver(t *testing.T) {
	blocktest.RunDriverSuite(t, blocktest.DriverCase{
		Open:      blocktest.OpenJSON(`{"driver":"null-co","node-name":"dut","size":4194304,"read-zeroes":true}%.0s`),
		ZeroReads: true,
	})
}
