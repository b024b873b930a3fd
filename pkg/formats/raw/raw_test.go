package raw_test

import (
	"testing"

	"github.com/blockd/blockd/pkg/block/blocktest"
	_ "github.com/blockd/blockd/pkg/formats/raw"
)

func TestRawDriver(t *testing.T) {
	t.Run("whole child", func(t *testing.T) {
		blocktest.RunDriverSuite(t, blocktest.DriverCase{
			Open:   blocktest.OpenJSON(`{"driver":"raw","node-name":"dut","file":{"driver":"blocktest-mem","size":4194304}}%.0s`),
			Stores: true, ZeroReads: true, Resizable: true,
		})
	})
	t.Run("window", func(t *testing.T) {
		blocktest.RunDriverSuite(t, blocktest.DriverCase{
			Open:   blocktest.OpenJSON(`{"driver":"raw","node-name":"dut","offset":65536,"size":4194304,"file":{"driver":"blocktest-mem","size":8388608,"pattern":170}}%.0s`),
			Stores: true,
		})
	})
}

func TestRawErrors(t *testing.T) {
	g := blocktest.NewGraph()
	tests := []struct{ opts, want string }{
		{`{"driver":"raw","node-name":"x","size":1000,"file":{"driver":"blocktest-mem","size":4096}}`, "Specified size is not multiple of 512"},
		{`{"driver":"raw","node-name":"x","offset":8192,"file":{"driver":"blocktest-mem","size":4096}}`, "Offset (8192) cannot be greater than size of the containing file (4096)"},
		{`{"driver":"raw","node-name":"x","offset":-1,"file":{"driver":"blocktest-mem","size":4096}}`, "Parameter 'offset' expects a non-negative value"},
	}
	for _, tt := range tests {
		if _, err := blocktest.TryOpen(g, tt.opts); err == nil || err.Error() != tt.want {
			t.Errorf("%s: %v, want %q", tt.opts, err, tt.want)
		}
	}
}
