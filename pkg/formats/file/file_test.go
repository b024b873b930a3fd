package file_test

import (
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/blockd/blockd/pkg/block"
	"github.com/blockd/blockd/pkg/block/blocktest"
	_ "github.com/blockd/blockd/pkg/formats/file"
)

// openFile makes a 4 MiB sparse file and opens it with extra options.
func openFile(extra string) func(t *testing.T, g *block.Graph) *block.Node {
	return func(t *testing.T, g *block.Graph) *block.Node {
		path := filepath.Join(t.TempDir(), "f.img")
		if err := os.WriteFile(path, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(path, 4<<20); err != nil {
			t.Fatal(err)
		}
		return blocktest.Open(t, g, fmt.Sprintf(`{"driver":"file","node-name":"dut","filename":%q%s}`, path, extra))
	}
}

func TestFileDriver(t *testing.T) {
	for _, tc := range []struct{ name, extra string }{
		{"buffered", ""},
		{"discard unmap", `,"discard":"unmap"`},
		{"O_DIRECT", `,"cache":{"direct":true}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			blocktest.RunDriverSuite(t, blocktest.DriverCase{Open: openFile(tc.extra), Stores: true, ZeroReads: true, Resizable: true})
		})
	}
}

// TestFileErrors: what a user gets for files that cannot be opened.
func TestFileErrors(t *testing.T) {
	g := blocktest.NewGraph()
	dir := t.TempDir()
	fifo := dir + "/fifo"
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct{ opts, want string }{
		// A FIFO must be refused, not block the open until a writer comes.
		{fmt.Sprintf(`{"driver":"file","node-name":"x","filename":%q}`, fifo), fmt.Sprintf("'file' driver requires '%s' to be either a regular file or a block device", fifo)},
		{fmt.Sprintf(`{"driver":"file","node-name":"x","filename":%q,"read-only":true}`, fifo), fmt.Sprintf("'file' driver requires '%s' to be either a regular file or a block device", fifo)},
		{`{"driver":"file","node-name":"x","filename":"/nonexistent/x"}`, "Could not open '/nonexistent/x': No such file or directory"},
		{fmt.Sprintf(`{"driver":"file","node-name":"x","filename":%q}`, dir), fmt.Sprintf("Could not open '%s': Is a directory", dir)},
		{`{"driver":"file","node-name":"x"}`, "Parameter 'filename' is missing"},
		{`{"driver":"file","node-name":"x","filename":"a","aio":"fast"}`, "Parameter 'aio' does not accept value 'fast'"},
	}
	for _, tt := range tests {
		if _, err := blocktest.TryOpen(g, tt.opts); err == nil || err.Error() != tt.want {
			t.Errorf("%s: %v, want %q", tt.opts, err, tt.want)
		}
	}
}
